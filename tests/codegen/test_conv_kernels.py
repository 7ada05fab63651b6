"""The channels-first conv kernels the codegen chooses between: direct depthwise, 1x1 GEMM (B read in
place or repacked to unit stride), and im2col + GEMM, each with fused epilogues, against the numpy
reference (compiled without the channels-last layout pass; tests/codegen/test_implicit_gemm_conv.py
covers the channels-last kernels)."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.elementwise import LeakyReluAttrs
from convc.ops.epilogue import Epilogue
from convc.reference import run_reference

pytestmark = pytest.mark.usefixtures("channels_first_pipeline")

EPILOGUES = {
    "none": Epilogue(),
    "relu": Epilogue(False, OpKind.RELU),
    "residual+leaky": Epilogue(True, OpKind.LEAKY_RELU, LeakyReluAttrs(0.1)),
    "tanh": Epilogue(False, OpKind.TANH),
}


def run_conv(x_shape, m, attrs: ConvAttrs, bias: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = Graph("conv")
    g.add_tensor("x", x_shape, np.float32, TensorKind.INPUT)
    cg = x_shape[1] // attrs.group
    g.add_constant("w", rng.standard_normal((m, cg) + attrs.kernel_shape).astype(np.float32))
    inputs = ["x", "w"]
    if bias:
        inputs.append(g.add_constant("b", rng.standard_normal(m).astype(np.float32)).name)
    if attrs.epilogue.residual:
        out_shape = g.add_op(OpKind.CONV, ConvAttrs(attrs.kernel_shape, attrs.strides, attrs.pads, attrs.dilations,
                                                    attrs.group), ["x", "w"], ["probe"]).outputs[0]
        shape = g.tensor(out_shape).shape
        g.remove_op(g.op(g.producer("probe").name))
        g.add_tensor("r", shape, np.float32, TensorKind.INPUT)
        inputs.append("r")
    g.add_op(OpKind.CONV, attrs, inputs, ["y"])
    g.outputs = ["y"]
    feeds = {name: rng.standard_normal(g.tensor(name).shape).astype(np.float32) for name in g.inputs}
    got = convc.compile(g, threads=2).run(feeds)["y"]
    want = run_reference(g, feeds)["y"]
    assert got.shape == want.shape
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert err < 1e-4, err


def attrs2d(k, stride=1, pad=0, dilation=1, group=1, epi=Epilogue()):
    return ConvAttrs((k, k), (stride, stride), (pad,) * 4, (dilation, dilation), group, epi)


@pytest.mark.parametrize("epi", list(EPILOGUES))
@pytest.mark.parametrize("k,stride,pad,dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2),
                                                   (3, 2, 0, 1), (7, 3, 3, 1)])
def test_depthwise(k, stride, pad, dilation, epi):
    run_conv((2, 6, 13, 11), 6, attrs2d(k, stride, pad, dilation, group=6, epi=EPILOGUES[epi]), bias=True)


def test_depthwise_1d_causal_without_bias():
    a = ConvAttrs((3,), (1,), (4, 0), (2,), 5, Epilogue(False, OpKind.RELU))
    run_conv((1, 5, 20), 5, a, bias=False)


@pytest.mark.parametrize("epi", list(EPILOGUES))
@pytest.mark.parametrize("c,m,hw", [(8, 4, (5, 7)), (16, 48, (16, 16)), (24, 40, (9, 9)), (3, 70, (1, 33))])
def test_pointwise_gemm(c, m, hw, epi):
    # m > 2*MR repacks B panels to unit stride; 16x16 has the power-of-two width that needs it
    run_conv((2, c) + hw, m, attrs2d(1, epi=EPILOGUES[epi]), bias=True)


@pytest.mark.parametrize("epi", list(EPILOGUES))
@pytest.mark.parametrize("group", [1, 2])
def test_im2col_gemm(group, epi):
    run_conv((2, 4, 10, 9), 6, attrs2d(3, 2, 1, 1, group=group, epi=EPILOGUES[epi]), bias=False)


@pytest.mark.parametrize("epi", ["none", "residual+leaky", "tanh"])
@pytest.mark.parametrize("group", [1, 2])
def test_im2col_gathered_block_by_block(group, epi):
    # 42 output rows of 20 pixels: blocks of 8 rows (160 pixels, 5 panels of 32) and a last
    # block of 2 rows; the conv gathers each block itself, the full im2col matrix never exists
    from convc.ops.im2col import block_rows
    assert block_rows(42, 20) == 8
    run_conv((1, 4, 42, 20), 6, attrs2d(3, 1, 1, 1, group=group, epi=EPILOGUES[epi]), bias=True)
