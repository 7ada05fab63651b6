"""Emit one LLVM module for a planned model.

The module holds one function per kernel call plus the entry point

    void convc_run(void **ctx, float **inputs, float **outputs)

where ``ctx`` is the context block of convc/abi.py, indexed by ``Slot``: ``ctx[ARENA]`` the arena
(activations and kernel scratch, 64-byte aligned), ``ctx[CONSTANTS]`` the table of constant pointers
(graph constants, then weights the kernels repacked at compile time) and, in a module built with
``instrument=True``, ``ctx[TIMESTAMPS]`` an int64 array that receives a monotonic nanosecond
timestamp before the first kernel and after each one (for per-layer timing), and ``ctx[POOL]`` the
thread pool (null: run on the caller's thread alone).

A parallel kernel takes two extra i64 arguments, its thread id and the thread count, and splits
its own work (``ModuleEmitter.thread_range``); the entry point hands it to ``convc_parallel``
through a trampoline that unpacks its pointer arguments from an array.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Union

import numpy as np
from llvmlite import ir

from convc.abi import ENTRY, PARALLEL, Slot
from convc.errors import CompileError
from convc.ir import Op, Tensor, TensorKind
from convc.ops import OpKind, op_def
from convc.passes.memory import Buffer, align, contiguous, is_alias
from convc.passes.pipeline import Plan
from convc.codegen import arena_check
from convc.codegen.arena_check import READ_DEAD, WROTE_DEAD, ArenaChecker, guarded_slices
from convc.codegen.jit import Target
from convc.codegen.artifacts import llvm_name
from convc.codegen.llvm_utils import I64, PTR, VOID, gep, i64, memcpy
from convc.codegen.threadpool import KERNEL_TYPE, emit_threadpool

PARALLEL_MIN_WORK = 200_000  # multiply-accumulates (or output elements) below which one thread is faster


@dataclass(frozen=True)
class Scratch:
    """Kernel workspace in the arena, valid only during that kernel call."""
    nbytes: int


@dataclass(frozen=True)
class Derived:
    """A constant array made at compile time (e.g. weights packed for a micro-kernel)."""
    index: int


Arg = Union[str, Scratch, Derived]  # a tensor name, scratch space or a derived constant


@dataclass
class KernelCall:
    function: ir.Function
    args: list[Arg]

    @property
    def parallel(self) -> bool:
        return len(self.function.args) == len(self.args) + 2


@dataclass
class NativeModule:
    """Everything the runtime needs besides the machine code."""
    ir_module: ir.Module
    arena_bytes: int
    constants: list[np.ndarray]
    input_names: list[str]
    output_names: list[str]
    kernel_names: list[tuple[str, str]] = field(default_factory=list)  # (op name, function name)
    instrumented: bool = False
    threads: int = 1  # the most threads the kernels were split for (per-thread scratch is sized for it)
    used_constants: frozenset[int] | None = None  # constant-table slots the code reads (None: all)
    name: str = ""  # the graph's name as it is (the LLVM module's name is a sanitized copy)
    arena_steps: list | None = None  # arena-checked build: the checked kernels as (op, inputs, outputs)
    # per kernel call, the function the entry point calls or hands to the thread pool (a parallel
    # kernel's trampoline): what codegen/split.py compiles apart from the entry point
    callees: list[str] = field(default_factory=list)
    # a kernel function changed after ``kernel_done`` handed it over (a later layer sharing it lost
    # ``noalias`` on an argument): what was split off early is stale, the module must be split whole
    changed_after_handover: bool = False


# OpKind -> emitter(em, op) -> KernelCall; filled by the explicit imports in codegen/kernels
EMITTERS: dict[OpKind, Callable[["ModuleEmitter", Op], KernelCall]] = {}


def emitter(*kinds: OpKind):
    def deco(fn):
        for k in kinds:
            if k in EMITTERS:
                raise RuntimeError(f"two emitters for {k.value}")
            EMITTERS[k] = fn
        return fn
    return deco


class ModuleEmitter:
    def __init__(self, plan: Plan, name: str = "convc_model", instrument: bool = False, threads: int = 1,
                 target=None, progress: Callable[[str], None] | None = None, check_arena: bool | None = None,
                 kernel_done: Callable[[ir.Module, str], None] | None = None):
        self.plan = plan
        self.kernel_done = kernel_done  # called with each kernel the entry point calls, once it is written
        self._handed: set[str] = set()  # kernel functions kernel_done has seen
        self._changed_after_handover = False
        self.check_arena = arena_check.enabled() if check_arena is None else check_arena
        self.progress = progress
        self.instrument = instrument
        self.threads = max(1, threads)
        self.graph = plan.graph
        self.name = name
        # llvmlite writes the module name unescaped into the IR text: a model name must not add IR to it
        self.module = ir.Module(name=llvm_name(name))
        self.constants: list[np.ndarray] = [np.ascontiguousarray(self.graph.tensor(n).data)
                                            for n in plan.memory.constants]
        self.max_scratch = 0
        self._names: set[str] = set()
        from convc.codegen.kernels.blas import GemmEmitter, host_isa  # the kernels import this module
        host = target or Target.host()  # a convc.codegen.jit.Target: its features pick the vector ISA
        self.triple = host.triple
        self.isa = host_isa(host.features)
        self.features = frozenset(f[1:] for f in host.features.split(",") if f.startswith("+"))  # e.g. avxvnni
        self._argv_slot: ir.Value | None = None
        self.gemm = GemmEmitter(self.module, self.isa)
        self.extra_gemms: dict = {}  # Isa -> GemmEmitter: other register tiles a kernel picks per layer
        self.emitted: dict = {}  # a kernel's signature -> its function, for kernels emitted once (conv_kernel)
        self._size_tables: dict[bytes, Derived] = {}  # size_table's constants by their bytes

    # --- services for the kernel emitters ------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        return self.graph.tensor(name)

    def derived_constant(self, array: np.ndarray, dtype=np.float32) -> Derived:
        self.constants.append(np.ascontiguousarray(array, dtype=dtype))
        return Derived(len(self.constants) - 1)

    def scratch(self, nbytes: int, per_thread: bool = False) -> Scratch:
        """Kernel workspace; ``per_thread`` reserves one slice per thread (``thread_scratch``)."""
        size = align(nbytes) * (self.threads if per_thread else 1)
        self.max_scratch = max(self.max_scratch, size)
        return Scratch(size)

    def thread_scratch(self, b: ir.IRBuilder, scratch: ir.Value, nbytes: int, tid: ir.Value) -> ir.Value:
        """This thread's slice of a per-thread scratch argument."""
        return b.gep(scratch, [b.mul(tid, i64(align(nbytes)))], inbounds=True, source_etype=ir.IntType(8))

    def size_table(self, values: list[int]) -> Derived:
        """A kernel's shape-dependent integers (sizes, strides, trip counts) as an int64 constant the
        entry point passes it, read with ``read_sizes``: kernels that differ only in them are then the
        same code, which codegen/split.py compiles once per model and the kernel cache once for all
        models. Equal tables are one constant."""
        data = np.asarray(values, dtype=np.int64)
        key = data.tobytes()
        if key not in self._size_tables:
            self._size_tables[key] = self.derived_constant(data, np.int64)
        return self._size_tables[key]

    @staticmethod
    def read_sizes(b: ir.IRBuilder, table: ir.Value, count: int) -> list[ir.Value]:
        """The ``count`` integers of a ``size_table`` argument, loaded once at the kernel's entry."""
        return [b.load(gep(b, table, k, I64), typ=I64, name=f"size{k}") for k in range(count)]

    @staticmethod
    def thread_range(b: ir.IRBuilder, fn: ir.Function, total: int | ir.Value) -> tuple[ir.Value, ir.Value]:
        """[lo, hi) of ``total`` work items (a constant or a run-time value) for this thread of a
        parallel kernel ``fn``."""
        tid, nthreads = fn.args[-2], fn.args[-1]
        total = total if isinstance(total, ir.Value) else i64(total)
        chunk = b.udiv(b.add(total, b.sub(nthreads, i64(1))), nthreads)
        lo = b.mul(tid, chunk)
        lo = b.select(b.icmp_unsigned("<", lo, total), lo, total)
        hi = b.add(lo, chunk)
        return lo, b.select(b.icmp_unsigned("<", hi, total), hi, total)

    def function(self, base: str, n_args: int, parallel: bool = False) -> tuple[ir.Function, ir.IRBuilder]:
        """A new internal kernel function taking ``n_args`` non-aliasing pointers.

        When the memory plan makes two arguments of a call share bytes (an elementwise op working
        in place), ``emit`` drops ``noalias`` from them; a kernel may then see x and y as one buffer."""
        name = re.sub(r"[^A-Za-z0-9_]", "_", base)[:60] or "kernel"
        unique, i = name, 1
        # the module's metadata (branch weights) is numbered in the same name scope: !0 vs a node "0"
        while unique in self._names or self.module.scope.is_used(unique):
            unique, i = f"{name}_{i}", i + 1
        self._names.add(unique)
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR] * n_args + [I64, I64] * parallel), name=unique)
        fn.linkage = "internal"
        # each kernel is called once: inlining them all into the entry point makes one huge
        # function on which LLVM's optimizer is superlinear (minutes for a 400-layer model)
        fn.attributes.add("noinline")
        for a in fn.args[:n_args]:
            a.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        return fn, b

    def emitter_for(self, op: Op) -> Callable[["ModuleEmitter", Op], KernelCall] | None:
        """The kernel emitter of ``op``. In a plan whose weights are inputs read at run time (the
        training variants of passes/pipeline.py), a Gemm or MatMul whose weight is not a
        compile-time constant goes to the kernel that reads it at run time instead of one that
        packs it at compile time (a Conv's is its RUNTIME_WEIGHTS algorithm, from kernel selection)."""
        if self.plan.variant.runtime_weights and self._reads_weights_at_run_time(op):
            from convc.codegen.kernels.gemm_grad import emit_gemm_runtime  # kernels import this module
            return emit_gemm_runtime
        return EMITTERS.get(op.kind)

    def _reads_weights_at_run_time(self, op: Op) -> bool:
        if op.kind is OpKind.GEMM:
            return self.tensor(op.inputs[1]).kind is not TensorKind.CONSTANT or op.attrs.trans_a
        return op.kind is OpKind.MATMUL and all(len(self.tensor(t).shape) == 2 for t in op.inputs)

    # --- the entry point -----------------------------------------------------------------
    def emit(self) -> NativeModule:
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR, PTR, PTR]), name=ENTRY)
        ctx, inputs, outputs = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        arena = b.load(gep(b, ctx, Slot.ARENA, PTR), typ=PTR, name="arena")
        consts = b.load(gep(b, ctx, Slot.CONSTANTS, PTR), typ=PTR, name="consts")
        pool = b.load(gep(b, ctx, Slot.POOL, PTR), typ=PTR, name="pool")
        emit_threadpool(self.module, self.triple)
        scratch_base = self.plan.memory.arena_bytes
        tables = {"input": inputs, "output": outputs, "constant": consts}

        used: set[int] = set()

        def pointer(buf: Buffer):
            if buf.kind == "constant":
                used.add(buf.index)
            if buf.kind == "arena":
                return b.gep(arena, [i64(buf.index)], inbounds=True, source_etype=ir.IntType(8))
            return b.load(gep(b, tables[buf.kind], buf.index, PTR), typ=PTR)

        def resolve(arg: Arg):
            if isinstance(arg, Scratch):
                return pointer(Buffer("arena", scratch_base))
            if isinstance(arg, Derived):
                return pointer(Buffer("constant", arg.index))
            return pointer(self.plan.memory.buffers[arg])

        kernel_names, callees = [], []
        stamp = self._timestamper(b, ctx) if self.instrument else None
        if stamp:
            stamp(0)
        checker = None
        if self.check_arena:
            checker = ArenaChecker(self.module, scratch_base)
            checker.start(b, arena)
            dying: dict[int, list] = {}
            for r in self.plan.memory.live_ranges:
                dying.setdefault(r.last, []).append(r)
            virtual: set[str] = set()  # outputs of ops whose work another kernel does (never written)
        for position, op in enumerate(self.plan.order):
            k = position
            if is_alias(self.graph, op) or op.name in self.plan.memory.concat_aliases:
                continue  # a view, or a Concat whose inputs were written in place
            if checker is not None:
                step = len(checker.steps)
                # whole slots no output touches, and the written slices of a Concat buffer an output writes into
                guarded = [(r.name, self.plan.memory.buffers[r.name].index, contiguous(r.nbytes // 4))
                           for r in self._guarded(op, position)] + guarded_slices(self.plan, op, position)
                checker.steps.append((op.name, list(op.inputs), list(op.outputs), [name for name, _, _ in guarded]))
                for pos, t in enumerate(op.inputs):
                    buf = self.plan.memory.buffers[t]
                    if buf.kind == "arena" and t not in virtual:
                        checker.scan_view(b, arena, buf.index, self._view(t), step, READ_DEAD, pos)
                before = [checker.digest_view(b, arena, offset, view) for _, offset, view in guarded]
            if self.progress:
                self.progress(f"codegen [{k + 1}/{len(self.plan.order)}] {op.name} ({op.kind.value})")
            make = self.emitter_for(op)
            if make is None:
                raise CompileError(f"node {op.name!r}: no native kernel for {op.kind.value}")
            try:
                call = make(self, op)
            except CompileError:
                raise
            except Exception as e:  # an emitter bug must still name the node
                raise CompileError(f"node {op.name!r} ({op.kind.value}): code generation failed: {e}") from e
            if call is None:  # the op's work is done inside another kernel
                if checker is not None:
                    virtual.update(op.outputs)
                continue
            self._allow_aliasing(call)
            if call.parallel:
                argv = self._argv(b, len(call.args))
                for k, a in enumerate(call.args):
                    b.store(resolve(a), gep(b, argv, k, PTR))
                # waking workers costs microseconds: small kernels run on the caller's thread alone
                workers = pool if self._worth_threads(op) else ir.Constant(PTR, None)
                tramp = self._trampoline(call.function)
                b.call(self.module.globals[PARALLEL], [workers, tramp, argv])
                callees.append(tramp.name)
            else:
                b.call(call.function, [resolve(a) for a in call.args])
                callees.append(call.function.name)
            if self.kernel_done is not None:
                self.kernel_done(self.module, callees[-1])
                self._handed.add(call.function.name)
            kernel_names.append((op.name, call.function.name))
            if checker is not None:
                for pos, ((_, offset, view), digest) in enumerate(zip(guarded, before)):
                    after = checker.digest_view(b, arena, offset, view)
                    checker.compare(b, digest, after, step, pos)
                self._check_after(b, arena, checker, call, op, dying.get(position, []), scratch_base)
            if stamp:
                stamp(len(kernel_names))
        # graph outputs whose bytes live elsewhere (an input, a constant, or an output listed twice)
        for j, name in enumerate(self.graph.outputs):
            buf = self.plan.memory.buffers[name]
            if buf != Buffer("output", j):
                memcpy(b, pointer(Buffer("output", j)), pointer(buf), self.tensor(name).nbytes)
        b.ret_void()
        return NativeModule(self.module, scratch_base + self.max_scratch, self.constants,
                            list(self.graph.inputs), list(self.graph.outputs), kernel_names, self.instrument,
                            self.threads, frozenset(used), self.name, checker.steps if checker else None, callees,
                            self._changed_after_handover)

    def _view(self, name: str):
        """How tensor ``name`` is laid out at its buffer (rows of a Concat's output when written in place)."""
        return self.plan.memory.view(name, self.tensor(name).size)

    def _guarded(self, op: Op, position: int) -> list:
        """The arena slots live across ``op`` (before and after it) whose bytes it does not write."""
        mem = self.plan.memory
        written = [(mem.buffers[t].index, mem.buffers[t].index + self.tensor(t).nbytes)
                   for t in op.outputs if mem.buffers[t].kind == "arena"]
        out = []
        for r in mem.live_ranges:
            if r.first < position <= r.last and mem.buffers[r.name].kind == "arena":
                lo = mem.buffers[r.name].index
                if not any(lo < hi2 and lo2 < lo + r.nbytes for lo2, hi2 in written):
                    out.append(r)
        return out

    def _check_after(self, b: ir.IRBuilder, arena: ir.Value, checker, call: KernelCall, op: Op,
                     dying: list, scratch_base: int) -> None:
        """Arena check after a kernel: scan what it wrote, then poison what died and its scratch."""
        step = len(checker.steps) - 1
        for pos, t in enumerate(op.outputs):
            buf = self.plan.memory.buffers[t]
            if buf.kind == "arena":
                checker.scan_view(b, arena, buf.index, self._view(t), step, WROTE_DEAD, pos)
        for r in dying:
            buf = self.plan.memory.buffers[r.name]
            if buf.kind == "arena":
                checker.fill(b, arena, buf.index, r.nbytes)
        for a in call.args:
            if isinstance(a, Scratch):
                checker.fill(b, arena, scratch_base, a.nbytes)

    def _worth_threads(self, op: Op) -> bool:
        """Enough work to pay for handing half of it to another core (~2 us of arithmetic)."""
        definition = op_def(op.kind)
        ins = [self.tensor(t).type for t in op.inputs]
        outs = [self.tensor(t).type for t in op.outputs]
        work = definition.macs(op.attrs, ins, outs) if definition.macs else sum(t.size for t in
                                                                               self.graph.op_outputs(op))
        return work >= PARALLEL_MIN_WORK

    def _argv(self, b: ir.IRBuilder, n: int) -> ir.Value:
        """A stack array of n pointers in the entry block (reused by every call that fits)."""
        if self._argv_slot is None:
            here = b.block
            b.position_at_start(b.function.entry_basic_block)
            self._argv_slot = b.alloca(PTR, size=i64(64), name="argv")
            b.position_at_end(here)
        if n > 64:
            raise CompileError(f"a kernel with {n} arguments exceeds the 64 the entry point passes")
        return self._argv_slot

    def _trampoline(self, kernel: ir.Function) -> ir.Function:
        """void tramp(argv, tid, nthreads) { kernel(argv[0], ..., argv[n-1], tid, nthreads); }
        (one per kernel function: a kernel emitted once for several layers has one trampoline)"""
        if f"{kernel.name}_tramp" in self.module.globals:
            return self.module.globals[f"{kernel.name}_tramp"]
        fn = ir.Function(self.module, KERNEL_TYPE, name=f"{kernel.name}_tramp")
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        argv, tid, nthreads = fn.args
        n = len(kernel.args) - 2
        b.call(kernel, [b.load(gep(b, argv, k, PTR), typ=PTR) for k in range(n)] + [tid, nthreads])
        b.ret_void()
        return fn

    def overlapping(self, args: list) -> frozenset[int]:
        """The positions in a kernel's ``args`` whose planned bytes overlap another argument's (an
        elementwise op working in place): its function must not mark them ``noalias``. A kernel
        emitted once for several layers keys on this, so that layers that alias share no code with
        layers that do not."""
        spans = []
        for k, arg in enumerate(args):
            if isinstance(arg, str):
                buf = self.plan.memory.buffers[arg]
                spans.append((k, buf.kind, buf.index, buf.index + self.tensor(arg).nbytes))
        return frozenset(k for k, kind, lo, hi in spans for j, kind2, lo2, hi2 in spans
                         if j != k and kind == kind2 and (lo < hi2 and lo2 < hi if kind == "arena" else lo == lo2))

    def _allow_aliasing(self, call: KernelCall) -> None:
        """Drop ``noalias`` from the arguments whose planned bytes overlap another argument's."""
        for k in self.overlapping(call.args):
            attrs = call.function.args[k].attributes
            if "noalias" in attrs:
                attrs.discard("noalias")
                if call.function.name in self._handed:
                    self._changed_after_handover = True

    def _timestamper(self, b: ir.IRBuilder, ctx: ir.Value):
        """Returns stamp(k): store the monotonic clock in nanoseconds into ctx[TIMESTAMPS][k].

        The stamps are taken on the calling thread, between kernel calls: a parallel kernel's
        ``convc_parallel`` returns only when every task (on any thread) has finished, so a
        kernel's interval holds all of its threads' work."""
        timespec = b.alloca(ir.ArrayType(I64, 2), name="timespec")
        table = b.load(gep(b, ctx, Slot.TIMESTAMPS, PTR), typ=PTR, name="timestamps")

        def stamp(k: int) -> None:
            b.store(monotonic_ns(b, timespec), gep(b, table, k, I64))
        return stamp


def monotonic_ns(b: ir.IRBuilder, timespec: ir.Value) -> ir.Value:
    """clock_gettime(CLOCK_MONOTONIC) in nanoseconds as an i64 (``timespec``: a stack [2 x i64]).
    The clock Python's time.monotonic_ns reads on Linux, so run-time stamps compare with it."""
    module = b.module
    clock = module.globals.get("clock_gettime") or ir.Function(
        module, ir.FunctionType(ir.IntType(32), [ir.IntType(32), PTR]), "clock_gettime")
    b.call(clock, [ir.Constant(ir.IntType(32), 1), timespec])
    sec = b.load(gep(b, timespec, 0, I64), typ=I64)
    nsec = b.load(gep(b, timespec, 1, I64), typ=I64)
    return b.add(b.mul(sec, i64(1_000_000_000)), nsec)


def emit_module(plan: Plan, name: str = "convc_model", instrument: bool = False, threads: int = 1,
                target=None, progress: Callable[[str], None] | None = None,
                kernel_done: Callable[[ir.Module, str], None] | None = None) -> NativeModule:
    """``target`` (a convc.codegen.jit.Target, default the host) picks the triple and vector ISA;
    ``progress`` receives one line per layer; ``kernel_done(module, name)`` each kernel the entry
    point calls as soon as it is written (the JIT splits and compiles it then, codegen/cache.py)."""
    from convc.codegen import kernels  # noqa: F401  (registers the emitters)
    return ModuleEmitter(plan, name, instrument, threads, target, progress, kernel_done=kernel_done).emit()
