"""Arena checking: a debugging build of a model that poisons memory the plan says is dead and
checks, between kernels, that no kernel reads it.

With ``CONVC_CHECK_ARENA=1`` in the environment (or ``check_arena=True`` where a module is emitted)
the entry point

- fills the whole arena with a canary word (a quiet NaN with a payload) when a call starts,
- after each kernel, fills again every arena slot whose last reader was that kernel and the
  kernel's scratch space, so a later read of freed or reused bytes sees the canary,
- before each kernel, scans every arena tensor it reads (only its own elements: a Concat input
  produced in place is rows of the Concat's output, ``scan_view``) for the canary (the plan freed or reused a
  tensor that is still needed, or nothing wrote it), and after it, scans what it wrote (a kernel
  that read dead memory propagates the NaN payload into its output on x86; one that left part of
  its output unwritten leaves canary words there),
- hashes every arena tensor that is live across the kernel but not written by it, before and
  after the call: a kernel that writes outside its outputs (past a tile's end, into a neighbour
  the plan placed next to it) changes one. Inside a Concat's buffer, where a kernel writes its own
  slice, the slices written before it are hashed one by one (``guarded_slices``): a conv that
  ignored its slice's row stride would change them.

The first fault is recorded in the module global ``convc_arena_fault`` (kernel step + 1, what,
tensor position, word index); ``raise_fault`` turns it into an ``ArenaError`` naming the kernel and
the tensor. The checks cost a scan of each tensor per kernel: for tests and debugging, not for
production. Graph inputs, outputs and constants live outside the arena and are not checked.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from convc.codegen.llvm_utils import I32, I64, PTR, VOID, for_range, gep, i64
from convc.passes.memory import View, contiguous
from convc.passes.memory_check import checking, slices_meet
from llvmlite import ir

from convc.errors import ConvcError

CANARY = 0x7FDEAD5A  # a quiet NaN whose payload survives x86 arithmetic (the first NaN operand wins)
FAULT_SYMBOL = "convc_arena_fault"
READ_DEAD, WROTE_DEAD, CHANGED_LIVE = 1, 2, 3


class ArenaError(ConvcError):
    """A kernel read arena bytes the memory plan says are dead (a planner or kernel bug)."""


def enabled() -> bool:
    return checking()


@dataclass
class ArenaChecker:
    """Emits the canary fills and scans into a module's entry point (see the module docstring)."""
    module: ir.Module
    arena_bytes: int
    # (op, inputs, outputs, the live tensors it must not change)
    steps: list[tuple[str, list[str], list[str], list[str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fault = ir.GlobalVariable(self.module, ir.ArrayType(I64, 4), FAULT_SYMBOL)
        self.fault.initializer = ir.Constant(ir.ArrayType(I64, 4), [0, 0, 0, 0])
        self._fill = self._helper("convc_canary_fill", self._emit_fill, VOID)
        self._find = self._helper("convc_canary_find", self._emit_find, I64)
        self._hash = self._helper("convc_arena_hash", self._emit_hash, I64)

    def _helper(self, name: str, body, ret: ir.Type) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(ret, [PTR, I64]), name=name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        body(ir.IRBuilder(fn.append_basic_block("entry")), *fn.args)
        return fn

    @staticmethod
    def _emit_fill(b: ir.IRBuilder, ptr: ir.Value, words: ir.Value) -> None:
        with for_range(b, words, name="w") as w:
            b.store(ir.Constant(I32, CANARY), gep(b, ptr, w, I32))
        b.ret_void()

    @staticmethod
    def _emit_find(b: ir.IRBuilder, ptr: ir.Value, words: ir.Value) -> None:
        """Index + 1 of the first canary word, or 0."""
        found = b.append_basic_block("found")
        with for_range(b, words, name="w") as w:
            hit = b.icmp_unsigned("==", b.load(gep(b, ptr, w, I32), typ=I32), ir.Constant(I32, CANARY))
            rest = b.append_basic_block("rest")
            b.cbranch(hit, found, rest)
            b.position_at_end(rest)
        b.ret(i64(0))
        b.position_at_end(found)
        b.ret(b.add(w, i64(1)))

    @staticmethod
    def _emit_hash(b: ir.IRBuilder, ptr: ir.Value, words: ir.Value) -> None:
        """A position-dependent hash of ``words`` 32-bit words (any changed word changes it)."""
        h = b.alloca(I64)
        b.store(i64(0), h)
        with for_range(b, words, name="w") as w:
            v = b.zext(b.load(gep(b, ptr, w, I32), typ=I32), I64)
            mixed = b.mul(b.xor(b.load(h, typ=I64), b.add(v, b.shl(w, i64(32)))), i64(0x100000001B3))
            b.store(mixed, h)
        b.ret(b.load(h, typ=I64))

    def digest(self, b: ir.IRBuilder, arena: ir.Value, offset: int, nbytes: int) -> ir.Value:
        return b.call(self._hash, [b.gep(arena, [i64(offset)], inbounds=True, source_etype=ir.IntType(8)),
                                   i64(nbytes // 4)])

    def digest_view(self, b: ir.IRBuilder, arena: ir.Value, offset: int, view: View) -> ir.Value:
        """``digest`` of a tensor laid out as ``view`` at byte ``offset``: its rows' hashes combined."""
        if view.contiguous:
            return self.digest(b, arena, offset, view.rows * view.run * 4)
        h = b.alloca(I64)
        b.store(i64(0), h)
        with for_range(b, view.rows, name="row") as r:
            row = b.gep(arena, [b.add(i64(offset), b.mul(r, i64(view.stride * 4)))], inbounds=True,
                        source_etype=ir.IntType(8))
            mixed = b.mul(b.xor(b.load(h, typ=I64), b.call(self._hash, [row, i64(view.run)])), i64(0x100000001B3))
            b.store(b.add(mixed, r), h)
        return b.load(h, typ=I64)

    def compare(self, b: ir.IRBuilder, before: ir.Value, after: ir.Value, step: int, position: int) -> None:
        """Record (step + 1, CHANGED_LIVE, position, 0) if the two digests differ (first fault only)."""
        first = b.icmp_unsigned("==", b.load(self._slot(b, 0), typ=I64), i64(0))
        with b.if_then(b.and_(b.icmp_unsigned("!=", before, after), first)):
            for k, v in enumerate((i64(step + 1), i64(CHANGED_LIVE), i64(position), i64(0))):
                b.store(v, self._slot(b, k))

    def fill(self, b: ir.IRBuilder, arena: ir.Value, offset: int, nbytes: int) -> None:
        if nbytes >= 4:
            b.call(self._fill, [b.gep(arena, [i64(offset)], inbounds=True, source_etype=ir.IntType(8)),
                                i64(nbytes // 4)])

    def scan(self, b: ir.IRBuilder, arena: ir.Value, offset: int, nbytes: int, step: int, what: int,
             position: int) -> None:
        """Record (step + 1, what, position, word) in the fault global unless a fault is recorded."""
        if nbytes < 4:
            return
        at = b.call(self._find, [b.gep(arena, [i64(offset)], inbounds=True, source_etype=ir.IntType(8)),
                                 i64(nbytes // 4)])
        first = b.icmp_unsigned("==", b.load(self._slot(b, 0), typ=I64), i64(0))
        with b.if_then(b.and_(b.icmp_unsigned("!=", at, i64(0)), first)):
            for k, v in enumerate((i64(step + 1), i64(what), i64(position), b.sub(at, i64(1)))):
                b.store(v, self._slot(b, k))

    def scan_view(self, b: ir.IRBuilder, arena: ir.Value, offset: int, view, step: int, what: int,
                  position: int) -> None:
        """``scan`` of a tensor laid out as ``view`` (passes/memory.py ``View``) at byte ``offset``:
        each of its rows, not the other tensors' elements between them; the word index recorded is
        the tensor's own element index."""
        if view.contiguous:
            self.scan(b, arena, offset, view.rows * view.run * 4, step, what, position)
            return
        with for_range(b, view.rows, name="row") as r:
            row = b.gep(arena, [b.add(i64(offset), b.mul(r, i64(view.stride * 4)))], inbounds=True,
                        source_etype=ir.IntType(8))
            at = b.call(self._find, [row, i64(view.run)])
            first = b.icmp_unsigned("==", b.load(self._slot(b, 0), typ=I64), i64(0))
            with b.if_then(b.and_(b.icmp_unsigned("!=", at, i64(0)), first)):
                word = b.add(b.mul(r, i64(view.run)), b.sub(at, i64(1)))
                for k, v in enumerate((i64(step + 1), i64(what), i64(position), word)):
                    b.store(v, self._slot(b, k))

    def _slot(self, b: ir.IRBuilder, k: int) -> ir.Value:
        return b.gep(self.fault, [ir.Constant(I32, 0), ir.Constant(I32, k)], inbounds=True)

    def start(self, b: ir.IRBuilder, arena: ir.Value) -> None:
        for k in range(4):
            b.store(i64(0), self._slot(b, k))
        self.fill(b, arena, 0, self.arena_bytes)


def guarded_slices(plan, op, position: int) -> list[tuple[str, int, View]]:
    """(tensor, byte offset, view) of the Concat slices already written when ``op`` runs at
    ``position`` whose buffer is live across it and which ``op``'s outputs do not touch: a kernel
    writing its own slice of that buffer must leave them as they are."""
    mem, g = plan.memory, plan.graph
    if not mem.placed:
        return []
    done = {t for o in plan.order[:position] for t in o.outputs}
    live = {r.name for r in mem.live_ranges if r.first < position <= r.last}
    outs = []
    for t in op.outputs:
        p = mem.placed.get(t)
        outs.append((p.root, p.view) if p is not None else (t, contiguous(g.tensor(t).size)))
    written = {root for root, _ in outs}  # a buffer no output touches is hashed whole (module._guarded)
    found = []
    for x, p in mem.placed.items():
        if p.root not in written:
            continue
        producer = g.producer(x)
        if x not in done or p.root not in live or producer.name in mem.concat_aliases:
            continue  # not written yet, its buffer is dead, or its own slices are guarded instead
        if any(root == p.root and slices_meet(view, p.view) for root, view in outs):
            continue
        found.append((x, mem.buffers[x].index, View(0, p.view.rows, p.view.run, p.view.stride)))
    return found


def raise_fault(address: int, steps: list[tuple[str, list[str], list[str], list[str]]]) -> None:
    """Raise ArenaError if the module whose ``convc_arena_fault`` global is at ``address`` recorded
    a fault in the last call; ``steps`` are the checked kernels as (op, inputs, outputs, guarded
    tensors)."""
    fault = (ctypes.c_int64 * 4).from_address(address)
    step, what, position, word = list(fault)
    if not step:
        return
    op, inputs, outputs, guarded = steps[step - 1]
    if what == CHANGED_LIVE:
        raise ArenaError(f"arena check: kernel {op!r} changed {guarded[position]!r}, a tensor it does not write "
                         f"that is still live: it wrote outside its outputs")
    if what == READ_DEAD:
        raise ArenaError(f"arena check: kernel {op!r} reads input {position} {inputs[position]!r}, whose bytes "
                         f"hold the dead-memory canary at float {word}: the memory plan freed or reused them "
                         f"while still needed, or no kernel wrote them")
    raise ArenaError(f"arena check: kernel {op!r} left the dead-memory canary in output {position} "
                     f"{outputs[position]!r} at float {word}: it read freed or unwritten arena bytes, or did "
                     f"not write all of its output")
