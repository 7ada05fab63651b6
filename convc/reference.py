"""Run a Graph with the numpy reference of every op: the oracle for kernels and passes."""
from __future__ import annotations

import numpy as np

from convc.ir import Graph
from convc.ops import op_def


def run_reference(g: Graph, feeds: dict[str, np.ndarray], keep_all: bool = False,
                  overrides: dict[str, list[tuple[tuple, float]]] | None = None) -> dict[str, np.ndarray]:
    """Evaluate ``g`` on ``feeds``; returns the graph outputs (or every tensor with ``keep_all``).
    ``overrides`` replaces single elements of op outputs as they are computed ({tensor: [(index,
    value)]}): the differential harness takes a ReLU's other branch with it."""
    values: dict[str, np.ndarray] = {t.name: t.data for t in g.tensors() if t.data is not None}
    values.update({k: np.asarray(v) for k, v in feeds.items()})
    for op in g.ops():
        outs = op_def(op.kind).reference(op.attrs, *[values[t] for t in op.inputs])
        for name, v in zip(op.outputs, outs):
            if overrides and name in overrides:
                v = np.array(v, copy=True)
                for index, value in overrides[name]:
                    v[index] = value
            values[name] = v
    if keep_all:
        return values
    return {name: values[name] for name in g.outputs}
