"""The compile cache's entries and JIT artifacts: reading, checking, writing and loading compiled
code, without the code generator.

Where: ``$CONVC_CACHE_DIR``, else ``$XDG_CACHE_HOME/convc``, else ``~/.cache/convc``. Off with
``CONVC_NO_CACHE=1`` or ``convc.compile(..., cache=False)``.

What: one file per compiled model, ``v2/<key>.entry``, holding the relocatable object file that LLVM
emitted for the JIT's TargetMachine, the constant table (graph constants and weights the kernels
packed at compile time, each 64-byte aligned; slots the code never reads are left out) and a JSON
header (inputs, outputs, arena size, threads, kernel names, target, the layout of the constants,
and the key and source aliases the entry belongs to). A warm compile reads the file into private
memory, checks it, and loads the object into a fresh MCJIT engine (``ObjectEngine``: a few
milliseconds), so neither code generation nor LLVM runs. The file is read, not mapped: a mapped
entry that something truncates later (another process clearing the cache, a full disk) would kill
every model using it with SIGBUS, and what was checked would not be what runs. Loading a whole
shared library with dlopen would work too, but needs a C linker at JIT time; the object file
needs nothing. A pickled JIT model is the same entry, in memory (``entry_bytes``/``entry_artifact``).

Integrity: the entry ends its 64-byte header with a SHA-256 of everything after it, and its length
must match the header; a truncated or corrupt entry is removed with a ``CacheWarning`` and rebuilt.
Binding: the checksummed JSON names the entry's key and the source aliases that may name it, so an
entry copied over another model's name, or an alias pointing at another model's entry, is a miss
with a ``CacheWarning`` (and a recompile), never another model's code and weights.
Safety: the cache directory must be owned by this user (or root) and writable by nobody else
(``codegen/artifacts.py``: ``check_dir``); ``v2/`` is created with mode 0700. Otherwise the cache is
off, with a ``CacheWarning``.
Concurrency: entries are written to a temporary file in the same directory and renamed over the
final name (``os.replace`` is atomic), so processes compiling the same model at once all succeed
and readers never see half an entry.

Light on purpose: unpickling a JIT model, ``convc.load`` and a warm ``convc.compile`` come through
here, so this module imports numpy, llvmlite.binding and convc's runtime/ABI modules only (no
llvmlite.ir, kernel emitters, passes or networkx: about 0.5 s of CPU in a fresh worker);
tests/test_light_load.py checks it. Compiling through the cache is ``codegen/cache.py``.
"""
from __future__ import annotations

import io
import json
import math
import os
import struct
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from convc.codegen.artifacts import (ALIGN, ArtifactError, CacheWarning, HashingWriter, aligned_empty, atomic_write,
                                     check_dir, digest, private_dir, read_aligned)
from convc.codegen.blob import blob_layout, write_blob
from convc.codegen.jit import ObjectEngine, Target

from convc.abi import ABI_VERSION
from convc.artifact import LoadError, cpu_error

FORMAT = 2  # 2: entries name their key and source aliases; read into memory, not mapped
MAGIC = b"CONVCJC1"
_HEADER = struct.Struct("<8sQQQ32s")  # magic, meta bytes, object bytes, blob bytes, sha256 of the rest
HEADER_BYTES = 64


def cache_dir(cache: bool | None = None) -> Path | None:
    """The cache directory, or None when caching is off (``cache=False`` or ``CONVC_NO_CACHE``), or
    when the directory is not safe to run code from (owned by another user, writable by others):
    then with a CacheWarning."""
    if cache is False or _arena_checked():  # a checked build is for debugging: never cached
        return None
    if os.environ.get("CONVC_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        return None
    if os.environ.get("CONVC_CACHE_DIR"):
        root = Path(os.environ["CONVC_CACHE_DIR"]).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = Path(base) / "convc"
    try:
        if os.path.lexists(root):
            check_dir(root, sticky_ok=True)
            if _folder(root).exists():
                check_dir(_folder(root))
    except (ArtifactError, OSError) as e:
        warnings.warn(f"convc compile cache: not using it: {e}; compiling without a cache", CacheWarning,
                      stacklevel=2)
        return None
    return root


def _entries(root: Path) -> Path:
    """The folder of the entries (of this format); whoever reads it first waits for this process's
    entries still being written in the background (``store_in_background``)."""
    wait_for_stores()
    return _folder(root)


def _folder(root: Path) -> Path:
    """The folder of the entries, for this module's own reads and writes: a look-up waits only for
    the writes of the key or alias it reads."""
    return root / f"v{FORMAT}"


# --- entries written in the background ----------------------------------------------------------
# A cold compile returns its model while its entry (hundreds of MB for a large model: packed weights)
# is hashed and written on a thread of its own. The thread is not a daemon: the interpreter waits
# for it at exit, so the next process finds the entry complete; the rename in ``atomic_write``
# means no reader ever sees part of it. Anything in this process that reads the entries folder
# (listing, pruning, clearing) waits for the pending writes first; a look-up, for those of its key
# or source alias (the next model's compile does not wait for this one's entry).
_writers: dict[threading.Thread, frozenset[str]] = {}  # a writer -> the key and aliases it writes
_writers_lock = threading.Lock()


def _forget_writers() -> None:
    """In a forked child: the parent's writers do not run here, and the lock may have been held."""
    global _writers_lock
    _writers_lock = threading.Lock()
    _writers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writers)


def store_in_background(names: tuple[str, ...], write: Callable[[], None]) -> threading.Thread:
    """Run ``write`` (storing the entry of key ``names[0]`` under the source aliases ``names[1:]``,
    then whatever follows it) on a new non-daemon thread."""
    def run() -> None:
        try:
            write()
        finally:
            with _writers_lock:
                _writers.pop(thread, None)
    thread = threading.Thread(target=run, name=f"convc cache store {names[0][:12]}")
    with _writers_lock:
        _writers[thread] = frozenset(names)
    thread.start()
    return thread


def wait_for_stores(*names: str) -> None:
    """Return once the entries this process is writing in the background (those of the keys or
    aliases ``names``; all without) are on disk. A writer itself never waits: it reads the folder
    while it stores and prunes."""
    me = threading.current_thread()
    with _writers_lock:
        if me in _writers:
            return
        pending = [t for t, of in _writers.items() if not names or of.intersection(names)]
    for t in pending:
        t.join()


def _arena_checked() -> bool:
    """Whether CONVC_CHECK_ARENA asks for checked builds (passes/memory_check.py), without importing
    the checker (llvmlite.ir and the passes) when the variable is not even set."""
    if "CONVC_CHECK_ARENA" not in os.environ:
        return False
    from convc.codegen import arena_check
    return arena_check.enabled()


@dataclass
class JitArtifact:
    """What a JIT compile produces and the cache stores: object code, the constants it reads and
    the metadata (inputs, outputs, arena, threads, target...). A JIT-compiled model pickles as this,
    in the checksummed format of a cache entry (``entry_bytes``)."""
    meta: dict
    obj: bytes
    constants: list  # np.ndarray or None per constant-table slot
    arena_steps: Any = field(default=None, repr=False)  # an arena-checked build's steps (codegen/arena_check.py)

    def state(self) -> dict:
        return {"kind": "jit-entry", "entry": entry_bytes(self.meta, self.obj, self.constants)}



def _pad(n: int) -> int:
    return -n % 64


class CorruptEntry(Exception):
    pass


def write_entry(f, meta: dict, obj: bytes, constants: list, binding: dict | None = None) -> None:
    """Write an entry (header, JSON, object code, weights) to the seekable binary file ``f``.
    ``binding`` ({"key", "sources"}) goes inside the checksummed JSON."""
    offsets, blob_size = blob_layout(constants)
    meta = {k: v for k, v in meta.items() if k != "cache"}
    meta["constant_layout"] = [None if off is None else [off, list(c.shape), c.dtype.str]
                               for c, off in zip(constants, offsets)]
    meta["cache"] = binding
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    f.write(b"\0" * HEADER_BYTES)
    w = HashingWriter(f)
    w.write(meta_bytes + b"\0" * _pad(len(meta_bytes)))
    w.write(obj + b"\0" * _pad(len(obj)))
    write_blob(w, constants, offsets, blob_size)
    f.seek(0)
    f.write(_HEADER.pack(MAGIC, len(meta_bytes), len(obj), blob_size, w.h.digest()).ljust(HEADER_BYTES, b"\0"))


def read_entry(buf: np.ndarray) -> tuple[dict, bytes, list]:
    """(meta, object code, constants) of a whole entry in ``buf`` (uint8, 64-byte aligned; the
    constants are views into it). Raises CorruptEntry naming what is wrong: a short or padded
    entry, a checksum mismatch, a constant whose layout does not fit the weights."""
    size = buf.size
    if size < HEADER_BYTES:
        raise CorruptEntry(f"truncated ({size} bytes)")
    magic, n_meta, n_obj, n_blob, sha = _HEADER.unpack(bytes(buf[:_HEADER.size]))
    if magic != MAGIC:
        raise CorruptEntry("not a convc cache entry (bad magic)")
    body = n_meta + _pad(n_meta) + n_obj + _pad(n_obj) + n_blob
    if size != HEADER_BYTES + body:
        raise CorruptEntry(f"truncated or padded: {size} bytes, the header promises {HEADER_BYTES + body}")
    if buf.ctypes.data % ALIGN:
        raise ValueError("read_entry needs a 64-byte aligned buffer")
    rest = buf[HEADER_BYTES:]
    if digest(rest).digest() != sha:
        raise CorruptEntry("checksum mismatch")
    try:
        meta = json.loads(bytes(rest[:n_meta]))
    except ValueError as e:
        raise CorruptEntry(f"its JSON is corrupt ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("constant_layout"), list):
        raise CorruptEntry("its JSON has no constant layout")
    o = n_meta + _pad(n_meta)
    obj = bytes(rest[o:o + n_obj])
    blob = rest[o + n_obj + _pad(n_obj):]
    layout = meta.pop("constant_layout")
    if meta.get("constants", len(layout)) != len(layout):
        raise CorruptEntry(f"its code reads {meta.get('constants')} constants, the layout has {len(layout)}")
    constants = []
    for i, item in enumerate(layout):
        if item is None:
            constants.append(None)
            continue
        try:
            off, shape, dtype = int(item[0]), tuple(int(d) for d in item[1]), np.dtype(item[2])
        except (TypeError, ValueError, IndexError) as e:
            raise CorruptEntry(f"constant {i} has a malformed layout {item!r} ({e})") from None
        n = math.prod(shape) * dtype.itemsize
        if dtype.kind not in "fiub" or dtype.hasobject or any(d < 0 for d in shape):
            raise CorruptEntry(f"constant {i} has dtype {dtype} and shape {shape}")
        if off < 0 or off % ALIGN or off + n > n_blob:
            raise CorruptEntry(f"constant {i} ({n} bytes at offset {off}) lies outside the {n_blob} bytes of weights")
        constants.append(blob[off:off + n].view(dtype).reshape(shape))
    return meta, obj, constants


def entry_bytes(meta: dict, obj: bytes, constants: list) -> bytes:
    """A JIT model as one checksummed entry, in memory (how it pickles)."""
    f = io.BytesIO()
    write_entry(f, meta, obj, constants)
    return f.getvalue()


def entry_artifact(data: bytes):
    """The JitArtifact of ``entry_bytes``' output; raises CorruptEntry."""
    buf = aligned_empty(len(data))
    buf[:] = np.frombuffer(data, dtype=np.uint8)
    return JitArtifact(*read_entry(buf))


def store(root: Path, key: str, meta: dict, obj: bytes, constants: list, aliases: tuple[str, ...] = (),
          signatures: dict | None = None) -> Path:
    """Write an entry (atomically) bound to ``key`` and to the source ``aliases``, then the aliases'
    files; returns the entry's path."""
    folder = private_dir(_folder(root), root=root)
    path = folder / f"{key}.entry"
    created = (meta.get("cache") or {}).get("created") or time.time()
    # per source alias, the input signature convc.compile read from that ONNX source (declared
    # dimensions): a warm compile takes it from here and never imports the onnx package
    known = {**((meta.get("cache") or {}).get("signatures") or {}), **(signatures or {})}
    binding = {"key": key, "sources": sorted(set(aliases)), "created": created,
               "signatures": {a: known[a] for a in sorted(set(aliases)) if a in known}}
    atomic_write(path, lambda f: write_entry(f, meta, obj, constants, binding))
    for alias in aliases:
        atomic_write(folder / f"src-{alias}", key.encode())
    return path


def add_alias(root: Path, key: str, artifact, alias: str, signature: dict | None = None) -> None:
    """Let ``alias`` name the entry ``key`` (whose contents are ``artifact``): the entry is rewritten
    with the alias (and the input ``signature`` of its source) inside its checksummed JSON, unless
    it is there already."""
    binding = artifact.meta.get("cache") or {}
    sources = binding.get("sources") or []
    if alias in sources and (signature is None or alias in (binding.get("signatures") or {})):
        atomic_write(private_dir(_folder(root), root=root) / f"src-{alias}", key.encode())
    else:
        store(root, key, artifact.meta, artifact.obj, artifact.constants, (*sources, alias),
              {alias: signature} if signature is not None else None)


def source_signature(artifact, alias: str) -> dict | None:
    """The input signature stored for source ``alias`` (input -> dimensions), or None."""
    sig = ((artifact.meta.get("cache") or {}).get("signatures") or {}).get(alias)
    if not isinstance(sig, dict):
        return None
    try:
        return {str(n): tuple(d if d is None or isinstance(d, (int, str)) else int(d) for d in dims)
                for n, dims in sig.items()}
    except (TypeError, ValueError):
        return None


def _discard(path: Path, why: str) -> None:
    warnings.warn(f"convc compile cache: {path} is unusable ({why}); removed it, compiling again",
                  CacheWarning, stacklevel=4)
    try:
        path.unlink()
    except OSError:
        pass


def _unsafe(folder: Path) -> bool:
    """True (with a CacheWarning) when ``folder`` is not safe to run code from."""
    try:
        check_dir(folder)
    except (ArtifactError, OSError) as e:
        warnings.warn(f"convc compile cache: not using it: {e}; compiling without a cache", CacheWarning,
                      stacklevel=4)
        return True
    return False


def lookup(root: Path, key: str):
    """The JitArtifact stored under ``key``, or None (a bad entry, or one holding another key's
    code, is removed with a CacheWarning)."""
    wait_for_stores(key)
    folder = _folder(root)
    path = folder / f"{key}.entry"
    if not path.exists() or _unsafe(folder):
        return None
    try:
        meta, obj, constants = read_entry(read_aligned(path))
    except FileNotFoundError:  # another process removed it meanwhile
        return None
    except (CorruptEntry, ArtifactError, OSError, ValueError, KeyError, TypeError, struct.error) as e:
        _discard(path, str(e) or type(e).__name__)
        return None
    bound = (meta.get("cache") or {}).get("key")
    if bound != key:
        _discard(path, f"it holds the compiled code of another model (key {str(bound)[:16]}), not of {key[:16]}")
        return None
    try:
        os.utime(path)  # its last use: the size limit evicts the least recently used first
    except OSError:
        pass
    return JitArtifact(meta, obj, constants)


def lookup_source(root: Path, alias: str) -> tuple[str, Any] | None:
    """(graph key, artifact) the source alias names, or None."""
    wait_for_stores(alias)
    path = _folder(root) / f"src-{alias}"
    try:
        key = path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        _discard(path, "bad alias")
        return None
    art = lookup(root, key)
    if art is None:
        return None
    if alias not in ((art.meta.get("cache") or {}).get("sources") or []):
        _discard(path, f"it names the entry {key[:16]}, which was not compiled from this source")
        return None
    return key, art



def engine_for(artifact: JitArtifact):
    """An ObjectEngine holding ``artifact``'s object code (no LLVM optimization or codegen), after
    checking that it can run here (ABI version, architecture, CPU features); raises LoadError."""
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
    return ObjectEngine(artifact.obj, host)



def cached_artifact(root: Path | None, alias: str | None, progress=None) -> JitArtifact | None:
    """The artifact a source alias names, without importing or optimizing anything; None on a miss."""
    if root is None or alias is None:
        return None
    t = time.perf_counter()
    found = lookup_source(root, alias)
    if found is None:
        return None
    key, art = found
    if progress:
        progress(f"compile cache hit {key[:12]} ({(time.perf_counter() - t) * 1e3:.0f} ms)")
    return art


def _safe(fn: Callable[[], Any]) -> None:
    """A cache that cannot be written (read-only home, full disk, an unsafe directory) must not fail the compile."""
    try:
        fn()
    except (OSError, ArtifactError) as e:
        warnings.warn(f"convc compile cache: cannot write ({e}); continuing without caching", CacheWarning,
                      stacklevel=3)

