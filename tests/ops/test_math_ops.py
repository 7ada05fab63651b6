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


@pytest.mark.parametrize("exponent", [1.0, 2.0, 3.0, 0.5, -1.0, -0.5, -2.0])
def test_pow_with_a_constant_exponent(exponent):
    shape = (16, 5, 13, 11)
    e = helper.make_tensor("e", TensorProto.FLOAT, [], [exponent])
    m = model([helper.make_node("Pow", ["x", "e"], ["y"])], shape)
    m.graph.initializer.append(e)
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    if exponent in (0.5, -0.5):
        x = np.abs(x) + 0.01
    want = ort(m, x)
    got = convc.compile(m, threads=2).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("exponent", ["run time", 1.7, "array", "int"])
def test_pow_in_general(exponent):
    """Exponents that are not small constants: libm's powf, negative bases to integer powers real."""
    shape = (16, 3, 13, 11)
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape).astype(np.float32)
    feeds = {"x": x}
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    inits = []
    if exponent == "run time":
        feeds["e"] = rng.integers(-3, 4, (3, 1, 1)).astype(np.float32)
        inputs.append(helper.make_tensor_value_info("e", TensorProto.FLOAT, (3, 1, 1)))
    elif exponent == "array":
        inits.append(helper.make_tensor("e", TensorProto.FLOAT, [11], np.linspace(-2, 2, 11)))
    elif exponent == "int":
        inits.append(helper.make_tensor("e", TensorProto.INT64, [], [5]))
    else:
        inits.append(helper.make_tensor("e", TensorProto.FLOAT, [], [exponent]))
    graph = helper.make_graph([helper.make_node("Pow", ["x", "e"], ["y"])], "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    import onnxruntime
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = convc.compile(m, threads=2).run(feeds)["y"]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=2e-6, atol=1e-30)


def test_pow_folding():
    # integer shape arithmetic folds at import, negative exponents included (4**-1 is 0 in int64)
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Pow", ["s", "two"], ["sq"]),
             helper.make_node("Pow", ["s", "minus"], ["inv"]), helper.make_node("Add", ["sq", "inv"], ["t"]),
             helper.make_node("Reshape", ["z", "t"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, (4, 9)),
                                           helper.make_tensor_value_info("z", TensorProto.FLOAT, (1296,))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("two", TensorProto.INT64, [], [2]),
                               helper.make_tensor("minus", TensorProto.INT64, [], [-1])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    z = np.arange(1296, dtype=np.float32)
    got = convc.compile(m).run({"x": np.zeros((4, 9), np.float32), "z": z})["y"]
    assert got.shape == (16, 81) == ort_shape(m, z)


def ort_shape(m: onnx.ModelProto, z: np.ndarray) -> tuple[int, ...]:
    import onnxruntime
    sess = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": np.zeros((4, 9), np.float32), "z": z})[0].shape
