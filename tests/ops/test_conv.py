"""Conv: 1-D, 2-D and 3-D, kernel sizes, strides, pads, dilations, groups, bias, batch, direct 1x1 path."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check_op

from convc.ops import OpKind
from convc.ops.conv import ConvAttrs


def run_conv(rng: np.random.Generator, x_shape: tuple[int, ...], m: int, kernel: tuple[int, ...],
             strides: tuple[int, ...] | None = None, pads: tuple[int, ...] | None = None,
             dilations: tuple[int, ...] | None = None, group: int = 1, bias: bool = True,
             const: frozenset[int] = frozenset({1, 2})) -> None:
    r = len(kernel)
    attrs = ConvAttrs(kernel, strides or (1,) * r, pads or (0,) * (2 * r), dilations or (1,) * r, group)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((m, x_shape[1] // group) + kernel).astype(np.float32)
    inputs = [x, w] + ([rng.standard_normal(m).astype(np.float32)] if bias else [])
    check_op(OpKind.CONV, attrs, inputs, const=const)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (5, 5), (3, 5), (5, 2), (1, 3)])
def test_conv2d_kernel_stride(rng, kernel, stride):
    run_conv(rng, (1, 3, 7, 9), 4, kernel, strides=(stride, stride))


@pytest.mark.parametrize("strides", [(1, 1), (2, 3)])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (2, 2, 2, 2), (0, 1, 2, 0), (2, 0, 1, 3), (0, 0, 0, 1)],
                         ids=["sym1", "sym2", "asym0120", "asym2013", "end-only"])
def test_conv2d_pads(rng, pads, strides):
    run_conv(rng, (1, 2, 7, 9), 3, (3, 3), strides=strides, pads=pads)


@pytest.mark.parametrize("kernel", [(3, 3), (2, 3)])
@pytest.mark.parametrize("dilations,strides,pads", [
    ((2, 2), (1, 1), (0, 0, 0, 0)),
    ((2, 2), (1, 1), (2, 2, 2, 2)),
    ((2, 2), (2, 2), (0, 1, 2, 0)),
    ((1, 2), (1, 1), (1, 2, 1, 2)),
    ((2, 1), (3, 1), (1, 0, 2, 1)),
])
def test_conv2d_dilations(rng, kernel, dilations, strides, pads):
    run_conv(rng, (1, 2, 9, 11), 3, kernel, strides=strides, pads=pads, dilations=dilations)


@pytest.mark.parametrize("group,m", [(1, 4), (2, 4), (2, 6), (4, 4), (4, 8)],
                         ids=["g1", "g2", "g2-m6", "depthwise", "depthwise-x2"])
@pytest.mark.parametrize("strides,pads,bias", [((1, 1), (1, 1, 1, 1), True), ((1, 1), (1, 1, 1, 1), False),
                                               ((2, 2), (0, 1, 1, 0), True)], ids=["s1-bias", "s1-nobias", "s2-bias"])
def test_conv2d_groups(rng, group, m, bias, strides, pads):
    run_conv(rng, (2, 4, 7, 9), m, (3, 3), strides=strides, pads=pads, group=group, bias=bias)


@pytest.mark.parametrize("const", [frozenset({1, 2}), frozenset(), frozenset({1}), frozenset({2})],
                         ids=["w-b-const", "all-inputs", "w-const", "b-const"])
@pytest.mark.parametrize("batch", [1, 3])
def test_conv2d_batch_and_weight_inputs(rng, batch, const):
    run_conv(rng, (batch, 3, 7, 9), 5, (3, 3), strides=(2, 1), pads=(1, 1, 0, 1), const=const)


@pytest.mark.parametrize("batch,group,bias,const", [
    (1, 1, True, frozenset({1, 2})),
    (3, 1, False, frozenset()),
    (1, 2, False, frozenset({1})),
    (3, 2, True, frozenset({1, 2})),
    (3, 2, True, frozenset()),
    (1, 1, True, frozenset()),
])
def test_conv_1x1_direct(rng, batch, group, bias, const):
    """1x1, stride 1, no pads: the kernel reads the input in place, without im2col."""
    run_conv(rng, (batch, 4, 7, 9), 6, (1, 1), group=group, bias=bias, const=const)


@pytest.mark.parametrize("strides,pads,dilations", [
    ((2, 2), (0, 0, 0, 0), (1, 1)),
    ((1, 2), (0, 0, 0, 0), (1, 1)),
    ((1, 1), (1, 1, 1, 1), (1, 1)),  # padded 1x1 must take the im2col path (the border is bias only)
    ((1, 1), (0, 1, 0, 0), (2, 2)),
])
def test_conv_1x1_im2col(rng, strides, pads, dilations):
    run_conv(rng, (2, 4, 7, 9), 3, (1, 1), strides=strides, pads=pads, dilations=dilations)


@pytest.mark.parametrize("kernel,stride,pads,dilation", [
    (1, 1, (0, 0), 1),
    (1, 2, (0, 0), 1),
    (3, 1, (0, 0), 1),
    (3, 1, (1, 1), 1),
    (3, 2, (0, 2), 1),
    (3, 3, (2, 0), 1),
    (5, 1, (2, 2), 1),
    (5, 2, (1, 3), 1),
    (5, 3, (0, 0), 1),
    (3, 1, (2, 2), 2),
    (3, 2, (0, 1), 2),
    (2, 1, (1, 0), 2),
])
def test_conv1d(rng, kernel, stride, pads, dilation):
    run_conv(rng, (2, 3, 13), 4, (kernel,), strides=(stride,), pads=pads, dilations=(dilation,))


@pytest.mark.parametrize("group,m", [(2, 4), (4, 4)], ids=["g2", "depthwise"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv1d_groups(rng, group, m, bias):
    run_conv(rng, (3, 4, 11), m, (3,), strides=(2,), pads=(1, 0), group=group, bias=bias, const=frozenset())


@pytest.mark.parametrize("kernel,pads", [((1, 1), (0, 0, 0, 0)), ((3, 3), (1, 1, 1, 1))], ids=["1x1-direct", "3x3"])
def test_conv2d_more_pixels_than_a_column_block(rng, kernel, pads):
    """19 x 23 = 437 output pixels: the matrix-product loop runs a full 256-column block and a partial one."""
    run_conv(rng, (1, 3, 19, 23), 4, kernel, pads=pads)


@pytest.mark.parametrize("x_shape,m,kernel,strides,pads,dilations,group", [
    ((2, 3, 4, 5, 6), 4, (3, 3, 3), None, None, None, 1),
    ((2, 4, 5, 6, 7), 6, (3, 2, 3), (2, 1, 2), (1, 0, 1, 1, 1, 0), (1, 2, 1), 2),
    ((1, 4, 5, 5, 5), 4, (1, 1, 1), None, None, None, 4),
    ((1, 2, 3, 4, 5), 3, (2, 2, 2), (1, 2, 1), (1, 1, 1, 0, 0, 0), (2, 1, 1), 1),
], ids=["k3", "strided-dilated-groups", "depthwise-1x1", "asym-pads"])
@pytest.mark.parametrize("const", [frozenset({1, 2}), frozenset()], ids=["w-const", "w-input"])
def test_conv3d(rng, x_shape, m, kernel, strides, pads, dilations, group, const):
    """3-D convs run the direct kernel (codegen/kernels/conv3d.py)."""
    run_conv(rng, x_shape, m, kernel, strides=strides, pads=pads, dilations=dilations, group=group, const=const)
