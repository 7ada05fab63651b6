"""The compiler's pass pipeline: one readable list from imported graph to executable plan."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from convc.passes.bn_folding import fold_batch_norm
from convc.passes.constant_folding import fold_constants
from convc.passes.conv1d import windows_to_2d
from convc.passes.dce import eliminate_dead_code
from convc.passes.fusion import fuse_epilogues
from convc.passes.im2col import lower_im2col
from convc.passes.kernel_selection import select_kernels
from convc.passes.layout import to_channels_last
from convc.passes.memory import MemoryPlan, plan_memory
from convc.passes.memory_check import check_memory_plan, checking
from convc.passes.precision import bf16_operands

from convc.ir import Graph, Op


@dataclass
class Plan:
    """What the codegen consumes: the optimized graph, its execution order and its memory plan."""
    graph: Graph
    order: list[Op]
    memory: MemoryPlan


# (name, pass); each pass takes and returns a Graph and leaves it valid
PIPELINE: list[tuple[str, Callable[[Graph], Graph]]] = [
    ("constant folding", fold_constants),
    ("dead-code elimination", eliminate_dead_code),
    ("batch-norm folding", fold_batch_norm),
    ("epilogue fusion", fuse_epilogues),
    ("channels-last layout", to_channels_last),
    ("1-D windows as 2-D", windows_to_2d),
    ("im2col lowering", lower_im2col),
    ("dead-code elimination", eliminate_dead_code),
    ("kernel selection", select_kernels),
    ("bf16 operands (precision=\"bf16\" only)", bf16_operands),
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
    memory = plan_memory(g, order)
    if checking():
        check_memory_plan(g, order, memory)
    return Plan(g, order, memory)
