"""A static check of a memory plan: no two tensors that are live at the same time share bytes,
and every in-place write is legal.

Legal sharing is what the planner means to do: an elementwise op writing its output over an input
that dies at that op (same size, both in the arena), a training update writing a parameter or
optimizer state over its own input after every other reader of it, and a Concat input placed in its
slice of the Concat's output (``MemoryPlan.placed``): there the check recomputes the slice from the
Concat's own layout, requires kernels that take the stride wherever the slice is strided, and
fails on any two tensors placed in one buffer whose elements meet while both are live unless one
is a slice of the other. Anything else is a planner bug that would make a kernel read bytes
another tensor has overwritten.

``pipeline`` and ``build_training`` run this check when ``CONVC_CHECK_ARENA`` is set (the same
switch as the run-time arena check, codegen/arena_check.py); the tests run it on every plan the
differential harness compiles.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from convc.passes.memory import IN_PLACE, Buffer, MemoryPlan, View, contiguous, live_ranges, reads_strided, sub_view, \
    view_root, writes_strided

from convc.errors import GraphError
from convc.ir import Graph, Op

ENV = "CONVC_CHECK_ARENA"


def checking() -> bool:
    """Whether CONVC_CHECK_ARENA asks for checked plans and checked builds."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def check_memory_plan(g: Graph, order: list[Op], mem: MemoryPlan,
                      update_targets: Callable[[Op], Mapping[str, str]] | None = None) -> None:
    """Raise GraphError listing every illegal overlap or in-place write of ``mem``."""
    problems: list[str] = []
    position = {op.name: i for i, op in enumerate(order)}
    ranges = sorted(live_ranges(g, order, mem.placed, mem.padded), key=lambda r: (r.first, r.name))
    where = {}
    for r in ranges:
        buf = mem.buffers.get(r.name)
        if buf is None or buf.kind != "arena":
            problems.append(f"arena tensor {r.name!r} has no arena offset ({buf})")
            continue
        where[r.name] = (buf.index, buf.index + r.nbytes)
    active: list = []
    for r in ranges:
        if r.name not in where:
            continue
        active = [q for q in active if q.last >= r.first]
        lo, hi = where[r.name]
        for q in active:
            qlo, qhi = where[q.name]
            if lo < qhi and qlo < hi and not _in_place(g, position, mem, q, r):
                problems.append(f"{r.name!r} (bytes {lo}-{hi}, live at ops {r.first}-{r.last}) overlaps "
                                f"{q.name!r} (bytes {qlo}-{qhi}, live at ops {q.first}-{q.last})")
        active.append(r)
    for out, inp in mem.in_place.items():
        op = g.producer(out)
        if op is None or op.kind not in IN_PLACE:
            problems.append(f"{out!r} takes the bytes of {inp!r} but its op is not elementwise")
    problems += _check_placements(g, order, mem)
    if update_targets is not None:
        for i, op in enumerate(order):
            for out, target in update_targets(op).items():
                if mem.buffers.get(out) != mem.buffers.get(target):
                    problems.append(f"update {op.name!r}: {out!r} is not written over {target!r}")
                late = [c.name for c in g.consumers(target) if position[c.name] > i]
                if late:
                    problems.append(f"update {op.name!r} overwrites {target!r} before {late} read it")
    if problems:
        raise GraphError(f"memory plan of {g.name!r}: {len(problems)} problem(s):\n  " + "\n  ".join(problems[:20]))


def _in_place(g: Graph, position: Mapping[str, int], mem: MemoryPlan, earlier, later) -> bool:
    """``later`` legally shares ``earlier``'s bytes: a chain of in-place writes links them, and at
    each link the input dies at the op that writes the output."""
    name = later.name
    while name in mem.in_place:
        taken = view_root(g, mem.in_place[name])
        op = g.producer(name)
        if op is None or op.kind not in IN_PLACE:
            return False
        if taken == earlier.name:
            return earlier.last == position[op.name]
        name = taken
    return False


def _check_placements(g: Graph, order: list[Op], mem: MemoryPlan) -> list[str]:
    """Every placed Concat input sits at its slice of the Concat's output, in the arena slot of
    that output's root, is written and read by kernels that take its stride, and meets no other
    placed tensor of the same buffer while both are live unless one is a slice of the other."""
    problems: list[str] = []
    ops = {op.name: op for op in order}
    position = {op.name: i for i, op in enumerate(order)}
    itemsize = 4
    for x, p in mem.placed.items():
        concat = ops.get(p.concat)
        if concat is None or x not in concat.inputs:
            problems.append(f"{x!r} is placed for {p.concat!r}, which does not read it")
            continue
        y = concat.outputs[0]
        ty = g.tensor(y)
        outer = mem.placed.get(y)
        vy = outer.view if outer is not None else mem.padded.get(y, contiguous(ty.size))
        if (outer.root if outer is not None else y) != p.root:
            problems.append(f"{x!r} is placed in {p.root!r}, but {p.concat!r} writes {y!r} in another buffer")
        k = concat.inputs.index(x)
        start = sum(g.tensor(t).shape[concat.attrs.axis] for t in concat.inputs[:k])
        want = sub_view(ty.shape, vy, concat.attrs.axis, start, g.tensor(x).shape[concat.attrs.axis])
        if want != p.view:
            problems.append(f"{x!r} is placed at {p.view}, but its slice of {y!r} is {want}")
        root_buf, buf = mem.buffers.get(p.root), mem.buffers.get(x)
        if root_buf is None or root_buf.kind != "arena" or buf != Buffer("arena", root_buf.index + p.view.offset * itemsize):
            problems.append(f"{x!r} is at {buf}, not at float {p.view.offset} of {p.root!r} ({root_buf})")
        elif (p.view.offset + p.view.extent) > mem.padded.get(p.root, contiguous(g.tensor(p.root).size)).extent:
            problems.append(f"{x!r} at {p.view} runs past the end of {p.root!r}")
        if x in mem.in_place or x in mem.in_place.values():
            problems.append(f"{x!r} is placed in {p.root!r} and also shares bytes in place")
        if not p.view.contiguous:
            producer = g.producer(x)
            if producer is None or not writes_strided(g, producer, x, p.view):
                problems.append(f"{x!r} is strided in {p.root!r} but its producer writes it contiguous")
            late = [c.name for c in g.consumers(x) if not reads_strided(c)]
            if late:
                problems.append(f"{x!r} is strided in {p.root!r} but {late} read it contiguous")
    for y, view in mem.padded.items():
        late = [c.name for c in g.consumers(y) if not reads_strided(c)]
        if y in mem.placed or late or view.rows * view.run != g.tensor(y).size:
            problems.append(f"{y!r} has padded rows {view} but is placed, or {late} read it contiguous")
    for c in mem.concat_aliases:
        op = ops.get(c)
        unplaced = [t for t in (op.inputs if op else ()) if mem.placed.get(t) is None or mem.placed[t].concat != c]
        if op is None or unplaced:
            problems.append(f"Concat {c!r} emits no code but {unplaced} are not written in place")

    # tensors sharing one buffer: their own lifetimes, and who is a slice of whom
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, op in enumerate(order):
        for t in op.outputs:
            first.setdefault(t, i)
        for t in op.inputs:
            last[t] = i
    parent = {x: ops[p.concat].outputs[0] for x, p in mem.placed.items() if p.concat in ops}

    def inside(a: str, b: str) -> bool:
        while a in parent:
            a = parent[a]
            if a == b:
                return True
        return False

    by_root: dict[str, list[str]] = {}
    for x, p in mem.placed.items():
        by_root.setdefault(p.root, []).append(x)
    for root, members in by_root.items():
        members = sorted(members, key=lambda t: first.get(t, 0))
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if first.get(b, 0) > last.get(a, first.get(a, 0)) or inside(a, b) or inside(b, a):
                    continue
                if slices_meet(mem.placed[a].view, mem.placed[b].view):
                    problems.append(f"{a!r} and {b!r} share elements of {root!r} while both are live "
                                    f"(ops {position.get(g.producer(a).name)} and {position.get(g.producer(b).name)})")
    return problems


def slices_meet(a: View, b: View) -> bool:
    """Whether two views of one buffer share an element (exact for the equal-stride rows that
    Concat slices are; views of different strides are compared by their extents)."""
    if a.contiguous and b.contiguous or a.stride != b.stride:
        return a.offset < b.offset + b.extent and b.offset < a.offset + a.extent
    s = a.stride
    rows_meet = a.offset // s <= (b.offset + b.extent - 1) // s and b.offset // s <= (a.offset + a.extent - 1) // s
    ca, cb = a.offset % s, b.offset % s
    return rows_meet and ca < cb + b.run and cb < ca + a.run
