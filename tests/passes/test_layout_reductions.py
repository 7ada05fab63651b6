"""Reductions and attention maps stay channels last: a ReduceMean/ReduceMax over channels (CBAM's spatial
attention) or over H and W that keeps the rank runs on the conv's channels-last twin with its axes renumbered,
and an (N, 1, H, W) attention map multiplies the features channels last; the layout changes only at the model's
edges. Checked on the graph (the pass alone) and end to end against onnxruntime at batch 16, 29x23."""
from __future__ import annotations

import numpy as np
import pytest
from convc.passes.layout import to_channels_last
from pass_helpers import add_input, check_pass, conv_attrs, weight

import convc
from convc.ir import Graph
from convc.ops import NoAttrs, OpKind
from convc.ops.reduce import ReduceAttrs

N, H, W = 16, 29, 23


def conv(g: Graph, rng, x: str, cin: int, cout: int, name: str, k: int = 3) -> str:
    w = g.add_constant(f"{name}.w", weight(rng, cout, cin, k, k)).name
    return g.add_op(OpKind.CONV, conv_attrs(k, pad=k // 2), [x, w], name=name).outputs[0]


def transposes(g: Graph) -> list[str]:
    return [op.name for op in g.ops() if op.kind is OpKind.TRANSPOSE]


@pytest.mark.parametrize("kind,axes,shape", [
    (OpKind.REDUCE_MAX, (1,), (2, 1, 9, 7)),     # over channels: the last axis channels last
    (OpKind.REDUCE_SUM, (2, 3), (2, 6, 1, 1)),   # over H and W
    (OpKind.REDUCE_MIN, (1, 3), (2, 1, 9, 1)),   # over channels and W
])
def test_a_reduction_keeping_the_rank_runs_channels_last(rng, kind, axes, shape):
    g = Graph("reduce")
    x = add_input(g, "x", (2, 3, 9, 7))
    y = conv(g, rng, x, 3, 6, "c1")
    r = g.add_op(kind, ReduceAttrs(axes, shape), [y], name="reduce").outputs[0]
    g.add_op(OpKind.MUL, NoAttrs(), [y, r], ["out"], name="scale")  # broadcast back over what was reduced
    g.outputs = ["out"]
    out = check_pass(g, to_channels_last, rng)
    assert transposes(out) == ["x_to_nhwc", "out_to_nchw"]
    perm = (0, 2, 3, 1)
    assert out.op("reduce").attrs == ReduceAttrs(tuple(sorted(perm.index(a) for a in axes)),
                                                 tuple(shape[p] for p in perm))


def test_a_reduction_dropping_axes_reads_channels_first(rng):
    """Without keepdims the result has no channels-last form: the reduction reads the channels-first tensor."""
    g = Graph("reduce_drop")
    x = add_input(g, "x", (2, 3, 9, 7))
    y = conv(g, rng, x, 3, 6, "c1")
    g.add_op(OpKind.REDUCE_SUM, ReduceAttrs((2, 3), (2, 6)), [y], ["out"], name="reduce")
    g.outputs = ["out"]
    out = check_pass(g, to_channels_last, rng)
    assert out.op("reduce").attrs.axes == (2, 3) and out.tensor(out.op("reduce").inputs[0]).shape == (2, 6, 9, 7)


def cbam_block():
    """CBAM: channel attention (SE with mean and max), then spatial attention: the mean and the max over
    channels, concatenated, a 7x7 conv to one map, sigmoid, times the features."""
    from test_pattern_zoo import Builder
    b, c = Builder(5), 24
    x = b.op("Relu", [b.conv("x", 8, c, 3)])
    s = b.op("Add", [b.conv(b.op("Relu", [b.conv(b.op("ReduceMean", [x], axes=[2, 3], keepdims=1), c, 6, 1)]), 6, c, 1),
                     b.conv(b.op("Relu", [b.conv(b.op("ReduceMax", [x], axes=[2, 3], keepdims=1), c, 6, 1)]), 6, c, 1)])
    x = b.op("Mul", [x, b.op("Sigmoid", [s])])
    avg = b.op("ReduceMean", [x], axes=[1], keepdims=1)
    mx = b.op("ReduceMax", [x], axes=[1], keepdims=1)
    a = b.op("Sigmoid", [b.conv(b.op("Concat", [avg, mx], axis=1), 2, 1, 7)])
    return b.model([N, 8, H, W], b.conv(b.op("Mul", [x, a]), c, 16, 1))


@pytest.fixture(scope="module")
def cbam():
    import onnxruntime
    m = cbam_block()
    x = np.random.default_rng(0).standard_normal((N, 8, H, W)).astype(np.float32)
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    return m, x, want[0]


@pytest.mark.parametrize("threads", [1, 2])
def test_cbam_runs_channels_last_and_matches_onnxruntime(cbam, threads):
    m, x, want = cbam
    compiled = convc.compile(m, threads=threads, cache=False)
    (got,) = compiled.run({"x": x}).values()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    ops = compiled.graph.ops()
    assert [op.kind for op in ops].count(OpKind.TRANSPOSE) == 2, [(op.kind.value, op.name) for op in ops]
    reductions = [op for op in ops if op.kind in (OpKind.REDUCE_SUM, OpKind.REDUCE_MAX)]
    assert {op.attrs.axes for op in reductions} == {(1, 2), (3,)}  # channels last: H, W = 1, 2; C = 3


def se_linear_block():
    """timm's squeeze-and-excitation with Linear layers: x.mean((2, 3)) -> Linear -> ReLU -> Linear -> sigmoid
    -> view (N, C, 1, 1) -> x * s."""
    from test_pattern_zoo import Builder
    b, c = Builder(6), 24
    x = b.op("Relu", [b.conv("x", 8, c, 3)])
    s = b.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    s = b.op("Relu", [b.op("Gemm", [s, b.weight(6, c), b.weight(6, scale=0.1)], transB=1)])
    s = b.op("Sigmoid", [b.op("Gemm", [s, b.weight(c, 6), b.weight(c, scale=0.1)], transB=1)])
    s = b.op("Reshape", [s, b.const(np.array([N, c, 1, 1], np.int64))])
    return b.model([N, 8, H, W], b.conv(b.op("Mul", [x, s]), c, 16, 1))


def pooled_output():
    """A feature extractor whose output is the pooled (N, C, 1, 1) itself."""
    from test_pattern_zoo import Builder
    b = Builder(7)
    return b.model([N, 8, H, W], b.op("GlobalAveragePool", [b.op("Relu", [b.conv("x", 8, 24, 3)])]))


@pytest.mark.parametrize("build", [se_linear_block, pooled_output])
def test_pooled_tensors_change_layout_as_views(build):
    """(N, C, 1, 1) and (N, 1, 1, C) are the same bytes: the SE scale computed by Linear layers reaches the
    channels-last Mul through a Reshape, and the pooled output leaves channels last through one; the features
    are transposed only at the model's edges."""
    import onnxruntime
    m = build()
    x = np.random.default_rng(1).standard_normal((N, 8, H, W)).astype(np.float32)
    want = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    compiled = convc.compile(m, threads=2, cache=False)
    (got,) = compiled.run({"x": x}).values()
    np.testing.assert_allclose(got, want[0], rtol=1e-4, atol=1e-5 * float(np.abs(want[0]).max()))
    big = [op.name for op in compiled.graph.ops() if op.kind is OpKind.TRANSPOSE]
    assert big[0] == "x_to_nhwc" and len(big) == (2 if build is se_linear_block else 1), big  # in (and out)
    assert any(op.kind is OpKind.RESHAPE and op.name.endswith("_to_nchw") for op in compiled.graph.ops())
