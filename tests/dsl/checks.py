"""One checker for DSL tests: trace, compile with convc, export to ONNX, run onnxruntime, compare.

``check_model`` compiles a convc.nn model through the same path users take
(``convc.compile(model, input_shape=...)``), exports it with ``model.to_onnx`` and runs the file
on onnxruntime, then checks shape and dtype before comparing the numbers (1e-5, relative where
|expected| >= 1, absolute below). It also compares with convc's numpy reference of the traced
graph and, when given, with an independent numpy computation of the layer.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from helpers import assert_close

import convc
from convc import nn

TOL = 1e-5


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def op_counts(model: nn.Module, input_shape: Sequence[int]) -> Counter:
    """How many ops of each kind the traced graph holds."""
    return Counter(op.kind for op in model.to_graph(input_shape).ops())


def check_model(model: nn.Module, x: np.ndarray, *, onnx_ops: Sequence[str] | None = None,
                numpy_ref: Callable[[np.ndarray], np.ndarray] | None = None, tol: float = TOL,
                other_batch: int | None = 2) -> np.ndarray:
    """Compile ``model`` for ``x.shape`` and compare with onnxruntime on the exported file, with the
    numpy reference of the traced graph and with ``numpy_ref(x)`` when given. ``onnx_ops`` are the
    exported node types, in order. ``other_batch`` also runs both at that batch size (the exported
    batch dimension is symbolic; convc compiles the new size on first use). Returns convc's output."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    compiled = convc.compile(model, input_shape=x.shape)
    got = compiled(x)

    exported = model.to_onnx(None, x.shape)
    if onnx_ops is not None:
        assert [n.op_type for n in exported.graph.node] == list(onnx_ops)
    assert_close(got, run_onnxruntime(exported, x), tol, "convc vs onnxruntime")
    assert_close(got, model(x), tol, "convc vs numpy reference")
    if numpy_ref is not None:
        expected = np.asarray(numpy_ref(x.astype(np.float64))).astype(np.float32)
        assert_close(got, expected, tol, "convc vs independent numpy")

    if other_batch is not None and other_batch != x.shape[0]:
        rng = np.random.default_rng(other_batch)
        xb = rng.standard_normal((other_batch,) + x.shape[1:]).astype(np.float32)
        assert_close(compiled(xb), run_onnxruntime(exported, xb), tol, f"batch {other_batch}: convc vs onnxruntime")
    return got
