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
    signature = {info.inputs[0].name: (None, *info.inputs[0].shape[1:])} if free else None
    model = CompiledModel(runner, graph, threads=threads, artifact=LibraryArtifact(info.path, info.digest),
                          restore=_restore, signature=signature)
    model.library = info.path
    model.metadata = meta
    return model


class LoadedTrainer:
    """A training library (``convc compile MODEL -o train.so --train``) driven from Python.

    It owns one context, hence one training state, stepped on the calling thread; the interface
    follows ``convc.Trainer``: ``step(x, y) -> loss``, ``lr``, ``steps_done``, ``predict(x)``,
    ``state_dict()`` / ``load_state_dict()``, ``weights()``."""

    def __init__(self, lib: ctypes.CDLL, info: LibraryInfo):
        self._lib = lib
        self.path = info.path
        self.metadata = info.meta
        self._training = training = info.meta["training"]
        path = info.path
        if not isinstance(training, dict) or not all(isinstance(training.get(k), t) for k, t in (
                ("state", list), ("labels", dict), ("params", list), ("running", list), ("lr_name", str),
                ("loss", str), ("optimizer", str))):
            raise LoadError(f"{path}: the training part of its metadata JSON is malformed; rebuild it")
        self.inputs = info.inputs
        self.outputs = info.outputs
        if len(self.inputs) != 1 or len(self.outputs) < 1:
            raise LoadError(f"{path}: a training library has one input and an output, this one "
                            f"{len(self.inputs)} and {len(self.outputs)}")
        # the state and the labels: sizes from the compiled functions, checked against the JSON
        state = _compiled_specs(lib, path, abi.STATE, "training state",
                                _json_names(training, "state", path))
        _check_specs(path, "training state", training["state"], state)
        labels = training["labels"]
        n_labels = _need(lib, path, abi.LABELS_SIZE, ctypes.c_int64)()
        labels_dtype = _c_text(_need(lib, path, abi.LABELS_DTYPE, ctypes.c_char_p)(), abi.LABELS_DTYPE, path)
        shape = labels.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise LoadError(f"{path}: the labels' shape in its metadata JSON is malformed; rebuild it")
        _agrees(path, "the labels' size", math.prod(shape), n_labels)
        _agrees(path, "the labels' dtype", labels.get("dtype"), labels_dtype)
        if labels_dtype not in _DTYPES:
            raise LoadError(f"{path}: labels of dtype {labels_dtype!r}")
        from convc.runtime import IOSpec
        self.labels = IOSpec(str(labels.get("name", "labels")), tuple(shape), np.dtype(labels_dtype))
        names = {spec.name for spec in state}
        unknown = [n for n in training["params"] + training["running"] + [training["lr_name"]] if n not in names]
        if unknown:
            raise LoadError(f"{path}: its metadata JSON names training state the library does not have: {unknown}")
        self.loss_name = training["loss"]
        self._destroy = _bind(lib, abi.DESTROY, None, [ctypes.c_void_p])
        self._step = _bind(lib, abi.TRAIN_STEP, ctypes.c_int,
                           [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)])
        self._run = _bind(lib, abi.RUN_MODEL, ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p])
        self._set_lr = _bind(lib, abi.SET_LEARNING_RATE, None, [ctypes.c_void_p, ctypes.c_float])
        self._get_lr = _bind(lib, abi.LEARNING_RATE, ctypes.c_float, [ctypes.c_void_p])
        self._steps = _bind(lib, abi.STEPS_DONE, ctypes.c_int64, [ctypes.c_void_p])
        data = _bind(lib, abi.STATE_DATA, ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int])
        create = _bind(lib, abi.CREATE, ctypes.c_void_p, [ctypes.c_int])
        if None in (self._destroy, self._step, self._run, self._set_lr, self._get_lr, self._steps, data, create):
            raise LoadError(f"{path}: its metadata JSON describes a training library, but the training functions "
                            "are missing")
        self._ctx = create(1)
        if not self._ctx:
            raise LoadError(f"{self.path}: convc_create failed (out of memory?)")
        # numpy views of the state inside the context (read/write), sized by the compiled code
        self._state: dict[str, np.ndarray] = {}
        for i, spec in enumerate(state):
            n = math.prod(spec.shape) * spec.dtype.itemsize
            address = data(self._ctx, i)
            if not address:
                raise LoadError(f"{path}: convc_state_data({i}) is NULL")
            buf = (ctypes.c_byte * n).from_address(address)
            self._state[spec.name] = np.frombuffer(buf, dtype=spec.dtype).reshape(spec.shape)

    def close(self) -> None:
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx:
            self._state = {}
            self._destroy(ctx)

    def __del__(self) -> None:
        self.close()

    @property
    def lr(self) -> float:
        return float(self._get_lr(self._ctx))

    @lr.setter
    def lr(self, value: float) -> None:
        from convc.errors import InputError
        if not np.isfinite(value) or value < 0:
            raise InputError(f"learning rate {value!r} must be a finite, non-negative number")
        self._set_lr(self._ctx, float(value))

    @property
    def steps_done(self) -> int:
        return int(self._steps(self._ctx))

    def _x(self, x) -> np.ndarray:
        from convc.errors import InputError
        x = np.asarray(x)
        spec = self.inputs[0]
        if x.shape[1:] != spec.shape[1:] or x.ndim != len(spec.shape):
            raise InputError(f"x has shape {x.shape}, expected (batch,) + {spec.shape[1:]}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def step(self, x, y) -> float:
        """One training step on the batch (x, y); returns the loss before the update."""
        from convc.errors import InputError
        from convc.train import TrainingError
        x = self._x(x)
        if x.shape != self.inputs[0].shape:
            raise InputError(f"x has shape {x.shape}; this library trains on batches of {self.inputs[0].shape}")
        y = np.asarray(y)
        if y.shape != self.labels.shape:
            raise InputError(f"labels have shape {y.shape}, expected {self.labels.shape}")
        if self.labels.dtype.kind in "iu" and y.dtype.kind not in "iu":
            raise InputError(f"labels have dtype {y.dtype}, expected integer class indices")
        y = np.ascontiguousarray(y, dtype=self.labels.dtype)
        if self.labels.dtype.kind in "iu":
            classes = self.outputs[0].shape[1]
            if y.size and (y.min() < 0 or y.max() >= classes):
                raise InputError(f"labels out of range [0, {classes})")
        loss = ctypes.c_float()
        before = self.steps_done
        rc = self._step(self._ctx, x.ctypes.data, y.ctypes.data, ctypes.byref(loss))
        if rc == 2:
            raise TrainingError(f"step {before + 1}: the loss ({loss.value}) or a gradient is not finite; the "
                                "weights and optimizer state were not updated")
        if rc != 0:
            raise LoadError(f"{abi.TRAIN_STEP} failed ({rc})")
        return float(loss.value)

    def predict(self, x, batch_size: int | None = None) -> np.ndarray:
        """The output in eval mode for any number of samples (in chunks of the compiled batch)."""
        x = self._x(x)
        chunk = self.inputs[0].shape[0]
        results = []
        for start in range(0, x.shape[0], chunk):
            part = x[start:start + chunk]
            if part.shape[0] < chunk:
                part = np.concatenate([part, np.zeros((chunk - part.shape[0],) + part.shape[1:], np.float32)])
            part = np.ascontiguousarray(part)
            outs = [np.empty(s.shape, s.dtype) for s in self.outputs]
            ins = (ctypes.c_void_p * 1)(part.ctypes.data)
            outp = (ctypes.c_void_p * len(outs))(*[o.ctypes.data for o in outs])
            if self._run(self._ctx, ins, outp) != 0:
                raise LoadError(f"{abi.RUN_MODEL} failed")
            results.append(outs[0][:min(chunk, x.shape[0] - start)])
        return np.concatenate(results)

    __call__ = predict

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the parameters, running statistics, optimizer state and step counter."""
        skip = {self._training["lr_name"]}
        return {n: v.copy() for n, v in self._state.items() if n not in skip}

    def load_state_dict(self, state) -> None:
        from convc.errors import InputError
        for n, v in state.items():
            if n not in self._state or n == self._training["lr_name"]:
                raise InputError(f"load_state_dict: unexpected {n!r}")
            v = np.asarray(v)
            if v.shape != self._state[n].shape:
                raise InputError(f"load_state_dict: {n!r} has shape {v.shape}, expected {self._state[n].shape}")
            self._state[n][...] = v

    def weights(self) -> dict[str, np.ndarray]:
        """The model's trained constants (parameters and running statistics)."""
        return {n: self._state[n].copy() for n in self._training["params"] + self._training["running"]}

    def __reduce__(self):
        raise TypeError("a training library's context cannot be pickled; send the library path and "
                        "state_dict() instead")

    def __repr__(self) -> str:
        return (f"<convc.load training library {Path(self.path).name}: {self._training['optimizer']}, "
                f"{self.loss_name}, batch {self.inputs[0].shape}>")


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
