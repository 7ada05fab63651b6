"""Constant folding: an op whose inputs are all constants runs once, at compile time, with its numpy
reference, and its outputs become constants. Dead-code elimination then drops what nothing reads."""
from __future__ import annotations

import numpy as np

from convc.errors import GraphError
from convc.ir import Graph, TensorKind
from convc.ops import op_def


def fold_constants(g: Graph) -> Graph:
    for op in g.ops():  # topological order: a folded output can make its consumer foldable
        if not op.inputs or not all(g.tensor(t).kind is TensorKind.CONSTANT for t in op.inputs):
            continue
        values = op_def(op.kind).reference(op.attrs, *[g.tensor(t).data for t in op.inputs])
        outputs = [g.tensor(t) for t in op.outputs]
        for t, v in zip(outputs, values):
            v = np.asarray(v)
            if v.shape != t.shape or v.dtype != t.dtype:
                raise GraphError(f"node {op.name!r} ({op.kind.value}): its numpy reference gives {v.shape} {v.dtype} "
                                 f"for output {t.name!r}, declared {t.shape} {t.dtype}")
        g.remove_op(op, remove_outputs=False)
        for t, v in zip(outputs, values):
            t.kind = TensorKind.CONSTANT
            t.data = np.ascontiguousarray(v)
    return g
