"""One checker for gradient tests: the rule, the numpy references and the compiled kernels.

``check_gradient`` builds a graph holding one forward op, seeds the gradient of its first output
with a random tensor R (so the scalar being differentiated is sum(output * R)), and appends the
backward ops with ``passes.autodiff.backward``. Then:

1. the backward graph evaluated by the numpy references in float64 must match central finite
   differences of the forward reference (float64) on sampled elements of every input differentiated;
2. the backward graph compiled (float32, training emitter) must match the float64 references run on
   the same float32 inputs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from convc.driver import compile_training_graph as compile_graph
from convc.passes.autodiff import backward

from convc.ir import Graph, TensorKind
from convc.ops import OpKind, op_def
from convc.reference import run_reference

FD_EPS = 1e-6
FD_TOL = 1e-5      # float64 reference gradient vs finite differences
KERNEL_TOL = 2e-4  # float32 kernels vs float64 references, relative to the largest magnitude


def rel_error(actual: np.ndarray, expected: np.ndarray, floor: float = 1e-3) -> float:
    """max |a - e| / max(|e|, floor * max|e|, 1e-12): relative, with near-zero entries measured
    against the tensor's scale."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = np.maximum(np.abs(e), max(floor * np.abs(e).max(initial=0.0), 1e-12))
    return float((np.abs(a - e) / scale).max(initial=0.0))


def grad_graph(kind: OpKind, attrs: Any, inputs: Sequence[np.ndarray], wrt: Sequence[int]) -> tuple[Graph, list[str]]:
    g = Graph(f"grad_{kind.value}")
    names = []
    for i, x in enumerate(inputs):
        dtype = np.float32 if x.dtype.kind == "f" else x.dtype
        names.append(g.add_tensor(f"x{i}", x.shape, dtype, TensorKind.INPUT).name)
    op = g.add_op(kind, attrs, names, name="forward")
    y = g.tensor(op.outputs[0])
    g.add_tensor("dy", y.shape, np.float32, TensorKind.INPUT)
    grads = backward(g, {op.outputs[0]: "dy"}, [names[i] for i in wrt])
    g.outputs = [grads[names[i]] for i in wrt]
    g.verify()
    return g, names


def check_gradient(kind: OpKind, attrs: Any, inputs: Sequence[np.ndarray], wrt: Sequence[int] = (0,),
                   rng: np.random.Generator | None = None, samples: int = 12, compiled: bool = True,
                   kernel_tol: float = KERNEL_TOL) -> dict[str, np.ndarray]:
    """Check d sum(op(inputs)[0] * R) / d inputs[i] for i in ``wrt``; returns the float64 gradients."""
    rng = rng or np.random.default_rng(0)
    inputs = [np.asarray(x) for x in inputs]
    g, names = grad_graph(kind, attrs, inputs, wrt)
    x64 = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in inputs]
    y_shape = g.tensor("dy").shape
    r = rng.standard_normal(y_shape)
    feeds64 = dict(zip(names, x64)) | {"dy": r}
    ref = run_reference(g, feeds64)
    forward = op_def(kind).reference

    def objective(values: list[np.ndarray]) -> float:
        return float((forward(attrs, *values)[0].astype(np.float64) * r).sum())

    for i in wrt:
        grad = ref[g.outputs[list(wrt).index(i)]]
        assert grad.shape == inputs[i].shape, f"gradient of input {i} has shape {grad.shape}, expected {inputs[i].shape}"
        flat = x64[i].reshape(-1)
        picks = np.arange(flat.size) if flat.size <= samples else rng.choice(flat.size, samples, replace=False)
        fd = []
        for k in picks:
            old = flat[k]
            flat[k] = old + FD_EPS
            up = objective(x64)
            flat[k] = old - FD_EPS
            down = objective(x64)
            flat[k] = old
            fd.append((up - down) / (2 * FD_EPS))
        err = rel_error(grad.reshape(-1)[picks], np.array(fd))
        assert err < FD_TOL, f"{kind.value} d/d input {i}: reference gradient vs finite differences error {err:.2e}"

    if compiled:
        feeds32 = {n: (x.astype(np.float32) if x.dtype.kind == "f" else x) for n, x in zip(names, inputs)}
        feeds32["dy"] = r.astype(np.float32)
        got = compile_graph(g).run(feeds32)
        ref32 = run_reference(g, {n: (v.astype(np.float64) if v.dtype.kind == "f" else v) for n, v in feeds32.items()})
        for out in g.outputs:
            assert got[out].shape == g.tensor(out).shape and got[out].dtype == np.float32
            err = rel_error(got[out], ref32[out])
            assert err < kernel_tol, f"{kind.value}: compiled gradient {out!r} vs reference error {err:.2e}"
    return {names[i]: ref[g.outputs[k]] for k, i in enumerate(wrt)}
