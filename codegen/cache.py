"""The JIT's on-disk compile cache: optimized graph in, machine code and packed weights out.

Where: ``$CONVC_CACHE_DIR``, else ``$XDG_CACHE_HOME/convc``, else ``~/.cache/convc``. Off with
``CONVC_NO_CACHE=1`` or ``convc.compile(..., cache=False)``.

What: one file per compiled model, ``v1/<key>.entry``, holding the relocatable object file that LLVM
emitted for the JIT's TargetMachine, the constant table (graph constants and weights the kernels
packed at compile time, each 64-byte aligned; slots the code never reads are left out) and a JSON
header (inputs, outputs, arena size, threads, kernel names, target). A warm compile maps the
file (the weights are used in place, from the page cache, no copy), checks it, and loads the
object into a fresh MCJIT engine (``ObjectEngine``: a few milliseconds), so neither code generation
nor LLVM runs. Loading a whole shared library with dlopen would work too, but needs a C linker at
JIT time; the object file needs nothing.

The key is a SHA-256 over the optimized graph (op kinds, attributes, shapes, layouts, every
constant's bytes, the schedule and memory plan), the options (threads, instrumentation), the CPU
name and feature string, the llvmlite, LLVM, numpy and convc versions, and a fingerprint of the
compiler's own source files (an edited kernel emitter must not be served stale code). Hashing the
optimized graph needs the import and the passes (about 2 s for ResNet-50), so ``convc.compile`` of
a file, bytes or ModelProto also records a *source alias* ``v1/src-<hash>``: a hash of the model's
bytes plus the same options, naming the entry; a warm compile then skips the import and passes
too, and ``CompiledModel.graph`` is rebuilt only if someone reads it.

Integrity: the entry ends its 64-byte header with a SHA-256 of everything after it, and its length
must match the header; a truncated or corrupt entry is removed with a ``CacheWarning`` and rebuilt.
Concurrency: entries are written to a temporary file in the same directory and renamed over the
final name (``os.replace`` is atomic), so processes compiling the same model at once all succeed
and readers never see half an entry.
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.util
import json
import mmap
import os
import struct
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from convc.codegen.aot import ABI_VERSION, blob_layout, metadata, resolve_target, used_constants, write_blob

FORMAT = 1
MAGIC = b"CONVCJC1"
_HEADER = struct.Struct("<8sQQQ32s")  # magic, meta bytes, object bytes, blob bytes, sha256 of the rest
HEADER_BYTES = 64


class CacheWarning(UserWarning):
    """A compile cache entry was unusable (corrupt, truncated, unreadable) and was rebuilt."""


def cache_dir(cache: bool | None = None) -> Path | None:
    """The cache directory, or None when caching is off (``cache=False`` or ``CONVC_NO_CACHE``)."""
    if cache is False:
        return None
    if os.environ.get("CONVC_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return None
    if os.environ.get("CONVC_CACHE_DIR"):
        return Path(os.environ["CONVC_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "convc"


def _entries(root: Path) -> Path:
    return root / f"v{FORMAT}"


# --- keys --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of the compiler's Python sources (the packages convc, codegen, passes, frontend)."""
    h = hashlib.sha256()
    for pkg in ("convc", "convc.codegen", "convc.passes", "convc.frontend"):
        spec = importlib.util.find_spec(pkg)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(root).rglob("*.py")):
                h.update(str(path.relative_to(root)).encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def environment(threads: int, instrument: bool = False) -> dict:
    """Everything besides the model that changes the machine code."""
    import llvmlite
    import llvmlite.binding as llvm

    from convc import __version__
    from convc.codegen.jit import Target
    host = Target.host()
    return {"format": FORMAT, "abi": ABI_VERSION, "triple": host.triple, "cpu": host.cpu, "features": host.features,
            "llvmlite": llvmlite.__version__, "llvm": list(llvm.llvm_version_info), "numpy": np.__version__,
            "convc": __version__, "code": code_fingerprint(), "threads": int(threads), "instrument": bool(instrument)}


def _feed(h, obj: Any) -> None:
    """Hash a value canonically (dataclasses, enums, arrays, containers, scalars)."""
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"nd{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.size else b"")
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(f"dc{type(obj).__qualname__}(".encode())
        for f in dataclasses.fields(obj):
            h.update(f.name.encode() + b"=")
            _feed(h, getattr(obj, f.name))
        h.update(b")")
    elif isinstance(obj, enum.Enum):
        h.update(f"en{type(obj).__qualname__}.{obj.name}".encode())
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__}{len(obj)}[".encode())
        for x in obj:
            _feed(h, x)
        h.update(b"]")
    elif isinstance(obj, dict):
        h.update(f"dict{len(obj)}{{".encode())
        for k in sorted(obj, key=repr):
            _feed(h, k)
            _feed(h, obj[k])
        h.update(b"}")
    else:  # str, int, float (repr is exact), bool, None, np scalars, dtypes
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def graph_key(plan, env: dict) -> str:
    """SHA-256 of the optimized graph, its schedule and memory plan, and ``env``."""
    h = hashlib.sha256(json.dumps(env, sort_keys=True).encode())
    g = plan.graph
    _feed(h, (g.name, list(g.inputs), list(g.outputs)))
    _feed(h, {k: v for k, v in g.metadata.items() if isinstance(v, (str, int, float, bool, list, tuple, dict))})
    for op in plan.order:
        _feed(h, (op.name, op.kind, op.attrs, tuple(op.inputs), tuple(op.outputs)))
    for t in sorted(g.tensors(), key=lambda t: t.name):
        _feed(h, (t.name, t.shape, t.dtype.str, t.kind, t.layout))
        if t.data is not None:
            _feed(h, np.asarray(t.data))
    m = plan.memory
    _feed(h, (m.arena_bytes, list(m.constants), sorted((k, v.kind, v.index) for k, v in m.buffers.items())))
    return h.hexdigest()


def source_key(model: Any, batch: int | None, input_shape: Any, env: dict) -> str | None:
    """A hash of the model as given (an ONNX file, bytes or ModelProto) and the options, or None
    when the source cannot be hashed cheaply and reliably (a Graph, a Module, external tensor data)."""
    if isinstance(model, (str, os.PathLike)):
        try:
            data = Path(model).read_bytes()
        except OSError:
            return None
    elif isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
    elif type(model).__name__ == "ModelProto":
        data = model.SerializeToString()
    else:
        return None
    if b"location" in data:  # may use external tensor data, which the bytes do not cover
        return None
    h = hashlib.sha256(json.dumps(env, sort_keys=True).encode())
    _feed(h, ("source", batch, repr(input_shape)))
    h.update(data)
    return h.hexdigest()


# --- entries -----------------------------------------------------------------------------------

def _pad(n: int) -> int:
    return -n % 64


def _atomic(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _HashingWriter:
    def __init__(self, f) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def write(self, data) -> None:
        self.h.update(data)
        self.f.write(data)


def store(root: Path, key: str, meta: dict, obj: bytes, constants: list, aliases: tuple[str, ...] = ()) -> Path:
    """Write an entry (atomically) and its source aliases; returns the entry's path."""
    folder = _entries(root)
    folder.mkdir(parents=True, exist_ok=True)
    offsets, blob_size = blob_layout(constants)
    meta = dict(meta, constant_layout=[None if off is None else [off, list(c.shape), c.dtype.str]
                                       for c, off in zip(constants, offsets)])
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    path = folder / f"{key}.entry"

    def write(f) -> None:
        f.write(b"\0" * HEADER_BYTES)
        w = _HashingWriter(f)
        w.write(meta_bytes + b"\0" * _pad(len(meta_bytes)))
        w.write(obj + b"\0" * _pad(len(obj)))
        write_blob(w, constants, offsets, blob_size)
        f.seek(0)
        f.write(_HEADER.pack(MAGIC, len(meta_bytes), len(obj), blob_size, w.h.digest()).ljust(HEADER_BYTES, b"\0"))
    _atomic(path, write)
    for alias in aliases:
        _atomic(folder / f"src-{alias}", lambda f: f.write(key.encode()))
    return path


class CorruptEntry(Exception):
    pass


def _read(path: Path) -> tuple[dict, bytes, list]:
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise CorruptEntry(f"truncated ({size} bytes)")
    with open(path, "rb") as f:
        magic, n_meta, n_obj, n_blob, digest = _HEADER.unpack(f.read(HEADER_BYTES)[:_HEADER.size])
        if magic != MAGIC:
            raise CorruptEntry("not a convc cache entry (bad magic)")
        body = n_meta + _pad(n_meta) + n_obj + _pad(n_obj) + n_blob
        if size != HEADER_BYTES + body:
            raise CorruptEntry(f"truncated or padded: {size} bytes, the header promises {HEADER_BYTES + body}")
        # mapped, not read: the weights stay in the page cache, shared by every process using them
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = np.frombuffer(mapped, dtype=np.uint8, offset=HEADER_BYTES, count=body)  # read-only, 64-byte aligned
    if hashlib.sha256(buf).digest() != digest:
        raise CorruptEntry("checksum mismatch")
    meta = json.loads(bytes(buf[:n_meta]))
    o = n_meta + _pad(n_meta)
    obj = bytes(buf[o:o + n_obj])
    blob = buf[o + n_obj + _pad(n_obj):]
    constants = []
    for item in meta.pop("constant_layout"):
        if item is None:
            constants.append(None)
            continue
        off, shape, dtype = item
        dt = np.dtype(dtype)
        n = int(np.prod(shape, dtype=np.int64))
        constants.append(blob[off:off + n * dt.itemsize].view(dt).reshape(shape))
    return meta, obj, constants


def _discard(path: Path, why: str) -> None:
    warnings.warn(f"convc compile cache: {path} is unusable ({why}); removed it, compiling again",
                  CacheWarning, stacklevel=4)
    try:
        path.unlink()
    except OSError:
        pass


def lookup(root: Path, key: str):
    """The JitArtifact stored under ``key``, or None (a bad entry is removed with a CacheWarning)."""
    from convc.load import JitArtifact
    path = _entries(root) / f"{key}.entry"
    if not path.exists():
        return None
    try:
        meta, obj, constants = _read(path)
    except FileNotFoundError:  # another process removed it meanwhile
        return None
    except (CorruptEntry, OSError, ValueError, KeyError, TypeError, struct.error) as e:
        _discard(path, str(e) or type(e).__name__)
        return None
    return JitArtifact(meta, obj, constants)


def lookup_source(root: Path, alias: str) -> tuple[str, Any] | None:
    """(graph key, artifact) the source alias names, or None."""
    path = _entries(root) / f"src-{alias}"
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        _discard(path, "bad alias")
        return None
    art = lookup(root, key)
    return (key, art) if art is not None else None


def clear(root: Path) -> int:
    """Remove every entry; returns the bytes freed."""
    freed = 0
    folder = _entries(root)
    if folder.exists():
        for p in folder.iterdir():
            try:
                freed += p.stat().st_size
                p.unlink()
            except OSError:
                pass
    return freed


def usage(root: Path) -> tuple[int, int]:
    """(number of entries, total bytes)."""
    folder = _entries(root)
    if not folder.exists():
        return 0, 0
    files = [p for p in folder.iterdir() if p.suffix == ".entry"]
    return len(files), sum(p.stat().st_size for p in folder.iterdir())


# --- compiling through the cache ---------------------------------------------------------------

def model_from_artifact(artifact, *, threads: int | None = None, graph: Any = None,
                        respecialize=None, override=None):
    """A CompiledModel running ``artifact``'s object code (no LLVM optimization or codegen)."""
    import llvmlite.binding as llvm  # noqa: F401  (a JIT artifact needs llvmlite; libraries do not)

    from convc.codegen.jit import ObjectEngine, Target
    from convc.codegen.module import ENTRY
    from convc.load import LazyGraph, LoadError, _specs, cpu_error
    from convc.runtime import NativeRunner, PoolApi
    from convc.session import CompiledModel
    meta = artifact.meta
    if meta.get("abi") != ABI_VERSION:
        raise LoadError(f"compiled code of model {meta.get('name')!r} uses runtime ABI {meta.get('abi')}; "
                        f"this convc uses {ABI_VERSION}")
    host = Target.host()
    have = {f[1:] for f in host.features.split(",") if f.startswith("+")}
    missing = [f for f in meta["features"] if f not in have]
    if meta["triple"].split("-")[0] != host.triple.split("-")[0]:
        raise LoadError(f"compiled code of model {meta.get('name')!r} is for {meta['triple']}, this is {host.triple}")
    if missing:
        raise cpu_error(f"the compiled code of model {meta.get('name')!r}", meta, missing)
    engine = ObjectEngine(artifact.obj, host)
    compiled = max(1, int(meta["threads"]))
    threads = compiled if threads is None else max(1, min(int(threads), compiled))
    runner = NativeRunner(engine.address(ENTRY), int(meta["arena_bytes"]), artifact.constants,
                          _specs(meta["inputs"]), _specs(meta["outputs"]), keepalive=engine,
                          kernel_names=meta.get("kernel_names", ()), instrumented=bool(meta.get("instrumented")),
                          threads=threads, pool_api=PoolApi.from_addresses(engine.address("convc_pool_create"),
                                                                           engine.address("convc_pool_destroy")))
    if graph is None:
        graph = LazyGraph(meta.get("name", "model"), meta.get("graph_metadata"), artifact.graph_factory,
                          why_not="it was restored from compiled code (a pickle)")
    model = CompiledModel(runner, graph, threads=threads, respecialize=respecialize, override=override)
    model._artifact = artifact
    return model


def compile_plan(plan, *, threads: int, instrument: bool = False, progress: Callable[[str], None] | None = None,
                 cache: bool | None = None, alias: str | None = None, respecialize=None, override=None):
    """JIT-compile a planned graph through the cache: a hit loads machine code, a miss generates it
    (and stores it when caching is on). Returns a CompiledModel."""
    from convc.codegen.jit import machine_code
    from convc.codegen.module import emit_module
    from convc.load import JitArtifact
    from convc.runtime import IOSpec
    root = cache_dir(cache)
    key = None
    if root is not None:
        t = time.perf_counter()
        env = environment(threads, instrument)
        key = graph_key(plan, env)
        art = lookup(root, key)
        if art is not None:
            if progress:
                progress(f"compile cache hit {key[:12]} ({(time.perf_counter() - t) * 1e3:.0f} ms)")
            if alias:
                _safe(lambda: _atomic(_entries(root) / f"src-{alias}", lambda f: f.write(key.encode())))
            return model_from_artifact(art, threads=threads, graph=plan.graph, respecialize=respecialize,
                                       override=override)
        if progress:
            progress("compile cache miss: generating code")
    if progress:
        progress("code generation")
    native = emit_module(plan, name=plan.graph.name, instrument=instrument, threads=threads, progress=progress)
    g = plan.graph
    specs = [[IOSpec(n, g.tensor(n).shape, g.tensor(n).dtype) for n in names]
             for names in (native.input_names, native.output_names)]
    obj = machine_code(str(native.ir_module), progress=progress)
    meta = metadata(native, resolve_target("native"), *specs, g.metadata, {"instrumented": bool(instrument)})
    art = JitArtifact(meta, obj, used_constants(native))
    if root is not None:
        _safe(lambda: store(root, key, meta, obj, art.constants, (alias,) if alias else ()))
        if progress:
            progress(f"compile cache: stored {key[:12]}")
    return model_from_artifact(art, threads=threads, graph=g, respecialize=respecialize, override=override)


def cached_model(root: Path | None, alias: str | None, *, threads: int, progress=None,
                 graph_factory: Callable[[], Any] | None = None, respecialize=None, override=None):
    """The model a source alias names, without importing or optimizing anything; None on a miss."""
    if root is None or alias is None:
        return None
    t = time.perf_counter()
    found = lookup_source(root, alias)
    if found is None:
        return None
    key, art = found
    art.graph_factory = graph_factory
    model = model_from_artifact(art, threads=threads, respecialize=respecialize, override=override)
    if progress:
        progress(f"compile cache hit {key[:12]} ({(time.perf_counter() - t) * 1e3:.0f} ms)")
    return model


def _safe(fn: Callable[[], Any]) -> None:
    """A cache that cannot be written (read-only home, full disk) must not fail the compile."""
    try:
        fn()
    except OSError as e:
        warnings.warn(f"convc compile cache: cannot write ({e}); continuing without caching", CacheWarning,
                      stacklevel=3)


def warm_model(model: Any, batch: int | None, input_shape: Any, threads: int | None, cache: bool | None,
               progress=None, respecialize=None, override=None):
    """``convc.compile``'s fast path: (the cached model named by the source's hash or None, that hash).

    The hash covers the ONNX bytes and every option; the returned model's ``graph`` is rebuilt
    (import and passes, no codegen) only when something reads it."""
    from convc.compiler import default_threads, load_graph
    root = cache_dir(cache)
    if root is None or type(model).__name__ == "Graph":
        return None, None
    threads = default_threads() if threads is None else max(1, int(threads))
    alias = source_key(model, batch, input_shape, environment(threads))
    if alias is None:
        return None, None

    def graph_factory():
        from convc.passes.pipeline import pipeline
        return pipeline(load_graph(model, batch, input_shape)).graph
    try:
        hit = cached_model(root, alias, threads=threads, progress=progress, graph_factory=graph_factory,
                           respecialize=respecialize, override=override)
    except Exception as e:  # noqa: BLE001  an unusable entry must never fail a compile that can run cold
        warnings.warn(f"convc compile cache: cannot use the cached code ({type(e).__name__}: {e}); compiling again",
                      CacheWarning, stacklevel=3)
        hit = None
    return hit, alias
