"""Every op convc compiles forward has a gradient rule or a documented reason why not; the rules of the
reductions, Div/Pow/Max/Min/PRelu, LayerNorm, frozen BatchNorm, LogSoftmax, Slice, Resize and LpPool
against finite differences (and their compiled kernels against the references), at the sizes users
train: batch 16, odd spatial sizes that leave vector remainders."""
from __future__ import annotations

import numpy as np
import pytest
from convc.passes.autodiff import GRADIENTS, NOT_DIFFERENTIABLE

from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise_grad import SliceAttrs
from convc.ops.norm import BatchNormAttrs, LayerNormAttrs, LrnAttrs
from convc.ops.pool import LpPoolAttrs
from convc.ops.reduce import ReduceAttrs
from convc.ops.resize import ResizeAttrs
from convc.ops.shape import StridedSliceAttrs
from convc.ops.softmax import SoftmaxAttrs
from convc.reference import run_reference
from train.grad_helpers import check_gradient, grad_graph


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_every_op_has_a_gradient_or_a_reason():
    silent = sorted(k.value for k in OpKind if k not in GRADIENTS and k not in NOT_DIFFERENTIABLE)
    assert not silent, f"ops with neither a gradient rule nor a reason in NOT_DIFFERENTIABLE: {silent}"
    both = sorted(k.value for k in GRADIENTS if k in NOT_DIFFERENTIABLE)
    assert not both, f"ops with a gradient rule that NOT_DIFFERENTIABLE also lists: {both}"
    short = sorted(k.value for k, why in NOT_DIFFERENTIABLE.items() if len(why) < 30)
    assert not short, f"reasons too short to explain anything: {short}"


# --- reductions ---------------------------------------------------------------------------------------
X4 = (16, 5, 9, 7)  # batch 16, odd spatial sizes


@pytest.mark.parametrize("kind", [OpKind.REDUCE_SUM, OpKind.REDUCE_MAX, OpKind.REDUCE_MIN])
@pytest.mark.parametrize("axes,shape", [((2, 3), (16, 5, 1, 1)),   # SE block's mean over H, W (keepdims)
                                        ((1,), (16, 9, 7)),          # over channels, dropped
                                        ((0, 1, 2, 3), ())])         # everything
def test_reduce(rng, kind, axes, shape):
    check_gradient(kind, ReduceAttrs(axes, shape), [f32(rng, *X4)], rng=rng)


def test_reduce_prod(rng):
    """Groups of 21 elements; some with one zero, some with two (a ReduceProd after a ReLU). Every element
    is checked against finite differences (the product is multilinear: exact at the zeros too)."""
    x = rng.uniform(0.5, 1.5, (16, 3, 5, 7)) * rng.choice([-1, 1], (16, 3, 5, 7))
    x[0, 1, 2, 3] = 0.0                          # one zero in group (0, :, 2, :)
    x[1, 0, 4, 0] = x[1, 2, 4, 6] = 0.0          # two in group (1, :, 4, :)
    got = check_gradient(OpKind.REDUCE_PROD, ReduceAttrs((1, 3), (16, 1, 5, 1)), [x.astype(np.float32)], rng=rng,
                         samples=x.size)
    grad = next(iter(got.values()))
    assert np.isfinite(grad).all() and not grad[1, :, 4, :].any() and grad[0, 1, 2, 3] != 0.0


@pytest.mark.parametrize("kind,expected", [(OpKind.REDUCE_MAX, [0.0, 0.5, 0.5, 0.0]),
                                           (OpKind.REDUCE_MIN, [0.5, 0.0, 0.0, 0.5])])
def test_reduce_max_min_split_ties_evenly(kind, expected):
    """torch.amax's rule: dY shared evenly by the elements equal to the result."""
    g, names = grad_graph(kind, ReduceAttrs((1,), (1,)), [np.array([[1.0, 3.0, 3.0, 1.0]], np.float32)], (0,))
    out = run_reference(g, {names[0]: np.array([[1.0, 3.0, 3.0, 1.0]]), "dy": np.array([1.0])})
    np.testing.assert_array_equal(out[g.outputs[0]], [expected])


# --- broadcasting arithmetic ------------------------------------------------------------------------------
def test_div(rng):
    b = rng.uniform(0.5, 2.0, (5, 1, 1)).astype(np.float32) * rng.choice([-1, 1], (5, 1, 1))
    check_gradient(OpKind.DIV, NoAttrs(), [f32(rng, *X4), b.astype(np.float32)], wrt=(0, 1), rng=rng)


def test_pow(rng):
    a = rng.uniform(0.5, 2.0, X4).astype(np.float32)
    b = rng.uniform(-1.5, 2.5, (1, 5, 1, 7)).astype(np.float32)
    check_gradient(OpKind.POW, NoAttrs(), [a, b], wrt=(0, 1), rng=rng)


@pytest.mark.parametrize("kind", [OpKind.MAX, OpKind.MIN])
def test_max_min(rng, kind):
    check_gradient(kind, NoAttrs(), [f32(rng, *X4), f32(rng, 5, 1, 7), f32(rng, 1)], wrt=(0, 1, 2), rng=rng)


def test_prelu(rng):
    x = f32(rng, *X4)
    x[np.abs(x) < 1e-3] = 0.5  # finite differences must not straddle the kink at 0
    check_gradient(OpKind.PRELU, NoAttrs(), [x, rng.uniform(0.05, 0.5, (5, 1, 1)).astype(np.float32)],
                   wrt=(0, 1), rng=rng)


# --- normalization and softmax ------------------------------------------------------------------------
@pytest.mark.parametrize("shape,axis,bias", [((16, 9, 9, 24), 3, True),   # ConvNeXt's LayerNorm over channels
                                             ((16, 7, 33), 1, True),      # InstanceNorm's form
                                             ((16, 4, 90), 2, False)])    # GroupNorm's form, no bias
def test_layer_norm(rng, shape, axis, bias):
    row = shape[axis:]
    inputs = [f32(rng, *shape, scale=2.0) + 0.5, f32(rng, *row) + 1.0] + ([f32(rng, *row)] if bias else [])
    check_gradient(OpKind.LAYER_NORM, LayerNormAttrs(axis=axis, epsilon=1e-5), inputs,
                   wrt=tuple(range(len(inputs))), rng=rng)


def test_frozen_batch_norm(rng):
    c = 5
    inputs = [f32(rng, *X4), f32(rng, c) + 1.0, f32(rng, c), f32(rng, c),
              rng.uniform(0.5, 2.0, c).astype(np.float32)]
    check_gradient(OpKind.BATCH_NORM, BatchNormAttrs(1e-5), inputs, wrt=(0, 1, 2), rng=rng)


@pytest.mark.parametrize("attrs", [LrnAttrs(5, 1e-2, 0.75, 1.0), LrnAttrs(4, 0.5, 0.5, 2.0)])  # odd, even window
def test_lrn(rng, attrs):
    check_gradient(OpKind.LRN, attrs, [f32(rng, 16, 7, 5, 9)], rng=rng)


@pytest.mark.parametrize("axis", [1, 3])
def test_log_softmax(rng, axis):
    check_gradient(OpKind.LOG_SOFTMAX, SoftmaxAttrs(axis), [f32(rng, *X4)], rng=rng)


# --- data movement ---------------------------------------------------------------------------------------
def test_slice(rng):
    """The TCN's Chomp1d: x[:, :, :-pad]."""
    check_gradient(OpKind.SLICE, SliceAttrs(2, 0, 30), [f32(rng, 16, 6, 33)], rng=rng)


@pytest.mark.parametrize("attrs", [
    StridedSliceAttrs((0, 2, 1, 0), (1, 1, 1, 1), (16, 3, 6, 7)),      # unit steps, several axes: one Pad
    StridedSliceAttrs((0, 0, 0, 1), (1, 1, 2, 2), (16, 5, 5, 3)),      # space-to-depth's strided reads
    StridedSliceAttrs((0, 4, 8, 0), (1, -1, -1, 1), (16, 5, 9, 7)),    # flips
])
def test_strided_slice(rng, attrs):
    check_gradient(OpKind.STRIDED_SLICE, attrs, [f32(rng, *X4)], rng=rng)


@pytest.mark.parametrize("attrs", [
    ResizeAttrs((16, 3, 18, 14), (1.0, 1.0, 2.0, 2.0)),                                       # nearest x2 (UNet, YOLO)
    ResizeAttrs((16, 3, 18, 14), (1.0, 1.0, 2.0, 2.0), "linear", "align_corners"),
    ResizeAttrs((16, 3, 13, 10), (1.0, 1.0, 13 / 9, 10 / 7), "linear", "pytorch_half_pixel"),  # odd sizes
    ResizeAttrs((16, 3, 5, 4), (1.0, 1.0, 5 / 9, 4 / 7), "cubic", "half_pixel", antialias=True),  # downsampling
    ResizeAttrs((16, 3, 6, 6), (1.0, 1.0, 6 / 9, 6 / 7), "linear", "tf_crop_and_resize",
                roi=(0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3)),                                       # extrapolated edges
])
def test_resize(rng, attrs):
    check_gradient(OpKind.RESIZE, attrs, [f32(rng, 16, 3, 9, 7)], rng=rng, samples=30)


# --- pooling ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [2, 3])
def test_lp_pool(rng, p):
    attrs = LpPoolAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), p=p)
    check_gradient(OpKind.LP_POOL, attrs, [f32(rng, *X4)], rng=rng)
