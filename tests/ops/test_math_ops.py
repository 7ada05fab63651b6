"""Neg, Abs, Exp, Log, Sqrt and Reciprocal: compiled against onnxruntime at batch 16 with odd widths (vector
remainders), 1 and 2 threads, over each function's whole float32 domain (NaN where ONNX's is NaN, inf where
it overflows or divides by zero), and as the ONNX decompositions that use them."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import convc

OPS = ["Neg", "Abs", "Exp", "Log", "Sqrt", "Reciprocal"]


def model(nodes, shape, opset=13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime
    return onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def values(shape, seed=0) -> np.ndarray:
    x = (np.random.default_rng(seed).standard_normal(shape) * 3).astype(np.float32)
    x.reshape(-1)[:12] = [0.0, -0.0, 1e-30, -1e-30, 1e-42, 80.0, -80.0, 100.0, -3e38, 3e38, np.inf, -np.inf]
    return x


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("op", OPS)
def test_against_onnxruntime(op, threads):
    shape = (16, 3, 29, 31)
    m = model([helper.make_node(op, ["x"], ["y"])], shape)
    x = values(shape)
    want = ort(m, x)
    got = convc.compile(m, threads=threads).run({"x": x})["y"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    finite = np.isfinite(want)
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    np.testing.assert_allclose(got[finite], want[finite], rtol=3e-7 if op in ("Neg", "Abs", "Sqrt", "Reciprocal")
                               else 2e-6, atol=1e-37)


def test_decompositions_onnx_writes_with_them():
    """Softsign's decomposition x / (1 + |x|) and an RMS norm x * 1/sqrt(mean(x^2) + eps) with Exp, Log."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    eps = helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-6])
    nodes = [helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Add", ["a", "one"], ["d"]),
             helper.make_node("Div", ["x", "d"], ["s"]),
             helper.make_node("Mul", ["s", "s"], ["q"]), helper.make_node("ReduceMean", ["q"], ["m"], axes=[1]),
             helper.make_node("Add", ["m", "eps"], ["v"]), helper.make_node("Sqrt", ["v"], ["r"]),
             helper.make_node("Reciprocal", ["r"], ["i"]), helper.make_node("Mul", ["s", "i"], ["n"]),
             helper.make_node("Exp", ["n"], ["e"]), helper.make_node("Log", ["e"], ["l"]),
             helper.make_node("Neg", ["l"], ["y"])]
    m = model(nodes, (16, 24, 13, 17))
    m.graph.initializer.extend([one, eps])
    x = values((16, 24, 13, 17), seed=1)[..., :]
    x = np.nan_to_num(x, posinf=5.0, neginf=-5.0).clip(-5, 5)
    want = ort(m, x)
    got = convc.compile(m, threads=2).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
