"""Dead-code elimination: drop ops whose outputs nobody reads, and unused constants."""
from __future__ import annotations

from convc.ir import Graph, TensorKind


def eliminate_dead_code(g: Graph) -> Graph:
    changed = True
    while changed:
        changed = False
        for op in reversed(g.ops()):
            if all(not g.consumers(t) and t not in g.outputs for t in op.outputs):
                g.remove_op(op)
                changed = True
    for t in list(g.tensors()):
        if t.kind is TensorKind.CONSTANT and not g.consumers(t.name) and t.name not in g.outputs:
            g.remove_tensor(t.name)
    return g
