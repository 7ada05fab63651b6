"""A static check of a memory plan: no two tensors that are live at the same time share bytes,
and every in-place write is legal.

Legal sharing is what the planner means to do: an elementwise op writing its output over an input
that dies at that op (same size, both in the arena), and a training update writing a parameter or
optimizer state over its own input after every other reader of it. Anything else is a planner bug
that would make a kernel read bytes another tensor has overwritten.

``pipeline`` and ``build_training`` run this check when ``CONVC_CHECK_ARENA`` is set (the same
switch as the run-time arena check, codegen/arena_check.py); the tests run it on every plan the
differential harness compiles.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from convc.passes.memory import IN_PLACE, MemoryPlan, live_ranges, view_root

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
    ranges = sorted(live_ranges(g, order), key=lambda r: (r.first, r.name))
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
