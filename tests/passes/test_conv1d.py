"""1-D windows as 2-D: 1-D Conv, MaxPool, AveragePool and Im2Col, and the conv and pool gradient ops,
become their 2-D form between Reshape views."""
from __future__ import annotations

import numpy as np
import pytest
from convc.passes.conv1d import windows_to_2d
from convc.passes.memory import is_alias
from convc.passes.pipeline import pipeline
from pass_helpers import add_input, check_pass, conv_attrs, weight

from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.epilogue import Epilogue
from convc.ops.im2col import Im2ColAttrs
from convc.ops.pool import PoolAttrs
from convc.reference import run_reference

CONVS = {
    # name: (input shape, out channels, conv attrs)
    "k3 pad 1": ((16, 3, 37), 8, conv_attrs(3, pad=1, rank=1)),
    "causal dilated": ((16, 4, 64), 5, conv_attrs(3, dilation=4, pads=(8, 0), rank=1)),
    "stride 2 asymmetric": ((2, 3, 33), 4, conv_attrs(4, stride=2, pads=(1, 2), rank=1)),
    "depthwise": ((4, 6, 29), 6, conv_attrs(5, pad=2, group=6, rank=1)),
    "group 2": ((3, 4, 31), 6, conv_attrs(3, group=2, rank=1)),
    "pointwise": ((8, 5, 45), 7, conv_attrs(1, rank=1)),
}


def one_d_ops(g: Graph) -> list[str]:
    """The ops sliding a 1-D window, gradient ops (whose attributes hold their forward op's) included."""
    def window(a):
        return getattr(a, "conv", None) or getattr(a, "pool", None) or a
    return [op.name for op in g.ops() if len(getattr(window(op.attrs), "kernel_shape", (0, 0))) == 1]


@pytest.mark.parametrize("case", list(CONVS))
def test_1d_conv_runs_as_2d(rng, case):
    shape, m, a = CONVS[case]
    g = Graph("conv1d")
    x = add_input(g, "x", shape)
    g.add_constant("w", weight(rng, m, shape[1] // a.group, *a.kernel_shape))
    g.add_constant("b", weight(rng, m, scale=0.1))
    g.add_op(OpKind.CONV, a, [x, "w", "b"], ["y"], name="conv")
    g.outputs = ["y"]
    out = check_pass(g, windows_to_2d, rng)
    assert one_d_ops(out) == []
    conv = out.op("conv")
    assert conv.attrs.kernel_shape == (1,) + a.kernel_shape and conv.attrs.pads == (0, a.pads[0], 0, a.pads[1])
    assert conv.attrs.strides == (1,) + a.strides and conv.attrs.dilations == (1,) + a.dilations
    # the weight is a 2-D constant (packed at compile time); the 1-D one is gone; the bias is kept
    w = out.tensor(conv.inputs[1])
    assert w.kind is TensorKind.CONSTANT and w.shape == (m, shape[1] // a.group, 1, a.kernel_shape[0])
    assert not out.has_tensor("w") and conv.inputs[2] == "b"
    # X and Y keep their names and 1-D shapes, read and written through Reshapes
    assert out.producer(conv.inputs[0]).kind is OpKind.RESHAPE and out.producer(conv.inputs[0]).inputs == ("x",)
    assert out.producer("y").kind is OpKind.RESHAPE and out.tensor("y").shape == g.tensor("y").shape


def test_inner_views_copy_nothing(rng):
    """A 1-D op reading another's output reads its 2-D form directly: one view of the graph input and
    the Reshape writing the graph output (a copy into the caller's array) are all that is left."""
    g = Graph("tcn")
    x = add_input(g, "x", (16, 3, 50))
    g.add_constant("w1", weight(rng, 8, 3, 3))
    g.add_op(OpKind.CONV, ConvAttrs((3,), (1,), (4, 0), (2,), 1, Epilogue(activation=OpKind.RELU)), [x, "w1"], ["h"],
             name="c1")
    g.add_op(OpKind.MAX_POOL, PoolAttrs((2,), (2,), (0, 0), (1,)), ["h"], ["p"], name="pool")
    g.add_constant("w2", weight(rng, 8, 8, 3))
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1, rank=1), ["p", "w2"], ["y"], name="c2")
    g.outputs = ["y"]
    out = check_pass(g, windows_to_2d, rng)
    views = [op for op in out.ops() if op.kind is OpKind.RESHAPE]
    assert [op.name for op in views] == ["c1_input0_2d", "c2_1d"]
    assert [op.name for op in views if not is_alias(out, op)] == ["c2_1d"]  # writes the caller's 'y'
    assert out.op("pool").inputs == out.op("c1").outputs and out.op("c2").inputs[0] == out.op("pool").outputs[0]


def test_residual_and_runtime_weight_are_viewed(rng):
    g = Graph("residual")
    x = add_input(g, "x", (4, 6, 21))
    w = add_input(g, "w", (6, 6, 3))  # fed at run time: viewed, not copied into a constant
    r = add_input(g, "r", (4, 6, 21))
    a = ConvAttrs((3,), (1,), (1, 1), (1,), 1, Epilogue(residual=True))
    g.add_op(OpKind.CONV, a, [x, w, r], ["y"], name="conv")
    g.outputs = ["y"]
    out = check_pass(g, windows_to_2d, rng)
    conv = out.op("conv")
    assert [out.producer(t).inputs[0] for t in (conv.inputs[0], conv.inputs[1], conv.inputs[2])] == ["x", "w", "r"]
    assert [out.tensor(t).shape for t in conv.inputs] == [(4, 6, 1, 21), (6, 6, 1, 3), (4, 6, 1, 21)]


@pytest.mark.parametrize("kind", [OpKind.MAX_POOL, OpKind.AVERAGE_POOL])
@pytest.mark.parametrize("attrs", [PoolAttrs((3,), (2,), (1, 1), (1,), ceil_mode=True),
                                   PoolAttrs((3,), (1,), (1, 0), (2,), count_include_pad=True),
                                   PoolAttrs((4,), (4,), (0, 0), (1,))])
def test_1d_pools_run_as_2d(rng, kind, attrs):
    g = Graph("pool1d")
    x = add_input(g, "x", (16, 5, 43))
    g.add_op(kind, attrs, [x], ["y"], name="pool")
    g.outputs = ["y"]
    out = check_pass(g, windows_to_2d, rng)
    assert out.op("pool").attrs == attrs.as_2d() and one_d_ops(out) == []


def test_1d_im2col_runs_as_2d(rng):
    g = Graph("im2col1d")
    x = add_input(g, "x", (2, 3, 19))
    g.add_op(OpKind.IM2COL, Im2ColAttrs((3,), (2,), (1, 0), (2,)), [x], ["y"], name="col")
    g.outputs = ["y"]
    out = check_pass(g, windows_to_2d, rng)
    assert out.op("col").attrs.kernel_shape == (1, 3) and one_d_ops(out) == []


def test_2d_3d_and_channels_last_ops_are_left_alone(rng):
    g = Graph("others")
    x = add_input(g, "x", (2, 3, 8, 8))
    g.add_constant("w", weight(rng, 4, 3, 3, 3))
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1), [x, "w"], ["h"], name="c2d")
    g.add_op(OpKind.MAX_POOL, PoolAttrs((2, 2), (2, 2), (0,) * 4, (1, 1)), ["h"], ["y"], name="pool")
    g.outputs = ["y"]
    before = [(op.name, op.attrs) for op in g.ops()]
    assert [(op.name, op.attrs) for op in windows_to_2d(g.copy()).ops()] == before


def test_the_pipeline_leaves_no_1d_window_for_the_codegen(rng):
    g = Graph("tcn")
    x = add_input(g, "x", (2, 3, 40))
    g.add_constant("w", weight(rng, 4, 3, 3))
    g.add_op(OpKind.CONV, conv_attrs(3, rank=1), [x, "w"], ["h"], name="conv")
    g.add_op(OpKind.AVERAGE_POOL, PoolAttrs((2,), (2,), (0, 0), (1,)), ["h"], ["y"], name="pool")
    g.outputs = ["y"]
    assert one_d_ops(pipeline(g).graph) == []
    np.testing.assert_equal(pipeline(g).graph.tensor("y").shape, (2, 4, 19))


def test_channels_last_1d_ops_are_viewed_with_the_new_axis_before_the_length(rng):
    """(N, L, C) -> (N, 1, L, C): the channels-last kernels see only 2-D windows too."""
    from convc.ops.layout import CHANNELS_LAST
    g = Graph("nlc")
    x = add_input(g, "x", (2, 37, 16))
    g.add_constant("w", weight(rng, 16, 1, 3))
    a = ConvAttrs((3,), (1,), (2, 0), (2,), 16, Epilogue(activation=OpKind.RELU), CHANNELS_LAST)
    g.add_op(OpKind.CONV, a, [x, "w"], ["h"], name="dw")
    g.add_op(OpKind.AVERAGE_POOL, PoolAttrs((3,), (2,), (1, 1), (1,), True, False, CHANNELS_LAST), ["h"], ["y"],
             name="pool")
    g.outputs = ["y"]
    out = check_pass(g, windows_to_2d, rng)
    assert one_d_ops(out) == []
    assert out.tensor(out.op("dw").inputs[0]).shape == (2, 1, 37, 16)
    assert out.tensor(out.op("dw").inputs[1]).shape == (16, 1, 1, 3)
    # conv: 37 + 2 - 2 * 2 = 35 positions; pool: ceil((35 + 2 - 3) / 2) + 1 = 18
    assert out.tensor(out.op("pool").outputs[0]).shape == (2, 1, 18, 16)


def _grad_graph(rng, pool: OpKind) -> Graph:
    """conv (stride 2, W fed at run time) -> pool, and the backward ops of both (passes/autodiff)."""
    from convc.passes.autodiff import backward
    g = Graph("tcn_grad")
    x = add_input(g, "x", (16, 3, 101))
    w = add_input(g, "w", (7, 3, 5))
    g.add_constant("b", weight(rng, 7, scale=0.1))
    g.add_op(OpKind.CONV, conv_attrs(5, stride=2, pad=2, rank=1), [x, w, "b"], ["h"], name="conv")
    g.add_op(pool, PoolAttrs((3,), (2,), (1, 1), (1,)), ["h"], ["y"], name="pool")
    add_input(g, "dy", (16, 7, 26))
    grads = backward(g, {"y": "dy"}, [x, w])
    g.outputs = ["y", grads[x], grads[w]]
    return g


@pytest.mark.parametrize("pool", [OpKind.MAX_POOL, OpKind.AVERAGE_POOL])
def test_1d_gradient_ops_run_as_2d(rng, pool):
    """The gradients of a 1-D conv and pool (ConvGradInput, ConvGradWeight, MaxPoolGrad,
    AveragePoolGrad) are rewritten too, so the gradient kernels see 2-D windows only; X, W, dX and dW
    keep their names and 1-D shapes (a trainer's parameters and gradients are shaped like the model's)."""
    from convc.driver import compile_training_graph
    from convc.passes.autodiff.pool import GRAD_OF
    g = _grad_graph(rng, pool)
    out = check_pass(g, windows_to_2d, rng, compile_too=False)
    assert one_d_ops(g) != [] and one_d_ops(out) == []
    ops = {op.kind: op for op in out.ops()}
    gi, gw, gp = ops[OpKind.CONV_GRAD_INPUT], ops[OpKind.CONV_GRAD_WEIGHT], ops[GRAD_OF[pool]]
    assert gi.attrs.conv == gw.attrs.conv == out.op("conv").attrs == g.op("conv").attrs.as_2d()
    assert gi.attrs.shape == (16, 3, 1, 101) and gw.attrs.shape == (7, 3, 1, 5)
    assert gp.attrs.pool == out.op("pool").attrs == g.op("pool").attrs.as_2d() and gp.attrs.shape == (16, 7, 1, 51)
    # W is read through one view (shared by the forward conv and dX), never copied or reshaped itself
    assert out.tensor("w").shape == (7, 3, 5) and out.tensor("w").kind is TensorKind.INPUT
    (w2d,) = {out.op("conv").inputs[1], gi.inputs[0]}
    assert out.producer(w2d).kind is OpKind.RESHAPE and out.producer(w2d).inputs == ("w",)
    # the gradients keep their 1-D shapes: dW (7, 3, 5) is the view of the kernel's (7, 3, 1, 5)
    assert [out.tensor(t).shape for t in out.outputs] == [(16, 7, 26), (16, 3, 101), (7, 3, 5)]
    assert out.tensor(gw.outputs[0]).shape == (7, 3, 1, 5) and out.consumers(gw.outputs[0])[0].kind is OpKind.RESHAPE
    # the compiled graph (the training kernels) computes what the 1-D graph's references do
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    ref = run_reference(g, {n: v.astype(np.float64) for n, v in feeds.items()})
    got = compile_training_graph(g).run(feeds)
    for name in g.outputs:
        scale = np.abs(ref[name]).max()
        np.testing.assert_allclose(got[name], ref[name], rtol=0, atol=2e-5 * scale, err_msg=name)
