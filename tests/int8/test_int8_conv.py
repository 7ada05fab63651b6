"""Int8Conv: the integer kernel against a numpy reference of the integer arithmetic (exact), the pass that
places it in QDQ models, and those models against onnxruntime."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from nets import mobilenet_like, quantize, resnet_like
from onnx import numpy_helper

import convc
import convc.codegen.kernels  # noqa: F401  (registers the emitters)
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.quant import Int8ConvAttrs, int8_accumulate, requantize
from convc.passes.pipeline import pipeline
from convc.codegen.kernels.int8_conv import fits_pmaddubsw


def int8_conv_graph(x_shape, m, k, stride, pad, dilation, group, signed, rng, weight_bits=8, extra_bottom_pad=1):
    """One Int8Conv with random integers and requantization parameters (the outputs spread over the range);
    ``weight_bits`` 7 gives weights in [-64, 63], which the vpmaddubsw kernel takes. The bottom pad is one more
    than ``pad`` unless ``extra_bottom_pad`` says otherwise."""
    n, h, w, c = x_shape
    xt = np.int8 if signed else np.uint8
    x = rng.integers(-128 if signed else 0, 128 if signed else 256, x_shape).astype(xt)
    half = 2 ** (weight_bits - 1)
    wt = rng.integers(-half, half, (m, c // group, k, k)).astype(np.int8)
    bias = rng.integers(-20000, 20000, m).astype(np.int32)
    zx = int(rng.integers(-30, 30) if signed else rng.integers(0, 256))
    spread = 100.0 / (128 * 128 * (c // group) * k * k) ** 0.5 / 8
    a = Int8ConvAttrs((k, k), (stride, stride), (pad, pad, pad + extra_bottom_pad, pad), (dilation, dilation), group, zx,
                      tuple(float(v) for v in rng.uniform(0.5, 2, m).astype(np.float32) * np.float32(spread)),
                      tuple(float(v) for v in rng.normal(0, 3, m).astype(np.float32)), 9, "uint8", 9, 250)
    g = Graph("int8_conv")
    g.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g.add_constant("w", wt)
    g.add_constant("b", bias)
    g.add_op(OpKind.INT8_CONV, a, ["x", "w", "b"], ["y"])
    g.outputs = ["y"]
    return g, a, x, wt, bias


def _run(model, feeds):
    out = model.run(feeds)
    return list(out.values())[0] if isinstance(out, dict) else out[0]


# (x NHWC, output channels, kernel, stride, pad (the bottom one more; -1: no padding at all), dilation, group,
#  signed x, threads, weight bits)
GRID = [
    ((16, 13, 11, 5), 19, 3, 1, 1, 1, 1, False, 2, 8),    # odd channels, partial blocks, 2288 pixels: an overlapping last tile
    ((16, 9, 7, 16), 32, 3, 2, 1, 1, 1, True, 1, 8),      # int8 activations, stride 2
    ((2, 17, 15, 23), 40, 1, 1, 0, 1, 1, False, 2, 8),    # 1x1 (510 pixels: whole tiles), odd channels
    ((3, 10, 7, 32), 40, 1, 1, -1, 1, 1, False, 2, 7),    # 1x1, no padding (pad -1), vpmaddubsw: read in place
    ((5, 9, 7, 12), 24, 3, 2, 1, 1, 1, True, 2, 7),       # vpmaddubsw on int8 activations (sign bit flipped)
    ((3, 12, 12, 8), 16, 3, 1, 2, 2, 1, False, 1, 8),     # dilation 2
    ((16, 14, 9, 13), 13, 3, 1, 1, 1, 13, False, 2, 8),   # depthwise, odd channels
    ((4, 11, 5, 24), 24, 3, 2, 1, 1, 24, True, 1, 8),     # depthwise, int8, stride 2
    ((1, 32, 32, 64), 64, 3, 1, 1, 1, 1, False, 2, 8),    # a ResNet-sized layer
    ((16, 13, 11, 7), 21, 3, 1, 1, 1, 1, False, 2, 7),    # vpmaddubsw: 7 channels (a partial quad)
    ((2, 16, 16, 64), 64, 3, 1, 1, 1, 1, False, 2, 7),    # vpmaddubsw at a ResNet layer's channels
    ((1, 2, 1, 16), 72, 3, 1, 1, 1, 1, False, 2, 8),      # 2 output pixels: fewer than one tile
]


@pytest.mark.parametrize("x_shape,m,k,stride,pad,dilation,group,signed,threads,bits", GRID)
def test_int8_conv_is_exact(x_shape, m, k, stride, pad, dilation, group, signed, threads, bits):
    rng = np.random.default_rng(sum(x_shape) + m)
    g, a, x, w, bias = int8_conv_graph(x_shape, m, k, stride, max(pad, 0), dilation, group, signed, rng, bits,
                                       int(pad >= 0))
    if group == 1:  # the kernel (vpmaddubsw or vpmaddwd) the weights select
        assert fits_pmaddubsw(w) == (bits == 7)
    acc = int8_accumulate(a, x, w, bias)
    expected = requantize(a, acc)
    assert len(np.unique(expected)) > 40  # not saturated everywhere: the epilogue is exercised
    got = _run(convc.compile(g, threads=threads, cache=False), {"x": x})
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name,signed", [("PMADDUBSW_SPLIT", False), ("PMADDUBSW_SPLIT", True), ("PMADDWD", True)])
def test_each_multiply_is_exact_at_full_range(monkeypatch, name, signed):
    """Weights at both ends of int8 side by side (127 + 127 and -128 + -128: a single vpmaddubsw saturates on
    them) through the split vpmaddubsw kernel (int8 activations: sign bit flipped) and the int16 vpmaddwd one."""
    from convc.codegen.kernels import int8_dense
    rng = np.random.default_rng(12)
    g, a, x, w, bias = int8_conv_graph((4, 9, 11, 21), 40, 3, 1, 1, 1, 1, signed, rng)
    w = g.tensor("w").data
    w[:, :4] = np.array([127, 127, -128, -128], np.int8)[None, :, None, None]
    x.reshape(-1)[::3] = -128 if signed else 255
    assert not fits_pmaddubsw(w)
    monkeypatch.setattr(int8_dense, "scheme", lambda *args: getattr(int8_dense, name))
    expected = requantize(a, int8_accumulate(a, x, w, bias))
    assert len(np.unique(expected)) > 40
    np.testing.assert_array_equal(_run(convc.compile(g, threads=2, cache=False), {"x": x}), expected)


# (x NHWC, output channels, kernel, stride, group, signed x, signed residual, conv first, threads)
RESIDUAL_GRID = [
    ((16, 13, 11, 5), 19, 3, 1, 1, False, False, True, 2),    # odd channels: a partial last block
    ((4, 9, 7, 16), 32, 1, 1, 1, False, True, False, 1),      # whole blocks, int8 residual, the conv second
    ((16, 14, 9, 13), 13, 3, 1, 13, True, False, False, 2),   # depthwise, odd channels
    ((2, 16, 16, 64), 64, 3, 2, 1, False, False, True, 2),    # vpmaddubsw (7-bit weights), stride 2
]


@pytest.mark.parametrize("x_shape,m,k,stride,group,signed,res_signed,conv_first,threads", RESIDUAL_GRID)
def test_int8_conv_with_residual_is_exact(x_shape, m, k, stride, group, signed, res_signed, conv_first, threads):
    """The residual add in the epilogue against the numpy reference of the same float32 arithmetic."""
    import dataclasses
    from convc.ops.quant import Int8Residual
    rng = np.random.default_rng(sum(x_shape) + m + 1)
    g, a, x, w, bias = int8_conv_graph(x_shape, m, k, stride, 1, 1, group, signed, rng, 7 if m == 64 else 8)
    out_shape = g.tensor("y").shape
    rt = np.int8 if res_signed else np.uint8
    r = rng.integers(np.iinfo(rt).min, np.iinfo(rt).max + 1, out_shape).astype(rt)
    f = np.float32
    ra, rb, za, zb, zc = f(0.7), f(0.45), f(a.y_zero_point), f(-5 if res_signed else 120), f(100)
    fixed = f(zc - f(f(ra * za) + f(rb * zb))) if conv_first else f(zc - f(f(rb * zb) + f(ra * za)))
    residual = Int8Residual(a.y_zero_point, 0, 255, int(zb), float(ra), float(rb), float(fixed), conv_first)
    a = dataclasses.replace(a, y_zero_point=int(zc), residual=residual)
    g2 = Graph("int8_conv_residual")
    g2.add_tensor("x", x.shape, x.dtype, TensorKind.INPUT)
    g2.add_tensor("r", r.shape, r.dtype, TensorKind.INPUT)
    g2.add_constant("w", w)
    g2.add_constant("b", bias)
    g2.add_op(OpKind.INT8_CONV, a, ["x", "w", "b", "r"], ["y"])
    g2.outputs = ["y"]
    expected = requantize(a, int8_accumulate(a, x, w, bias), r)
    assert len(np.unique(expected)) > 40
    got = _run(convc.compile(g2, threads=threads, cache=False), {"x": x, "r": r})
    np.testing.assert_array_equal(got, expected)


# --- the pass, on QDQ models from quantize_static -------------------------------------------------
@functools.cache
def qdq(kind: str, reduce_range: bool = False, signed: bool = False) -> onnx.ModelProto:
    from onnxruntime.quantization import QuantType
    build = {"resnet": resnet_like, "mobilenet": mobilenet_like}[kind]
    calibration = np.random.default_rng(5).normal(size=(8, 3, 32, 32)).astype(np.float32)
    return quantize(build(), calibration, reduce_range=reduce_range, activation=QuantType.QInt8 if signed else None)


def ort_run(model: onnx.ModelProto, x: np.ndarray, optimized: bool) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def logits_step(model: onnx.ModelProto) -> float:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    last = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    assert last.op_type == "DequantizeLinear"
    return float(inits[last.input[1]])


def test_pass_replaces_every_conv_of_a_qdq_resnet():
    """Every Conv of the QDQ net (3x3, strided, 1x1 projection) and the classifier Gemm (as a 1x1 conv on
    a view) run as Int8Conv but the 3-channel stem, which stays float32 with the reason noted; the residual
    Adds run in the epilogues, the pool on the integers; the recorded integers leave the graph."""
    from convc.driver import load_graph  # noqa: PLC0415
    plan = pipeline(load_graph(qdq("resnet"), batch=2))
    kinds = [op.kind for op in plan.order]
    assert kinds.count(OpKind.INT8_CONV) == 6 and kinds.count(OpKind.CONV) == 1 and OpKind.GEMM not in kinds
    assert any("3 input channels" in reason for _, reason in plan.graph.metadata["pass_notes"])
    # the residual Adds fold into the epilogue of the conv whose output they read; the pool stays float
    assert OpKind.ADD not in kinds and OpKind.GLOBAL_AVERAGE_POOL not in kinds and \
        OpKind.INT8_GLOBAL_AVERAGE_POOL in kinds
    assert sum(op.attrs.residual is not None for op in plan.order if op.kind is OpKind.INT8_CONV) == 2
    assert "quantized_constants" not in plan.graph.metadata
    # the int8 tensors between convs are uint8 and channels last
    convs = [op for op in plan.order if op.kind is OpKind.INT8_CONV]
    assert all(plan.graph.tensor(op.outputs[0]).dtype == np.uint8 for op in convs)


@pytest.mark.slow
@pytest.mark.parametrize("kind,batch,threads", [("resnet", 16, 2), ("mobilenet", 16, 1)])
def test_int8_net_against_onnxruntime(kind, batch, threads):
    """Full-range (8-bit) weights, as quantize_static writes by default: against onnxruntime's reference
    lowering (optimizations off), convc's integers are the same except where the float conv's rounding
    moves a value across a rounding boundary (one step there, then propagated): at most 2% of the logits
    differ, by at most 3 of their quantization steps (seen here: resnet 0, mobilenet one logit).
    7-bit weights (reduce_range, the weights onnxruntime's AVX2 vpmaddubsw kernels need to be exact)
    against onnxruntime's integer kernels (optimizations on): the same bound."""
    x = np.random.default_rng(11).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    for reduce_range, optimized in ((False, False), (True, True)):
        model = qdq(kind, reduce_range)
        got = _run(convc.compile(model, batch=batch, threads=threads, cache=False), {"x": x})
        expected = ort_run(model, x, optimized)
        err = np.abs(got - expected) / logits_step(model)
        assert np.mean(err > 0.5) <= 0.02 and err.max() <= 3, (reduce_range, err.max(), np.mean(err > 0.5))


def _hand_qdq(weight_zero_point: int) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(int8 w, per-channel scale, zero point)) -> Relu -> Q -> DQ, written by hand
    the way quantize_static writes it (a zero point of shape () next to a scale of shape (1,))."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(4)
    m, c = 12, 5
    inits = [numpy_helper.from_array(np.array([0.05], np.float32), "xs"),
             numpy_helper.from_array(np.array(120, np.uint8), "xz"),
             numpy_helper.from_array(rng.integers(-128, 128, (m, c, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(rng.uniform(0.002, 0.01, m).astype(np.float32), "ws"),
             numpy_helper.from_array(np.full(m, weight_zero_point, np.int8), "wz"),
             numpy_helper.from_array(rng.normal(0, 0.3, m).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array(0.04, np.float32), "ys"),
             numpy_helper.from_array(np.array(3, np.uint8), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Conv", ["xd", "w", "bias"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["out"])]
    g = helper.make_graph(nodes, "hand_qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, c, 29, 23])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("weight_zero_point,fused", [(0, True), (3, False)])
def test_fused_when_it_can_be_and_float_otherwise(weight_zero_point, fused):
    """Symmetric int8 weights (zero point 0) run as Int8Conv with a float bias and the ReLU as a clamp;
    a weight zero point stays on the float path, with the reason in the pass notes. Both equal
    onnxruntime's reference lowering (optimizations off) up to one step on at most 1% of outputs."""
    model = _hand_qdq(weight_zero_point)
    x = np.random.default_rng(6).normal(0, 2, (16, 5, 29, 23)).astype(np.float32)
    compiled = convc.compile(model, threads=2, cache=False)
    kinds = {op.kind for op in compiled.graph.ops()}
    assert (OpKind.INT8_CONV in kinds) is fused and (OpKind.CONV in kinds) is not fused
    notes = " ".join(reason for _, reason in compiled.graph.metadata.get("pass_notes", []))
    assert ("zero points 0" in notes) is not fused
    got = _run(compiled, {"x": x})
    expected = ort_run(model, x, optimized=False)
    err = np.abs(got - expected) / 0.04
    assert err.max() <= 1.001 and np.mean(err > 0.5) <= 0.01, (err.max(), np.mean(err > 0.5))
    assert len(np.unique(expected)) > 30


@pytest.mark.slow
def test_int8_activations_net():
    """S8S8 (int8 activations, quantize_static's QInt8): every conv but the RGB stem runs as Int8Conv on signed inputs
    (the widened vpmaddwd kernel) and the logits equal onnxruntime's reference lowering (seen: bit for bit)."""
    model = qdq("mobilenet", signed=True)
    x = np.random.default_rng(3).normal(size=(16, 3, 32, 32)).astype(np.float32)
    compiled = convc.compile(model, batch=16, threads=2, cache=False)
    kinds = [op.kind for op in compiled.graph.ops()]
    assert kinds.count(OpKind.INT8_CONV) == 7 and kinds.count(OpKind.CONV) == 1  # the RGB stem stays float32
    err = np.abs(_run(compiled, {"x": x}) - ort_run(model, x, optimized=False)) / logits_step(model)
    assert np.mean(err > 0.5) <= 0.02 and err.max() <= 3


@pytest.mark.parametrize("op_type", ["MatMul", "Gemm"])
def test_products_run_as_1x1_int8_conv(op_type):
    """x (N, K) -> Q -> DQ -> MatMul/Gemm (transB 0: W is (K, M), scales per column, a float bias for
    Gemm) -> Q -> DQ: one Int8Conv between Reshape views, equal to onnxruntime's reference lowering
    within one step."""
    from onnx import TensorProto, helper
    rng = np.random.default_rng(8)
    k, m = 37, 21
    inits = [numpy_helper.from_array(np.array(0.03, np.float32), "xs"),
             numpy_helper.from_array(np.array(128, np.uint8), "xz"),
             numpy_helper.from_array(rng.integers(-128, 128, (k, m)).astype(np.int8), "wq"),
             numpy_helper.from_array(rng.uniform(0.002, 0.01, m).astype(np.float32), "ws"),
             numpy_helper.from_array(np.zeros(m, np.int8), "wz"),
             numpy_helper.from_array(rng.normal(0, 0.3, m).astype(np.float32), "bias"),
             numpy_helper.from_array(np.array(0.02, np.float32), "ys"),
             numpy_helper.from_array(np.array(-3, np.int8), "yz")]
    product = helper.make_node(op_type, ["xd", "w"] + (["bias"] if op_type == "Gemm" else []), ["y"])
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1), product,
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["out"])]
    g = helper.make_graph(nodes, "product", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, k])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    x = rng.normal(0, 1.5, (16, k)).astype(np.float32)
    compiled = convc.compile(model, threads=1, cache=False)
    kinds = [op.kind for op in compiled.graph.ops()]
    assert OpKind.INT8_CONV in kinds and OpKind.MATMUL not in kinds and OpKind.GEMM not in kinds
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    expected = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    err = np.abs(_run(compiled, {"x": x}) - expected) / 0.02
    assert err.max() <= 1.001 and np.mean(err > 0.5) <= 0.01 and len(np.unique(expected)) > 30
