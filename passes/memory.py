"""Memory planning: where every tensor's bytes live.

Graph inputs and outputs live in the caller's arrays, constants in the constant table, and every
other activation in one arena. View ops (Reshape, Flatten, Identity, Dropout at inference) alias
their input instead of copying. Arena offsets come from liveness over the execution order and
greedy-by-size best fit: largest tensor first, placed in the smallest gap that fits among the
tensors whose lifetimes overlap it, 64-byte aligned.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from convc.ir import Graph, Op, TensorKind
from convc.ops import OpGroup

ALIGN = 64


@dataclass(frozen=True)
class Buffer:
    """Where a tensor's bytes live: ``kind`` is input, output, constant or arena; ``index`` is the
    position in the caller's input/output list, the constant table, or the arena byte offset."""
    kind: str
    index: int


@dataclass(frozen=True)
class LiveRange:
    name: str
    nbytes: int
    first: int  # index of the defining op in the execution order
    last: int   # index of the last op that reads it


@dataclass
class MemoryPlan:
    arena_bytes: int
    buffers: dict[str, Buffer]
    live_ranges: list[LiveRange] = field(default_factory=list)
    constants: list[str] = field(default_factory=list)  # constant table order


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


def view_root(g: Graph, name: str) -> str:
    """The tensor whose storage ``name`` shares (itself unless it is the output of a view op)."""
    while name not in g.outputs:
        op = g.producer(name)
        if op is None or op.kind not in OpGroup.VIEW:
            break
        name = op.inputs[0]
    return name


def is_alias(g: Graph, op: Op) -> bool:
    """A view op whose output shares its input's storage: the codegen emits nothing for it."""
    return op.kind in OpGroup.VIEW and view_root(g, op.outputs[0]) != op.outputs[0]


def live_ranges(g: Graph, order: list[Op]) -> list[LiveRange]:
    """Lifetime of every arena tensor (aliases extend their root's lifetime)."""
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, op in enumerate(order):
        for t in op.outputs:
            first.setdefault(view_root(g, t), i)
        for t in op.inputs:
            last[view_root(g, t)] = i
    out = []
    for name, start in first.items():
        t = g.tensor(name)
        if t.kind is not TensorKind.ACTIVATION or name in g.outputs:
            continue
        out.append(LiveRange(name, t.nbytes, start, max(start, last.get(name, start))))
    return out


def best_fit(ranges: list[LiveRange]) -> tuple[dict[str, int], int]:
    """Greedy by size, best fit: returns (offset per tensor, arena bytes)."""
    placed: list[tuple[int, int, LiveRange]] = []  # (offset, size, range)
    offsets: dict[str, int] = {}
    for r in sorted(ranges, key=lambda r: (-r.nbytes, r.first, r.name)):
        size = align(r.nbytes)
        busy = sorted((o, o + s) for o, s, q in placed if q.first <= r.last and r.first <= q.last)
        best, best_gap, cursor = None, None, 0
        for lo, hi in busy:
            gap = lo - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, hi)
        offset = best if best is not None else cursor
        placed.append((offset, size, r))
        offsets[r.name] = offset
    return offsets, max((o + s for o, s, _ in placed), default=0)


def plan_memory(g: Graph, order: list[Op]) -> MemoryPlan:
    ranges = live_ranges(g, order)
    offsets, arena = best_fit(ranges)
    constants = [t.name for t in g.tensors() if t.kind is TensorKind.CONSTANT]
    buffers: dict[str, Buffer] = {}
    for i, n in enumerate(g.inputs):
        buffers[n] = Buffer("input", i)
    for i, n in enumerate(constants):
        buffers[n] = Buffer("constant", i)
    for i, n in enumerate(g.outputs):
        buffers.setdefault(n, Buffer("output", i))
    for n, off in offsets.items():
        buffers[n] = Buffer("arena", off)
    for t in g.tensors():
        if t.name not in buffers:
            buffers[t.name] = buffers.get(view_root(g, t.name), Buffer("arena", 0))
    for t in g.tensors():  # views of views resolve to their root's buffer
        root = view_root(g, t.name)
        if root != t.name:
            buffers[t.name] = buffers[root]
    return MemoryPlan(arena, buffers, ranges, constants)
