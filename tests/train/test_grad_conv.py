"""Conv gradients (dX, dW, dB): 1-D and 2-D, strides, asymmetric pads, dilations, groups, depthwise."""
from __future__ import annotations

import numpy as np
import pytest

from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from train.grad_helpers import check_gradient


def conv_case(rng, x_shape, m, kernel, strides=None, pads=None, dilations=None, group=1, bias=True):
    r = len(kernel)
    attrs = ConvAttrs(kernel, strides or (1,) * r, pads or (0,) * (2 * r), dilations or (1,) * r, group)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((m, x_shape[1] // group) + kernel).astype(np.float32)
    inputs = [x, w] + ([rng.standard_normal(m).astype(np.float32)] if bias else [])
    check_gradient(OpKind.CONV, attrs, inputs, wrt=range(len(inputs)), rng=rng)


@pytest.mark.parametrize("kernel,strides,pads,dilations", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    ((3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
    ((3, 2), (2, 1), (0, 1, 2, 0), (1, 1)),    # asymmetric pads, uneven stride
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),    # dilation
    ((5, 5), (3, 3), (0, 0, 0, 0), (1, 1)),    # stride that skips input rows
    ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),    # the direct 1x1 path
    ((1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
])
def test_conv2d(rng, kernel, strides, pads, dilations):
    conv_case(rng, (2, 3, 7, 6), 4, kernel, strides, pads, dilations)


@pytest.mark.parametrize("group,c,m", [(2, 4, 6), (3, 3, 3), (4, 4, 8)])  # (3, 3, 3): depthwise
def test_conv2d_groups(rng, group, c, m):
    conv_case(rng, (2, c, 6, 5), m, (3, 3), (1, 1), (1, 1, 1, 1), group=group)


@pytest.mark.parametrize("kernel,stride,pads,dilation", [((3,), 1, (1, 1), 1), ((4,), 2, (2, 0), 1),
                                                         ((3,), 1, (0, 0), 2)])
def test_conv1d(rng, kernel, stride, pads, dilation):
    conv_case(rng, (3, 2, 11), 5, kernel, (stride,), pads, (dilation,))


def test_conv_without_bias(rng):
    conv_case(rng, (2, 2, 5, 5), 3, (3, 3), pads=(1, 1, 1, 1), bias=False)


def conv_transpose_case(rng, x_shape, m, kernel, strides=None, pads=None, dilations=None, group=1,
                        output_padding=(), bias=True):
    from convc.ops.conv_transpose import ConvTransposeAttrs
    r = len(kernel)
    attrs = ConvTransposeAttrs(kernel, strides or (1,) * r, pads or (0,) * (2 * r), dilations or (1,) * r, group,
                               output_padding)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((x_shape[1], m // group) + kernel).astype(np.float32)
    inputs = [x, w] + ([rng.standard_normal(m).astype(np.float32)] if bias else [])
    check_gradient(OpKind.CONV_TRANSPOSE, attrs, inputs, wrt=range(len(inputs)), rng=rng)


@pytest.mark.parametrize("kernel,strides,pads,dilations,output_padding", [
    ((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), ()),
    ((4, 4), (2, 2), (1, 1, 1, 1), (1, 1), ()),          # the usual 2x upsampling
    ((3, 3), (2, 2), (1, 0, 1, 0), (1, 1), (1, 1)),      # output_padding, asymmetric pads
    ((3, 2), (2, 3), (0, 0, 0, 0), (2, 1), ()),          # dilation, uneven strides
    ((3, 3), (2, 2), (-1, 0, 0, -1), (1, 1), ()),        # negative pads: outputs no tap reaches
])
def test_conv_transpose2d(rng, kernel, strides, pads, dilations, output_padding):
    conv_transpose_case(rng, (2, 3, 4, 5), 4, kernel, strides, pads, dilations, output_padding=output_padding)


def test_conv_transpose_groups_and_1d(rng):
    conv_transpose_case(rng, (2, 4, 4, 4), 6, (3, 3), (2, 2), (1, 1, 1, 1), group=2)
    conv_transpose_case(rng, (2, 3, 7), 2, (4,), (2,), (1, 1))
