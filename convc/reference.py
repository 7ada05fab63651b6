"""Run a Graph with the numpy reference of every op: the oracle for kernels and passes."""
from __future__ import annotations

import numpy as np

from convc.ir import Graph
from convc.ops import op_def


def run_reference(g: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Evaluate ``g`` on ``feeds``; returns the graph outputs (or every tensor with ``keep_all``)."""
    values: dict[str, np.ndarray] = {t.name: t.data for t in g.tensors() if t.data is not None}
    values.update({k: np.asarray(v) for k, v in feeds.items()})
    for op in g.ops():
        outs = op_def(op.kind).reference(op.attrs, *[values[t] for t in op.inputs])
        for name, v in zip(op.outputs, outs):
            values[name] = v
    if keep_all:
        return values
    return {name: values[name] for name in g.outputs}
