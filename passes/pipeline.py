"""The compiler's pass pipeline: one readable list from imported graph to executable plan."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from convc.ir import Graph, Op
from convc.passes.dce import eliminate_dead_code
from convc.passes.memory import MemoryPlan, plan_memory


@dataclass
class Plan:
    """What the codegen consumes: the optimized graph, its execution order and its memory plan."""
    graph: Graph
    order: list[Op]
    memory: MemoryPlan


# (name, pass); each pass takes and returns a Graph and leaves it valid
PIPELINE: list[tuple[str, Callable[[Graph], Graph]]] = [
    ("dead-code elimination", eliminate_dead_code),
]


def pipeline(graph: Graph, verify: bool = False, progress: Callable[[str], None] | None = None) -> Plan:
    """Run every pass on a copy of ``graph``, then schedule and plan memory."""
    g = graph.copy()
    for name, run in PIPELINE:
        if progress:
            progress(name)
        g = run(g)
        if verify:
            g.verify()
    order = g.ops()
    return Plan(g, order, plan_memory(g, order))
