"""Softmax/LogSoftmax's vector forms at real sizes: rows of a classifier (lanes along the axis, odd
lengths) and per-pixel class scores of a segmentation net (lanes across pixels, odd widths), batch 16,
1 and 2 threads, against a float64 reference and onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, run_onnxruntime
from onnx import TensorProto, helper

import convc

CASES = [((16, 1000), 1), ((16, 1003), 1), ((16, 5), 1), ((16, 21, 33, 35), 1), ((2, 7, 9, 5), 1),
         ((16, 3, 31), 1), ((4, 10, 13), 2)]


def reference(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    x = x.astype(np.float64)
    z = x - x.max(axis=axis, keepdims=True)
    s = np.exp(z).sum(axis=axis, keepdims=True)
    return (z - np.log(s) if log else np.exp(z) / s).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("op_type", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", CASES, ids=[f"{s}-axis{a}".replace(" ", "") for s, a in CASES])
def test_against_float64_and_onnxruntime(shape, axis, op_type, threads):
    x = (np.random.default_rng(threads).standard_normal(shape) * 5).astype(np.float32)
    x.reshape(-1)[:3] = [80.0, -80.0, 0.0]
    graph = helper.make_graph([helper.make_node(op_type, ["x"], ["y"], axis=axis)], "softmax",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    got = convc.compile(model, threads=threads, cache=False).run({"x": x})["y"]
    assert_close(got, reference(x, axis, op_type == "LogSoftmax"), 1e-5, "vs float64")
    assert_close(got, run_onnxruntime(model, {"x": x}), 1e-5, "vs onnxruntime")


def test_a_nan_makes_its_row_nan_and_no_other():
    x = np.random.default_rng(0).standard_normal((4, 37)).astype(np.float32)
    x[1, 20] = np.nan
    graph = helper.make_graph([helper.make_node("Softmax", ["x"], ["y"], axis=1)], "softmax",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 37])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    y = convc.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), cache=False).run(
        {"x": x})["y"]
    assert np.isnan(y[1]).all() and np.isfinite(np.delete(y, 1, axis=0)).all()
