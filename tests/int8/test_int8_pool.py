"""Int8MaxPool and Int8GlobalAveragePool: the integer kernels against numpy (exact), and the pass that places
Int8MaxPool between a DequantizeLinear and a QuantizeLinear of equal parameters (the QDQ nets of
test_int8_conv.py and test_qoperator.py run Int8GlobalAveragePool against onnxruntime)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_int8_conv import _run, ort_run

import convc
import convc.codegen.kernels  # noqa: F401  (registers the emitters)
from convc.driver import load_graph
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.layout import CHANNELS_LAST
from convc.ops.pool import PoolAttrs
from convc.ops.quant import Int8GlobalPoolAttrs, int8_global_average_pool_reference, int8_max_pool_reference
from convc.passes.pipeline import pipeline

# (x NHWC, kernel, stride, pads (top, left, bottom, right), dilation, ceil_mode, signed, threads)
GRID = [
    ((16, 13, 11, 37), 3, 2, (1, 1, 1, 1), 1, False, False, 2),   # ResNet's pool; 32 channels + a remainder of 5
    ((16, 32, 32, 64), 2, 2, (0, 0, 0, 0), 1, False, True, 1),    # int8, whole vectors only
    ((3, 17, 15, 3), 3, 1, (1, 0, 2, 1), 2, False, False, 2),     # few channels (no vector), uneven pads, dilation
    ((2, 14, 9, 40), 3, 2, (0, 0, 1, 1), 1, True, True, 2),       # ceil_mode: windows cut by the end
]


@pytest.mark.parametrize("x_shape,k,stride,pads,dilation,ceil,signed,threads", GRID)
def test_int8_max_pool_is_exact(x_shape, k, stride, pads, dilation, ceil, signed, threads, rng):
    t = np.int8 if signed else np.uint8
    info = np.iinfo(t)
    x = rng.integers(info.min, info.max + 1, x_shape).astype(t)
    a = PoolAttrs((k, k), (stride, stride), pads, (dilation, dilation), ceil_mode=ceil, layout=CHANNELS_LAST)
    g = Graph("int8_max_pool")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g.add_op(OpKind.INT8_MAX_POOL, a, ["x"], ["y"])
    g.outputs = ["y"]
    expected = int8_max_pool_reference(a, x)[0]
    got = _run(convc.compile(g, threads=threads, cache=False), {"x": x})
    assert got.dtype == t and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def _qdq_pool(pool_scale: float) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv (8 -> 16) -> Q -> DQ -> MaxPool 3x3/2 -> Q (scale ``pool_scale``) -> DQ -> Conv."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(v, k) for k, v in {
        "s0": np.float32(0.03), "s1": np.float32(0.05), "sp": np.float32(pool_scale), "z": np.uint8(128),
        "w1": rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32),
        "w2": rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32)}.items()]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s0", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s0", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["c1", "s1", "z"], ["c1q"]),
             helper.make_node("DequantizeLinear", ["c1q", "s1", "z"], ["c1d"]),
             helper.make_node("MaxPool", ["c1d"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["p", "sp", "z"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "sp", "z"], ["pd"]),
             helper.make_node("Conv", ["pd", "w2"], ["y"])]
    g = helper.make_graph(nodes, "qdq_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 21, 19])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 11, 10])], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("pool_scale,integer", [(0.05, True), (0.06, False)])
def test_max_pool_between_equal_quantization_runs_on_integers(pool_scale, integer):
    """Equal parameters: Int8MaxPool, and the model computes what onnxruntime's reference lowering does (the
    float convs around it are the same in both); another output scale: the float MaxPool stays, with a note."""
    model = _qdq_pool(pool_scale)
    plan = pipeline(load_graph(model, batch=2))
    kinds = [op.kind for op in plan.order]
    assert (OpKind.INT8_MAX_POOL in kinds, OpKind.MAX_POOL in kinds) == (integer, not integer)
    if not integer:
        assert any(name == "pool" and "quantization differ" in why for name, why in plan.graph.metadata["pass_notes"])
        return
    x = np.random.default_rng(4).normal(size=(16, 8, 21, 19)).astype(np.float32)
    got = _run(convc.compile(model, batch=16, threads=2, cache=False), {"x": x})
    np.testing.assert_allclose(got, ort_run(model, x, optimized=False), rtol=1e-5, atol=1e-5)


# (x NHWC, signed, threads)
GLOBAL_GRID = [((16, 13, 11, 37), False, 2), ((32, 7, 7, 512), True, 1), ((3, 1, 5, 3), False, 2)]


@pytest.mark.parametrize("x_shape,signed,threads", GLOBAL_GRID)
def test_int8_global_average_pool_is_exact(x_shape, signed, threads, rng):
    t = np.int8 if signed else np.uint8
    info = np.iinfo(t)
    # a center per image and channel, so the means spread over the range
    center = rng.integers(info.min, info.max + 1, (x_shape[0], 1, 1, x_shape[3]))
    x = np.clip(center + rng.integers(-40, 41, x_shape), info.min, info.max).astype(t)
    count = x_shape[1] * x_shape[2]
    # a y_scale a little below x_scale: the means spread over more steps than the inputs, some saturate
    a = Int8GlobalPoolAttrs(-7 if signed else 131, float(np.float32(1 / (0.6 * count))), -2 if signed else 120,
                            "int8" if signed else "uint8")
    g = Graph("int8_global_average_pool")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g.add_op(OpKind.INT8_GLOBAL_AVERAGE_POOL, a, ["x"], ["y"])
    g.outputs = ["y"]
    expected = int8_global_average_pool_reference(a, x)[0]
    # the reference is the mean's requantization: within one rounding of the float64 arithmetic
    mean = (x.astype(np.float64) - a.x_zero_point).mean(axis=(1, 2), keepdims=True) / 0.6 + a.y_zero_point
    assert np.abs(expected - np.clip(np.rint(mean), info.min, info.max)).max() <= 1
    assert len(np.unique(expected)) > min(40, expected.size // 2)  # spread, not saturated
    got = _run(convc.compile(g, threads=threads, cache=False), {"x": x})
    assert got.dtype == t and got.shape == (x_shape[0], 1, 1, x_shape[3])
    np.testing.assert_array_equal(got, expected)
