"""ConvTranspose: 1-D, 2-D and 3-D, strides, pads (negative too), output_padding, dilations, groups, bias,
constant weights (packed GEMM) and weights fed at run time (plain loops)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check_op

import convc
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv_transpose import ConvTransposeAttrs


def run_conv_transpose(rng: np.random.Generator, x_shape: tuple[int, ...], m: int, kernel: tuple[int, ...],
                       strides=None, pads=None, dilations=None, group: int = 1, output_padding=(),
                       bias: bool = True, const: frozenset[int] = frozenset({1, 2})) -> np.ndarray:
    r = len(kernel)
    attrs = ConvTransposeAttrs(kernel, strides or (1,) * r, pads or (0,) * (2 * r), dilations or (1,) * r, group,
                               output_padding)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((x_shape[1], m // group) + kernel).astype(np.float32)
    inputs = [x, w] + ([rng.standard_normal(m).astype(np.float32)] if bias else [])
    return check_op(OpKind.CONV_TRANSPOSE, attrs, inputs, const=const)


@pytest.mark.parametrize("kernel", [(1, 1), (2, 2), (3, 3), (4, 4), (3, 2)])
@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv_transpose_2d_kernel_stride(rng, kernel, stride):
    run_conv_transpose(rng, (1, 3, 5, 6), 4, kernel, strides=(stride, stride))


@pytest.mark.parametrize("pads,output_padding", [
    ((1, 1, 1, 1), ()), ((1, 1, 1, 1), (1, 1)), ((0, 1, 2, 0), (1, 0)), ((2, 0, 0, 1), ()),
    ((0, 0, -1, -1), ()),  # an output_shape larger than the natural size: bias-only positions at the end
    ((-1, 0, 0, 0), ()),
], ids=["sym", "sym-outpad", "asym-outpad", "asym", "neg-end", "neg-begin"])
def test_conv_transpose_2d_pads(rng, pads, output_padding):
    run_conv_transpose(rng, (2, 3, 5, 6), 4, (3, 3), strides=(2, 2), pads=pads, output_padding=output_padding)


@pytest.mark.parametrize("dilations", [(2, 2), (1, 3)])
def test_conv_transpose_2d_dilations(rng, dilations):
    run_conv_transpose(rng, (1, 2, 5, 6), 3, (3, 2), strides=(2, 1), pads=(1, 0, 0, 1), dilations=dilations)


@pytest.mark.parametrize("group,c,m", [(2, 4, 6), (4, 4, 4), (3, 6, 9)], ids=["g2", "depthwise", "g3"])
@pytest.mark.parametrize("const", [frozenset({1, 2}), frozenset()], ids=["w-const", "w-input"])
def test_conv_transpose_groups(rng, group, c, m, const):
    run_conv_transpose(rng, (2, c, 5, 4), m, (3, 3), strides=(2, 2), pads=(1, 0, 0, 1), group=group, const=const)


@pytest.mark.parametrize("const", [frozenset({1, 2}), frozenset(), frozenset({1})], ids=["w-b-const", "inputs",
                                                                                         "w-const"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_conv_transpose_weights_and_bias(rng, const, bias):
    run_conv_transpose(rng, (3, 4, 4, 4), 5, (4, 4), strides=(2, 2), pads=(1, 1, 1, 1), bias=bias,
                       const=const if bias else frozenset(const) - {2})


@pytest.mark.parametrize("kernel,stride,pads,output_padding", [
    ((3,), (1,), (0, 0), ()), ((3,), (2,), (1, 0), (1,)), ((4,), (2,), (1, 1), ()), ((5,), (3,), (2, 2), (2,)),
])
def test_conv_transpose_1d(rng, kernel, stride, pads, output_padding):
    run_conv_transpose(rng, (2, 3, 7), 5, kernel, strides=stride, pads=pads, output_padding=output_padding)


def test_conv_transpose_3d(rng):
    run_conv_transpose(rng, (1, 2, 3, 4, 3), 3, (2, 3, 2), strides=(2, 1, 2), pads=(0, 1, 0, 1, 0, 1))


def test_dcgan_shapes(rng):
    """The DCGAN generator's first layers: 1x1 noise to 4x4 (k4, s1), then 4x4 to 8x8 (k4, s2, p1)."""
    y = run_conv_transpose(rng, (2, 16, 1, 1), 32, (4, 4))
    assert y.shape == (2, 32, 4, 4)
    y = run_conv_transpose(rng, (2, 32, 4, 4), 8, (4, 4), strides=(2, 2), pads=(1, 1, 1, 1))
    assert y.shape == (2, 8, 8, 8)


def test_conv_transpose_is_the_adjoint_of_conv(rng):
    """<conv(x), y> == <x, conv_transpose(y)> with the same weights, strides, pads and dilations."""
    from convc.ops.conv import ConvAttrs
    x = rng.standard_normal((1, 3, 9, 8)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 2)).astype(np.float32)
    conv = ConvAttrs((3, 2), (2, 1), (1, 0, 1, 1), (1, 2))
    g = Graph("conv")
    g.add_tensor("x", x.shape, np.float32, TensorKind.INPUT)
    g.add_constant("w", w)
    g.add_op(OpKind.CONV, conv, ["x", "w"], ["y"])
    g.outputs = ["y"]
    y = convc.compile(g).run({"x": x})["y"]
    # the transpose of this conv maps y's shape back onto x's: output_padding makes up the rows stride 2 drops
    t = ConvTransposeAttrs((3, 2), (2, 1), (1, 0, 1, 1), (1, 2), 1, (0, 0))
    extra = tuple(x.shape[2 + i] - (y.shape[2 + i] - 1) * t.strides[i] - (t.kernel_shape[i] - 1) * t.dilations[i]
                  - 1 + t.pads[i] + t.pads[2 + i] for i in range(2))
    t = ConvTransposeAttrs(t.kernel_shape, t.strides, t.pads, t.dilations, 1, extra)
    v = rng.standard_normal(y.shape).astype(np.float32)
    g2 = Graph("conv_transpose")
    g2.add_tensor("v", v.shape, np.float32, TensorKind.INPUT)
    g2.add_constant("w", w)
    g2.add_op(OpKind.CONV_TRANSPOSE, t, ["v", "w"], ["u"])
    g2.outputs = ["u"]
    u = convc.compile(g2).run({"v": v})["u"]
    assert u.shape == x.shape
    np.testing.assert_allclose(np.vdot(y.astype(np.float64), v), np.vdot(x.astype(np.float64), u), rtol=1e-4)
