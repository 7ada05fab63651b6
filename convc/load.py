"""``convc.load("model.so")``: run an ahead-of-time compiled library from Python with ctypes and numpy.

Nothing here imports llvmlite or the compiler: an application that ships a library built by
``convc compile`` needs only numpy at run time. The loader reads the library's metadata functions
(compiled for the architecture's baseline ISA, so safe on any CPU) before anything else:

1. ``convc_abi_version`` must equal this convc's ``ABI_VERSION``;
2. every CPU feature the code was compiled for must be present (``convc_cpu_feature_ok``, which
   reads CPUID and XCR0); otherwise a ``LoadError`` names the missing features — no kernel ever
   runs on a CPU that would fault on it.

The model returned is the ``CompiledModel`` ``convc.compile`` returns, running on the same
``NativeRunner`` (per-caller contexts from a free list, GIL released during the call).

A model loaded from a library pickles as the library's bytes (``LibraryArtifact``) and unpickles
through ``_restore``; a JIT model pickles as its object code and weights (convc/driver.py).
"""
from __future__ import annotations

import atexit
import ctypes
import json
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convc import abi
from convc.abi import ABI_VERSION
from convc.artifact import LazyGraph, LoadError, cpu_error
from convc.codegen.artifacts import (TRAILER_BYTES, ArtifactError, CacheWarning, atomic_write, digest, file_digest,
                                     file_name, private_dir, verify_library)
from convc.options import run_threads


# --- loading a library -------------------------------------------------------------------------

def _bind(lib: ctypes.CDLL, name: str, restype, argtypes=()):
    try:
        fn = getattr(lib, name)
    except AttributeError:
        return None
    fn.restype = restype
    fn.argtypes = list(argtypes)
    return fn


@dataclass
class LibraryInfo:
    """What ``inspect_library`` reads from a library without running any of its kernels."""
    path: str
    abi: int
    meta: dict
    missing_features: list[str]
    digest: bytes = b""
    arena_bytes: int = 0
    threads: int = 1
    inputs: list = field(default_factory=list)   # IOSpecs, from the compiled metadata functions
    outputs: list = field(default_factory=list)


_LOADED: dict[str, bytes] = {}  # path -> digest of the library dlopen'ed from it in this process
_DTYPES = ("float32", "float64", "int64", "int32", "uint8", "int8", "bool")


def _need(lib: ctypes.CDLL, path: str, name: str, restype, argtypes=()):
    fn = _bind(lib, name, restype, argtypes)
    if fn is None:
        raise LoadError(f"{path}: {name} is missing from the library; rebuild it with `convc compile`")
    return fn


def _c_text(value: bytes | None, what: str, path: str) -> str:
    if value is None:
        raise LoadError(f"{path}: {what} is missing from the library")
    return value.decode("utf-8", "replace")


def _compiled_specs(lib: ctypes.CDLL, path: str, table: abi.SpecTable, what: str,
                    names_from: list | None = None) -> list:
    """Inputs, outputs or training state as the compiled metadata functions describe them: count,
    rank, shape, size and dtype from compiled constants; names from ``names_from`` (the JSON) when
    given, since a name may hold characters (NUL) a C string cannot."""
    from convc.runtime import IOSpec
    count = _need(lib, path, table.count, ctypes.c_int)
    rank = _need(lib, path, table.function("rank"), ctypes.c_int, [ctypes.c_int])
    shape = _need(lib, path, table.function("shape"), ctypes.POINTER(ctypes.c_int64), [ctypes.c_int])
    size = _need(lib, path, table.function("size"), ctypes.c_int64, [ctypes.c_int])
    dtype = _need(lib, path, table.function("dtype"), ctypes.c_char_p, [ctypes.c_int])
    name = _need(lib, path, table.function("name"), ctypes.c_char_p, [ctypes.c_int])
    specs = []
    for i in range(count()):
        r, dims_ptr, n = rank(i), shape(i), size(i)
        dims = tuple(int(dims_ptr[k]) for k in range(r)) if 0 <= r <= 32 and (r == 0 or dims_ptr) else None
        dt = _c_text(dtype(i), f"the dtype of {what} {i}", path)
        if dims is None or any(d < 0 for d in dims) or math.prod(dims) != n or dt not in _DTYPES:
            raise LoadError(f"{path}: {what} {i} is described inconsistently by its compiled metadata "
                            f"(rank {r}, size {n}, dtype {dt!r})")
        label = names_from[i] if names_from is not None and i < len(names_from) else \
            _c_text(name(i), f"the name of {what} {i}", path)
        specs.append(IOSpec(str(label), dims, np.dtype(dt)))
    return specs


def _agrees(path: str, what: str, in_json: Any, compiled: Any) -> None:
    if in_json != compiled:
        raise LoadError(f"{path}: its metadata JSON says {what} is {in_json!r} but its compiled code says "
                        f"{compiled!r}; the library was modified after `convc compile`: rebuild it")


def _json_names(meta: dict, key: str, path: str) -> list:
    items = meta.get(key)
    if not isinstance(items, list) or not all(isinstance(s, dict) and isinstance(s.get("name"), str) for s in items):
        raise LoadError(f"{path}: its metadata JSON has no valid {key!r} list")
    return [s["name"] for s in items]


def _check_specs(path: str, kind: str, meta_items: list, specs: list) -> None:
    _agrees(path, f"the number of {kind}s", len(meta_items), len(specs))
    for item, spec in zip(meta_items, specs):
        _agrees(path, f"the shape of {kind} {spec.name!r}", list(item.get("shape", [])), list(spec.shape))
        _agrees(path, f"the dtype of {kind} {spec.name!r}", item.get("dtype"), spec.dtype.name)


def inspect_library(path: str | os.PathLike) -> tuple[ctypes.CDLL, LibraryInfo]:
    """Verify a convc library, open it and read its metadata; raises LoadError when it is damaged or
    cannot run here."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such file")
    try:
        sha, _ = verify_library(path)  # before dlopen: a damaged file must never be mapped and run
    except ArtifactError as e:
        raise LoadError(f"{path} {e}") from None
    except OSError as e:
        raise LoadError(f"{path}: cannot read it ({e})") from None
    if _LOADED.get(path, sha) != sha:
        # dlopen of a path this process loaded before returns the library loaded then, even when
        # the file was rebuilt since: open the new contents under a name of their own
        return inspect_library(_library_copy({"data": Path(path).read_bytes(), "name": Path(path).name}))
    try:
        lib = ctypes.CDLL(path)  # runs no convc code: the library has no constructors
    except OSError as e:
        raise LoadError(f"{path}: cannot load it as a shared library ({e}); was it built for another "
                        f"architecture or operating system?") from None
    _LOADED[path] = sha
    abi_fn = _bind(lib, abi.ABI_VERSION_FN, ctypes.c_int)
    if abi_fn is None:
        raise LoadError(f"{path}: not a library built by `convc compile` (no {abi.ABI_VERSION_FN})")
    lib_abi = abi_fn()
    if lib_abi != ABI_VERSION:
        version = _bind(lib, abi.VERSION, ctypes.c_char_p)
        built_by = version().decode() if version is not None else "an unknown convc"
        from convc.version import __version__
        raise LoadError(f"{path}: built by convc {built_by} with C ABI version {lib_abi}; this convc ({__version__}) "
                        f"loads ABI version {ABI_VERSION}. Rebuild it with `convc compile`.")
    text = _need(lib, path, abi.METADATA_JSON, ctypes.c_char_p)
    try:
        meta = json.loads(_c_text(text(), abi.METADATA_JSON, path))
    except ValueError as e:
        raise LoadError(f"{path}: its metadata JSON is corrupt ({e}); rebuild it with `convc compile`") from None
    if not isinstance(meta, dict):
        raise LoadError(f"{path}: its metadata JSON is not an object; rebuild it with `convc compile`")
    arena = _need(lib, path, abi.ARENA_BYTES, ctypes.c_int64)()
    threads = _need(lib, path, abi.MAX_THREADS, ctypes.c_int)()
    inputs = _compiled_specs(lib, path, abi.INPUTS, "input", _json_names(meta, "inputs", path))
    outputs = _compiled_specs(lib, path, abi.OUTPUTS, "output",
                              _json_names(meta, "outputs", path))
    if arena < 0 or threads < 1:
        raise LoadError(f"{path}: its compiled metadata is inconsistent (arena {arena} bytes, {threads} threads)")
    _agrees(path, "abi", meta.get("abi"), lib_abi)
    _agrees(path, "arena_bytes", meta.get("arena_bytes"), arena)
    _agrees(path, "threads", meta.get("threads"), threads)
    _check_specs(path, "input", meta["inputs"], inputs)
    _check_specs(path, "output", meta["outputs"], outputs)
    # the features: from the compiled table (convc_cpu_feature(i) is NULL past its end)
    ok = _need(lib, path, abi.CPU_FEATURE_OK, ctypes.c_int, [ctypes.c_int])
    name = _need(lib, path, abi.CPU_FEATURE, ctypes.c_char_p, [ctypes.c_int])
    features = []
    while len(features) < 4096 and name(len(features)) is not None:
        features.append(name(len(features)).decode("utf-8", "replace"))
    _agrees(path, "features", meta.get("features"), features)
    missing = [f for i, f in enumerate(features) if not ok(i)]
    return lib, LibraryInfo(path, lib_abi, meta, missing, sha, arena, threads, inputs, outputs)


def load(path: str | os.PathLike, *, threads: int | None = None):
    """Load a library written by ``convc compile MODEL -o model.so`` and return a ``CompiledModel``
    (the object ``convc.compile`` returns). ``threads`` caps the worker threads per call (at most
    the count the library was compiled for, the default)."""
    from convc.model import CompiledModel
    from convc.runtime import NativeRunner, PoolApi
    lib, info = inspect_library(path)
    meta = info.meta
    if info.missing_features:
        raise cpu_error(info.path, meta, info.missing_features)
    if "training" in meta:
        from convc.library import LoadedTrainer
        return LoadedTrainer(lib, info)
    threads = run_threads(threads, info.threads)
    address = lambda name: ctypes.cast(_need(lib, info.path, name, None), ctypes.c_void_p).value  # noqa: E731
    table_fn = _need(lib, info.path, abi.CONSTANT_TABLE, ctypes.c_void_p)
    n_const = _need(lib, info.path, abi.NUM_CONSTANTS, ctypes.c_int)()
    table = (ctypes.c_void_p * max(1, n_const)).from_address(table_fn())
    kernel_names = meta.get("kernel_names", ())
    runner = NativeRunner(address(abi.ENTRY), info.arena_bytes, [], info.inputs, info.outputs, keepalive=lib,
                          kernel_names=kernel_names if isinstance(kernel_names, list) else (),
                          threads=threads, const_table=table,
                          pool_api=PoolApi.from_symbols(address))
    graph_meta = meta.get("graph_metadata")
    graph = LazyGraph(str(meta.get("name", "model")), graph_meta if isinstance(graph_meta, dict) else None,
                      why_not=f"it was loaded from the compiled library {info.path}")
    # a library of a source with a free batch runs any batch in chunks of its compiled batch
    free = isinstance(graph_meta, dict) and graph_meta.get("free_batch") is True and info.inputs
    # every input whose batch is free splits into the chunks (a library built before the list: the first)
    names = graph_meta.get("free_batch_inputs") if free else None
    names = names if isinstance(names, list) else [info.inputs[0].name]
    signature = {s.name: (None, *s.shape[1:]) for s in info.inputs if s.name in names} if free else None
    model = CompiledModel(runner, graph, threads=threads, artifact=LibraryArtifact(info.path, info.digest),
                          restore=_restore, signature=signature)
    model.library = info.path
    model.metadata = meta
    return model


# --- pickling ----------------------------------------------------------------------------------

@dataclass
class LibraryArtifact:
    """A model loaded from a library pickles as the library's bytes (those it was loaded from:
    a library rebuilt in place since is refused, not sent in its stead)."""
    path: str
    digest: bytes = b""

    def state(self) -> dict:
        data = Path(self.path).read_bytes()
        if digest(memoryview(data)[:-TRAILER_BYTES]).digest() != self.digest:
            raise LoadError(f"cannot pickle the model loaded from {self.path}: the file changed since it was "
                            "loaded (rebuilt or damaged); load it again")
        return {"kind": "library", "name": Path(self.path).name, "data": data}


_fallback_dir: list[Path] = []


def _private_fallback(why: str) -> Path:
    """A fresh private directory of this process (removed at exit), when the usual one is unsafe."""
    if not _fallback_dir or not _fallback_dir[0].is_dir():
        folder = Path(tempfile.mkdtemp(prefix="convc-libraries-"))  # mode 0700, a new random name
        atexit.register(shutil.rmtree, folder, True)
        _fallback_dir[:] = [folder]
    warnings.warn(f"convc: not using {why}; unpickled libraries go to the private directory {_fallback_dir[0]}",
                  CacheWarning, stacklevel=4)
    return _fallback_dir[0]


def _library_copy(state: dict) -> str:
    """Write pickled library bytes to a file named by their hash, in a private directory
    (``$CONVC_CACHE_DIR/libraries`` or ``$TMPDIR/convc-<uid>/libraries``, mode 0700, owned by this
    user and writable by nobody else; otherwise a fresh private directory, with a warning). A file
    already there is reused only when its whole contents hash to the pickled bytes' digest."""
    data = state.get("data")
    if not isinstance(data, (bytes, bytearray)):
        raise LoadError("cannot unpickle the model: its library bytes are missing")
    sha = digest(data).digest()
    base = Path(os.environ.get("CONVC_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"convc-{os.getuid()}"))
    try:
        folder = private_dir(base / "libraries", root=base)
    except (ArtifactError, OSError) as e:
        folder = _private_fallback(str(e))
    path = folder / f"{sha.hex()[:24]}-{file_name(state.get('name', ''), 'model.so')}"
    try:
        reuse = path.is_file() and file_digest(path) == sha
    except OSError:
        reuse = False
    if not reuse:
        try:
            atomic_write(path, bytes(data))
        except OSError as e:
            raise LoadError(f"cannot unpickle the model: cannot write its library to {path} ({e})") from None
    return str(path)


def _restore(state: dict, threads: int | None):
    """Unpickle a CompiledModel loaded from a library: load it again; no compilation happens."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind == "library":
        from convc.model import adopt_pickled
        return adopt_pickled(load(_library_copy(state), threads=threads), state)
    if kind in ("jit-entry", "jit"):  # JIT models pickled before they named the driver's restore_model
        from convc.driver import restore_model
        return restore_model(state, threads)
    raise LoadError(f"cannot unpickle a compiled model of kind {kind!r}")


def __getattr__(name: str):
    """``convc.load.LoadedTrainer``: the training library's loader lives in convc/library.py."""
    if name == "LoadedTrainer":
        from convc.library import LoadedTrainer
        return LoadedTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
