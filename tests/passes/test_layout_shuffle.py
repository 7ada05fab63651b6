"""ShuffleNet V2 stays channels last: the channel split (Split, or a pair of Slices), the branch convs, the Concat
and the channel shuffle (Reshape (N, g, C/g, H, W) -> Transpose (0, 2, 1, 3, 4) -> Reshape, or the Gather the
importer turns into that) run on channels-last tensors, so the layout changes only at the model's input and
output; a shuffle read by a plain conv is folded into its weights. Built with onnx.helper as torchvision exports
it (no torch), checked on the optimized graph and against onnxruntime at batch 16 with odd sizes, 1 and 2
threads."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from test_pattern_zoo import Builder

import convc
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind
from convc.passes.pipeline import pipeline

N = 16
LAYOUT_CHANGES = {(0, 2, 3, 1), (0, 3, 1, 2)}


def conv(b: Builder, x: str, c_in: int, c_out: int, k: int, stride: int = 1, group: int = 1, relu: bool = False) -> str:
    y = b.op("Conv", [x, b.weight(c_out, c_in // group, k, k), b.weight(c_out, scale=0.1)], kernel_shape=[k, k],
             pads=[k // 2] * 4, strides=[stride, stride], group=group)
    return b.op("Relu", [y]) if relu else y


def split(b: Builder, x: str, sizes: list[int], cut: str) -> list[str]:
    """torch's x.chunk(2, dim=1) as exported: one Split (opset 13+) or a Slice per part (older exports)."""
    if cut == "split":
        return b.op("Split", [x, b.const(np.array(sizes, np.int64))], n_out=len(sizes), axis=1)
    starts = np.cumsum([0] + sizes)
    return [b.op("Slice", [x, b.const(np.array([lo], np.int64)), b.const(np.array([hi], np.int64)),
                           b.const(np.array([1], np.int64))]) for lo, hi in zip(starts[:-1], starts[1:])]


def shuffle(b: Builder, x: str, shape: tuple[int, int, int, int], groups: int, gather: bool) -> str:
    """torchvision's channel_shuffle (view, transpose, view), or the same permutation as one Gather."""
    n, c, h, w = shape
    if gather:
        order = np.arange(c).reshape(groups, c // groups).T.reshape(-1)
        return b.op("Gather", [x, b.const(order.astype(np.int64))], axis=1)
    y = b.op("Reshape", [x, b.const(np.array([n, groups, c // groups, h, w], np.int64))])
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [y, b.const(np.array([n, -1, h, w], np.int64))])


def unit(b: Builder, x: str, shape, sizes: list[int], groups: int = 2, cut: str = "split", gather: bool = False) -> str:
    """A stride-1 InvertedResidual: split, 1x1 -> depthwise 3x3 -> 1x1 on the last part, Concat, shuffle."""
    parts = split(b, x, sizes, cut)
    c = sizes[-1]
    r = conv(b, parts[-1], c, c, 1, relu=True)
    r = conv(b, r, c, c, 3, group=c)
    r = conv(b, r, c, c, 1, relu=True)
    return shuffle(b, b.op("Concat", parts[:-1] + [r], axis=1), shape, groups, gather)


def shufflenet(h: int, w: int, cut: str = "split", gather: bool = False, batch: int = N) -> onnx.ModelProto:
    """Stem (3x3 stride 2, max pool), a stride-2 unit (both branches), two stride-1 units, 1x1 conv, mean, Linear:
    torchvision's shufflenet_v2 with narrow stages."""
    b, c, size = Builder(15), 24, (h, w)
    x = conv(b, "x", 3, c, 3, stride=2, relu=True)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for _ in range(2):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    left = conv(b, conv(b, x, c, c, 3, stride=2, group=c), c, c, 1, relu=True)
    right = conv(b, conv(b, conv(b, x, c, c, 1, relu=True), c, c, 3, stride=2, group=c), c, c, 1, relu=True)
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    x = shuffle(b, b.op("Concat", [left, right], axis=1), (batch, 2 * c, h, w), 2, gather)
    for _ in range(2):
        x = unit(b, x, (batch, 2 * c, h, w), [c, c], cut=cut, gather=gather)
    x = b.op("ReduceMean", [conv(b, x, 2 * c, 64, 1, relu=True)], axes=[2, 3], keepdims=0)
    y = b.op("Gemm", [x, b.weight(10, 64), b.weight(10, scale=0.1)], transB=1)
    return b.model([batch, 3, *size], y)


HW = (57, 45)  # odd: 29x23 after the stem, 15x12 after the pool, 8x6 in the units


def three_group_net() -> onnx.ModelProto:
    """Unequal Split parts (10 + 14 channels, each through a conv), a shuffle of 3 groups read by a Split and by
    a plain 1x1 conv (which folds it), another read by a 3x3 conv (folded too), a Split along H (not the channel
    axis) of a channels-last tensor."""
    b, (h, w) = Builder(16), (29, 23)
    x = conv(b, "x", 5, 24, 3, relu=True)
    p, q = split(b, x, [10, 14], "split")
    y = b.op("Concat", [conv(b, p, 10, 10, 1, relu=True), conv(b, q, 14, 14, 3, group=14)], axis=1)
    y = shuffle(b, y, (N, 24, h, w), 3, gather=False)
    a = unit(b, y, (N, 24, h, w), [9, 15], groups=3)
    top, bottom = b.op("Split", [conv(b, a, 24, 12, 3), b.const(np.array([13, 16], np.int64))], n_out=2, axis=2)
    z = b.op("Concat", [bottom, top], axis=2)
    return b.model([N, 5, h, w], b.op("Add", [z, conv(b, y, 24, 12, 1)]))


def optimized(m: onnx.ModelProto):
    return pipeline(import_onnx(m)).graph


def transposes(g) -> list[tuple[int, ...]]:
    return [op.attrs.perm for op in g.ops() if op.kind is OpKind.TRANSPOSE]


@pytest.mark.parametrize("cut,gather", [("split", False), ("slice", False), ("split", True)],
                         ids=["split", "slices", "gather-shuffle"])
def test_shufflenet_changes_layout_only_at_its_edges(cut, gather):
    g = optimized(shufflenet(*HW, cut=cut, gather=gather))
    perms = transposes(g)
    # the input to NHWC; the output needs none (the mean's (N, C) result is a view of (N, 1, 1, C))
    assert [p for p in perms if p in LAYOUT_CHANGES] == [(0, 2, 3, 1)]
    # of the three shuffles, the two that feed a channel split are each one permutation of the last axis,
    # (N, H, W, 2, C/2) -> (N, H, W, C/2, 2); the last one, read by the 1x1 conv, is folded into its weights
    assert perms.count((0, 1, 2, 4, 3)) == 2 and len(perms) == 3
    cuts = [op for op in g.ops() if op.kind in (OpKind.SPLIT, OpKind.SLICE)]
    assert len(cuts) == (2 if cut == "split" else 4) and all(op.attrs.axis == 3 for op in cuts)


def test_a_shuffle_read_by_a_plain_conv_is_folded_into_its_weights():
    """The zoo's unit ends with a shuffle read by a 1x1 conv: no copy is left for it."""
    from test_pattern_zoo import shufflenet_unit
    assert transposes(optimized(shufflenet_unit())) == [(0, 2, 3, 1), (0, 3, 1, 2)]


@pytest.fixture(scope="module", params=[("split", False), ("slice", True)], ids=["split", "slices-gather"])
def shufflenet_case(request):
    m = shufflenet(*HW, cut=request.param[0], gather=request.param[1])
    x = np.random.default_rng(0).standard_normal((N, 3, *HW)).astype(np.float32)
    return m, x, run_onnxruntime(m, x)


def run_onnxruntime(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime
    session = onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def check(m: onnx.ModelProto, x: np.ndarray, want: np.ndarray, threads: int) -> None:
    (got,) = convc.compile(m, threads=threads).run({"x": x}).values()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_shufflenet_matches_onnxruntime(shufflenet_case, threads):
    check(*shufflenet_case, threads)


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_unequal_splits_and_a_three_group_shuffle_match_onnxruntime(threads):
    m = three_group_net()
    g = optimized(m)
    perms = transposes(g)
    # the input's and the output's layout changes, and the one 3-group shuffle a Split reads (the conv that
    # also reads it, and the one that reads the unit's shuffle, take it in their weights); the Split along H
    # cuts the channels-last tensor along its axis 1
    assert perms == [(0, 2, 3, 1), (0, 1, 2, 4, 3), (0, 3, 1, 2)]
    assert [op.attrs.axis for op in g.ops() if op.kind is OpKind.SPLIT] == [3, 3, 1]
    x = np.random.default_rng(1).standard_normal((N, 5, 29, 23)).astype(np.float32)
    check(m, x, run_onnxruntime(m, x), threads)


def test_resnest_split_attention_stays_channels_last():
    """The radix view (N, r C, H, W) -> (N, r, C, H, W) of a conv's output is the view (N, H, W, r, C) of its
    channels-last twin, the sums over r and the product with the attention weights run on it: the features
    change layout only at the model's input and output (the other transpose is the (N, 1, r, C) attention's
    own, 2 x 16 floats per image). The numbers are checked against onnxruntime in test_pattern_zoo.py."""
    from test_pattern_zoo import split_attention
    g = optimized(split_attention())
    assert transposes(g) == [(0, 2, 3, 1), (0, 2, 1, 3), (0, 3, 1, 2)]
    reduces = [op for op in g.ops() if op.kind is OpKind.REDUCE_SUM]
    assert [op.attrs.axes for op in reduces] == [(3,), (3,)]
    assert [g.tensor(op.inputs[0]).shape for op in reduces] == [(16, 29, 23, 2, 16)] * 2
