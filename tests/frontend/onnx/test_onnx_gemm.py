"""Gemm and MatMul import."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import check_model, count, make_model

from convc.errors import ModelImportError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (5,), (1, 5), (3, 5), (3, 1)])
def test_gemm(trans_a, trans_b, c_shape):
    rng = np.random.default_rng(2)
    a_shape = (4, 3) if trans_a else (3, 4)
    b = rng.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32)
    inits = {"B": b}
    inputs = ["A", "B"]
    if c_shape is not None:
        inits["C"] = rng.standard_normal(c_shape).astype(np.float32)
        inputs.append("C")
    node = helper.make_node("Gemm", inputs, ["Y"], name="gemm", alpha=0.5, beta=2.0, transA=trans_a, transB=trans_b)
    graph = check_model(make_model([node], {"A": a_shape}, ["Y"], inits, opset=13))
    attrs = graph.op("gemm").attrs
    assert (attrs.alpha, attrs.beta, attrs.trans_a, attrs.trans_b) == (0.5, 2.0, bool(trans_a), bool(trans_b))


@pytest.mark.parametrize("opset", [7, 9, 11, 13])
def test_gemm_opsets(opset):
    rng = np.random.default_rng(3)
    inits = {"B": rng.standard_normal((8, 6)).astype(np.float32), "C": rng.standard_normal(6).astype(np.float32)}
    node = helper.make_node("Gemm", ["A", "B", "C"], ["Y"])
    graph = check_model(make_model([node], {"A": ["N", 8]}, ["Y"], inits, opset=opset), batch=2)
    assert graph.tensor("Y").shape == (2, 6)


def test_gemm_mismatched_k_names_node():
    node = helper.make_node("Gemm", ["A", "B"], ["Y"], name="fc")
    model = make_model([node], {"A": [2, 3]}, ["Y"], {"B": np.zeros((4, 5), np.float32)})
    with pytest.raises(ModelImportError, match=r"node 'fc' \(Gemm.*disagree on K: 3 vs 4"):
        import_onnx(model)


@pytest.mark.parametrize("a_shape,b_shape", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (4, 5)), ((3, 4), (4,)),
                                             ((2, 1, 3, 4), (3, 4, 2))])
def test_matmul(a_shape, b_shape):
    b = np.random.default_rng(4).standard_normal(b_shape).astype(np.float32)
    node = helper.make_node("MatMul", ["A", "B"], ["Y"])
    graph = check_model(make_model([node], {"A": a_shape}, ["Y"], {"B": b}, opset=13))
    assert count(graph, OpKind.MATMUL) == 1
