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

This module also holds what pickling a compiled model needs (``reduce_model`` and the restore
functions): a JIT model pickles as its object code and weights, a loaded library as its bytes.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from convc.codegen.aot import ABI_VERSION
from convc.errors import ConvcError


class LoadError(ConvcError):
    """A compiled artifact that cannot run here: not a convc library, another ABI, missing CPU features."""


class LazyGraph:
    """Stands in for ``CompiledModel.graph`` when the code came from the compile cache, a pickle or a
    library: the graph's name and metadata are at hand; anything else rebuilds the optimized graph
    on first use (import and passes, no code generation), or says why it cannot."""

    def __init__(self, name: str, metadata: dict | None = None, factory: Callable[[], Any] | None = None,
                 why_not: str = "it was loaded from compiled code"):
        self.name = name
        self.metadata = dict(metadata or {})
        self._factory = factory
        self._graph = None
        self._why_not = why_not

    def materialize(self):
        if self._graph is None:
            if self._factory is None:
                raise AttributeError(f"model {self.name!r} has no graph: {self._why_not}")
            self._graph = self._factory()
        return self._graph

    def __getattr__(self, attr: str):
        if attr.startswith("__") or attr in ("_factory", "_graph", "_why_not"):
            raise AttributeError(attr)
        return getattr(self.materialize(), attr)

    def __repr__(self) -> str:
        state = "built" if self._graph is not None else "not built yet"
        return f"<convc graph {self.name!r} ({state})>"


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


def inspect_library(path: str | os.PathLike) -> tuple[ctypes.CDLL, LibraryInfo]:
    """Open a convc library and read its metadata; raises LoadError when it cannot run here."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        raise LoadError(f"{path}: no such file")
    try:
        lib = ctypes.CDLL(path)  # runs no convc code: the library has no constructors
    except OSError as e:
        raise LoadError(f"{path}: cannot load it as a shared library ({e}); was it built for another "
                        f"architecture or operating system?") from None
    abi_fn = _bind(lib, "convc_abi_version", ctypes.c_int)
    if abi_fn is None:
        raise LoadError(f"{path}: not a library built by `convc compile` (no convc_abi_version)")
    abi = abi_fn()
    if abi != ABI_VERSION:
        version = _bind(lib, "convc_version", ctypes.c_char_p)
        built_by = version().decode() if version is not None else "an unknown convc"
        from convc import __version__
        raise LoadError(f"{path}: built by convc {built_by} with C ABI version {abi}; this convc ({__version__}) "
                        f"loads ABI version {ABI_VERSION}. Rebuild it with `convc compile`.")
    meta = json.loads(_bind(lib, "convc_metadata_json", ctypes.c_char_p)().decode())
    ok = _bind(lib, "convc_cpu_feature_ok", ctypes.c_int, [ctypes.c_int])
    name = _bind(lib, "convc_cpu_feature", ctypes.c_char_p, [ctypes.c_int])
    n = len(meta.get("features", []))
    missing = [name(i).decode() for i in range(n) if not ok(i)]
    return lib, LibraryInfo(path, abi, meta, missing)


def cpu_error(where: str, meta: dict, missing: Sequence[str]) -> LoadError:
    return LoadError(f"{where} was compiled for {meta.get('cpu', '?')} ({meta.get('triple', '?')}, target "
                     f"{meta.get('target', '?')}) and needs CPU feature(s) this machine lacks: {', '.join(missing)}. "
                     "Running it would crash with an illegal instruction; rebuild it on this machine, or for "
                     "a portable level with `convc compile --target x86-64-v3` (or x86-64).")


def _specs(items: list[dict]):
    from convc.runtime import IOSpec
    return [IOSpec(s["name"], tuple(int(d) for d in s["shape"]), np.dtype(s["dtype"])) for s in items]


def load(path: str | os.PathLike, *, threads: int | None = None):
    """Load a library written by ``convc compile MODEL -o model.so`` and return a ``CompiledModel``
    (the object ``convc.compile`` returns). ``threads`` caps the worker threads per call (at most
    the count the library was compiled for, the default)."""
    from convc.runtime import NativeRunner, PoolApi
    from convc.session import CompiledModel
    lib, info = inspect_library(path)
    meta = info.meta
    if info.missing_features:
        raise cpu_error(info.path, meta, info.missing_features)
    if "training" in meta:
        return LoadedTrainer(lib, info)
    compiled = max(1, int(meta["threads"]))
    threads = compiled if threads is None else max(1, min(int(threads), compiled))
    address = lambda name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value  # noqa: E731
    table_fn = _bind(lib, "convc_constant_table", ctypes.c_void_p)
    n_const = _bind(lib, "convc_num_constants", ctypes.c_int)()
    table = (ctypes.c_void_p * max(1, n_const)).from_address(table_fn())
    runner = NativeRunner(address("convc_run"), int(meta["arena_bytes"]), [], _specs(meta["inputs"]),
                          _specs(meta["outputs"]), keepalive=lib, kernel_names=meta.get("kernel_names", ()),
                          threads=threads, const_table=table,
                          pool_api=PoolApi.from_addresses(address("convc_pool_create"), address("convc_pool_destroy")))
    graph = LazyGraph(meta.get("name", "model"), meta.get("graph_metadata"),
                      why_not=f"it was loaded from the compiled library {info.path}")
    model = CompiledModel(runner, graph, threads=threads)
    model._artifact = LibraryArtifact(info.path)
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
        self._training = info.meta["training"]
        self.inputs = _specs(info.meta["inputs"])
        self.outputs = _specs(info.meta["outputs"])
        self.labels = _specs([self._training["labels"]])[0]
        self.loss_name = self._training["loss"]
        self._destroy = _bind(lib, "convc_destroy", None, [ctypes.c_void_p])
        self._step = _bind(lib, "convc_train_step", ctypes.c_int,
                           [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float)])
        self._run = _bind(lib, "convc_run_model", ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p])
        self._set_lr = _bind(lib, "convc_set_learning_rate", None, [ctypes.c_void_p, ctypes.c_float])
        self._get_lr = _bind(lib, "convc_learning_rate", ctypes.c_float, [ctypes.c_void_p])
        self._steps = _bind(lib, "convc_steps_done", ctypes.c_int64, [ctypes.c_void_p])
        data = _bind(lib, "convc_state_data", ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int])
        self._ctx = _bind(lib, "convc_create", ctypes.c_void_p, [ctypes.c_int])(1)
        if not self._ctx:
            raise LoadError(f"{self.path}: convc_create failed (out of memory?)")
        # numpy views of the state inside the context (read/write)
        self._state: dict[str, np.ndarray] = {}
        for i, spec in enumerate(self._training["state"]):
            dt = np.dtype(spec["dtype"])
            n = int(np.prod(spec["shape"], dtype=np.int64))
            buf = (ctypes.c_byte * (n * dt.itemsize)).from_address(data(self._ctx, i))
            self._state[spec["name"]] = np.frombuffer(buf, dtype=dt).reshape(spec["shape"])

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
            raise LoadError(f"convc_train_step failed ({rc})")
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
                raise LoadError("convc_run_model failed")
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
    """A model loaded from a library pickles as the library's bytes."""
    path: str

    def state(self) -> dict:
        return {"kind": "library", "name": Path(self.path).name, "data": Path(self.path).read_bytes()}


@dataclass
class JitArtifact:
    """A JIT-compiled model pickles as its object code, weights and metadata (see codegen/cache.py)."""
    meta: dict
    obj: bytes
    constants: list  # np.ndarray or None per constant-table slot
    graph_factory: Callable[[], Any] | None = field(default=None, repr=False)

    def state(self) -> dict:
        return {"kind": "jit", "meta": self.meta, "obj": self.obj, "constants": self.constants}


def reduce_model(model) -> tuple:
    artifact = getattr(model, "_artifact", None)
    if artifact is None:
        raise TypeError("this CompiledModel cannot be pickled: only models from convc.compile and convc.load "
                        "carry their compiled code")
    return _restore, (artifact.state(), model.threads)


def _library_copy(state: dict) -> str:
    """Write pickled library bytes to a file named by their hash (reused by later unpickles)."""
    digest = hashlib.sha256(state["data"]).hexdigest()[:24]
    base = os.environ.get("CONVC_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"convc-{os.getuid()}")
    folder = Path(base) / "libraries"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}-{Path(state['name']).name}"
    if not path.exists() or path.stat().st_size != len(state["data"]):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(state["data"])
        os.replace(tmp, path)
    return str(path)


def _restore(state: dict, threads: int | None):
    """Unpickle a CompiledModel: load the library or the object code; no compilation happens."""
    if state["kind"] == "library":
        return load(_library_copy(state), threads=threads)
    if state["kind"] == "jit":
        from convc.codegen.cache import model_from_artifact
        return model_from_artifact(JitArtifact(state["meta"], state["obj"], state["constants"]), threads=threads)
    raise LoadError(f"cannot unpickle a compiled model of kind {state['kind']!r}")
