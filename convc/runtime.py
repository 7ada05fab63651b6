"""Calling compiled native code from Python: argument checks, contexts, the ctypes call."""
from __future__ import annotations

import atexit
import ctypes
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from convc.abi import ENTRY_SLOTS, POOL_CREATE, POOL_DESTROY, Slot
from convc.errors import InputError
from convc.limits import check_bytes

RunFunction = Callable[[int, int, int], None]
_ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)  # releases the GIL


@dataclass(frozen=True)
class IOSpec:
    """A model input or output: name, concrete shape and numpy dtype."""
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def type(self) -> str:  # onnxruntime's spelling, for code that reads NodeArg.type
        return {np.dtype(np.float32): "tensor(float)"}.get(self.dtype, f"tensor({self.dtype})")


def dtype_error(what: str, have: np.dtype, want: np.dtype) -> InputError:
    """The one wording for an array of the wrong dtype, in inference and training alike: convc never
    converts silently (a float64 array halved in precision, or int pixels, would give other numbers)."""
    return InputError(f"{what} has dtype {have}, expected {want} (convert with .astype(np.{want}))")


_POOL_CREATE = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_int64)
_POOL_DESTROY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_LIVE_CONTEXTS: "weakref.WeakSet[_Context]" = weakref.WeakSet()
_PINNED_CODE: dict[int, tuple] = {}  # context id -> (pool functions, code owner) while its pool runs


@dataclass(frozen=True)
class PoolApi:
    """The compiled module's thread-pool functions (convc_pool_create / convc_pool_destroy)."""
    create: Any
    destroy: Any

    @staticmethod
    def from_addresses(create: int, destroy: int) -> "PoolApi":
        return PoolApi(_POOL_CREATE(create), _POOL_DESTROY(destroy))

    @staticmethod
    def from_symbols(address: Callable[[str], int]) -> PoolApi:
        """The pool functions of compiled code, given its symbol -> address look-up."""
        return PoolApi.from_addresses(address(POOL_CREATE), address(POOL_DESTROY))


class _Context:
    """What one concurrent caller owns: the arena, its worker threads, and the ctx block that the
    native entry point reads (arena, constant table, timestamps, thread pool)."""

    def __init__(self, arena_bytes: int, const_table: ctypes.Array, n_timestamps: int = 0,
                 threads: int = 1, pool_api: PoolApi | None = None, keepalive: Any = None):
        self.pool = None  # __del__ runs even when the checks below raise
        # sized before allocating: numpy's MemoryError for 50 TiB says nothing about the model
        check_bytes("the compiled model's activation arena", arena_bytes)
        # over-allocate so the arena can start on a 64-byte boundary
        self.arena = np.empty(arena_bytes + 64, dtype=np.uint8)
        self.timestamps = np.zeros(n_timestamps, dtype=np.int64)
        self._pool_api = pool_api
        # a single-threaded context spawns nothing; workers are created once, not per call
        self.pool = pool_api.create(threads) if pool_api is not None and threads > 1 else None
        if self.pool:
            # the workers spin inside the compiled code, and destroying the pool calls into it:
            # pin the code (JIT engine or library) globally, so that even when a garbage cycle
            # finalizes everything at once in no fixed order, the code outlives the pool
            _PINNED_CODE[id(self)] = (pool_api, keepalive)
        base = self.arena.ctypes.data
        self.block = (ctypes.c_void_p * ENTRY_SLOTS)()
        self.block[Slot.ARENA] = base + (-base % 64)
        self.block[Slot.CONSTANTS] = ctypes.addressof(const_table)
        self.block[Slot.TIMESTAMPS] = self.timestamps.ctypes.data
        self.block[Slot.POOL] = self.pool
        self.address = ctypes.addressof(self.block)
        _LIVE_CONTEXTS.add(self)

    def close(self) -> None:
        if self.pool:
            pool, self.pool = self.pool, None
            self._pool_api.destroy(pool)
            _PINNED_CODE.pop(id(self), None)

    def __del__(self) -> None:
        self.close()


@atexit.register
def _stop_workers() -> None:
    """Join every pool before the interpreter unloads the code its workers spin in."""
    for ctx in list(_LIVE_CONTEXTS):
        ctx.close()


class NativeRunner:
    """Checks arrays against the compiled signature and calls the native entry point.

    Every caller takes a context (arena) from a free list and returns it after the call, so one
    compiled model serves several Python threads at once with no lock around the native code."""

    def __init__(self, address: int, arena_bytes: int, constants: Sequence[np.ndarray],
                 inputs: list[IOSpec], outputs: list[IOSpec], keepalive: Any = None,
                 kernel_names: Sequence[str] = (), instrumented: bool = False,
                 threads: int = 1, pool_api: PoolApi | None = None, const_table: ctypes.Array | None = None):
        self._fn = _ENTRY_TYPE(address)
        self._keepalive = keepalive  # the JIT engine or shared library owning the code
        # None: a constant-table slot the code never reads (a weight the kernels repacked)
        self._constants = [None if c is None else np.ascontiguousarray(c) for c in constants]
        # a shared library brings its own table, pointing at its embedded weights
        self._const_table = const_table if const_table is not None else (
            ctypes.c_void_p * max(1, len(self._constants)))(
            *[None if c is None else c.ctypes.data for c in self._constants])
        self.arena_bytes = arena_bytes
        self.inputs = inputs
        self.outputs = outputs
        self.kernel_names = list(kernel_names)  # op names, one per native kernel call, in order
        self.threads = threads
        self._pool_api = pool_api
        self._n_stamps = len(self.kernel_names) + 1 if instrumented else 0
        self._free: list[_Context] = [self._new_context()]
        self._names = {s.name for s in inputs}
        self._positions = {s.name: i for i, s in enumerate(inputs)}
        self._bound: dict[int, np.ndarray] = {}  # input position -> the caller's array (``bind``)
        # the input table's starting point: the bound arrays' addresses (they never move); feeds fill the rest
        self._template: list[int | None] = [None] * len(inputs)
        # an arena-checked build (codegen/arena_check.py): called after every run, raises on a fault
        # (the driver binds raise_fault to the fault global and the checked kernels)
        self.arena_check: Callable[[], None] | None = None

    def bind(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Read these inputs from the caller's arrays on every call in which they are not fed: the
        training state, which the compiled step also writes in place. The arrays are used as they
        are, never copied, so they must match the signature exactly (dtype, shape, C order, aligned)."""
        for name, a in arrays.items():
            if name not in self._positions:
                raise InputError(f"cannot bind {name!r}: the model takes {[s.name for s in self.inputs]}")
            spec = self.inputs[self._positions[name]]
            if not isinstance(a, np.ndarray) or a.dtype != spec.dtype or a.shape != spec.shape or \
                    not (a.flags.c_contiguous and a.flags.aligned and a.flags.writeable):
                raise InputError(f"cannot bind input {name!r} to {type(a).__name__} "
                                 f"{getattr(a, 'dtype', '')}{list(getattr(a, 'shape', ()))}: it takes a writeable, "
                                 f"C-contiguous {spec.dtype}{list(spec.shape)} array")
            self._bound[self._positions[name]] = a
            self._template[self._positions[name]] = a.ctypes.data

    def check(self, feeds: Mapping[str, Any]) -> list[np.ndarray | None]:
        """The fed arrays in input order, checked against the signature (None where a bound array is read)."""
        missing = [s.name for i, s in enumerate(self.inputs) if s.name not in feeds and i not in self._bound]
        extra = [k for k in feeds if k not in self._names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unknown input(s) {extra}")
            raise InputError("; ".join(parts) + f"; the model takes {[s.name for s in self.inputs]}")
        arrays: list[np.ndarray | None] = [None] * len(self.inputs)
        for i in sorted(self._positions[k] for k in feeds):  # in input order: the first bad input is named
            spec = self.inputs[i]
            a = feeds[spec.name]
            if not isinstance(a, np.ndarray):
                a = np.asarray(a, dtype=spec.dtype) if isinstance(a, (list, tuple, float, int)) else np.asarray(a)
            if a.dtype != spec.dtype:
                raise dtype_error(f"input {spec.name!r}", a.dtype, spec.dtype)
            if a.shape != spec.shape:
                raise InputError(f"input {spec.name!r} has shape {a.shape}, expected {spec.shape}")
            # strided or misaligned arrays are copied, never read out of bounds (other byte orders
            # have a different dtype and were rejected above)
            arrays[i] = a if a.flags.c_contiguous and a.flags.aligned else np.require(a, requirements=("C", "A"))
        return arrays

    def _new_context(self) -> _Context:
        return _Context(self.arena_bytes, self._const_table, self._n_stamps, self.threads, self._pool_api,
                        self._keepalive)

    def run_timed(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], dict[str, float]]:
        """Run once and return the seconds each kernel took (needs an instrumented module)."""
        if not self._n_stamps:
            raise RuntimeError("per-layer timing needs a model compiled with instrument=True")
        outs, ctx = self.run(arrays, keep_context=True)
        try:
            secs = np.diff(ctx.timestamps) * 1e-9
            return outs, dict(zip(self.kernel_names, secs.tolist()))
        finally:
            self._free.append(ctx)

    def run(self, arrays: list[np.ndarray | None], keep_context: bool = False):
        outs = [np.empty(s.shape, dtype=s.dtype) for s in self.outputs]
        # a.ctypes.data builds a helper object per call: the bound state (a step reads 100+ arrays) is looked up once
        ptrs = list(self._template)
        for i, a in enumerate(arrays):
            if a is not None:
                ptrs[i] = a.ctypes.data
        in_ptrs = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        out_ptrs = (ctypes.c_void_p * max(1, len(outs)))(*[o.ctypes.data for o in outs])
        try:
            ctx = self._free.pop()
        except IndexError:  # another thread holds every context: make one more
            ctx = self._new_context()
        try:
            self._fn(ctx.address, ctypes.addressof(in_ptrs), ctypes.addressof(out_ptrs))
        finally:
            if not keep_context:
                self._free.append(ctx)
        if self.arena_check is not None:
            self.arena_check()
        return (outs, ctx) if keep_context else outs
