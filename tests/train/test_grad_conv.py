"""Conv gradients (dX, dW, dB): 1-D and 2-D, strides, asymmetric pads, dilations, groups, depthwise."""
from __future__ import annotations

import numpy as np
import pytest

from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.pool import PoolAttrs
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
    ((3, 2), (1, 1), (0, 1, 2, 0), (1, 1)),    # stride 1, asymmetric pads: dX as the flipped forward conv
    ((3, 3), (1, 1), (3, 0, 1, 2), (1, 1)),    # stride 1, a pad beyond the kernel's reach: dX through col2im
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


def conv1d_net():
    """A small TCN-like classifier: strided, dilated and grouped 1-D convs with a max and an average pool."""
    from convc import nn
    return nn.Sequential(nn.Conv1d(3, 7, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool1d(3, stride=2, padding=1),
                         nn.Conv1d(7, 6, 3, padding=1, dilation=2), nn.ReLU(), nn.Conv1d(6, 6, 3, groups=3),
                         nn.AvgPool1d(3, stride=2), nn.Flatten(), nn.Linear(6 * 10, 5))


def test_conv1d_net_step_has_only_2d_windows():
    """The planned training step of a Conv1d net: every conv, pool and gradient op slides a 2-D window
    (passes/conv1d.py; the gradient kernels never see a 1-D one), while the parameters and their
    gradients keep the model's 1-D shapes."""
    from convc.driver import load_forward
    from convc.passes.autodiff.training import build_training
    step = build_training(load_forward(conv1d_net(), (16, 3, 101)), loss="cross_entropy")
    g = step.graph
    windows = {op.name: getattr(op.attrs, "conv", None) or getattr(op.attrs, "pool", None) or op.attrs
               for op in step.plan.order if op.kind in (OpKind.CONV, OpKind.MAX_POOL, OpKind.AVERAGE_POOL,
                                                         OpKind.CONV_GRAD_INPUT, OpKind.CONV_GRAD_WEIGHT,
                                                         OpKind.MAX_POOL_GRAD, OpKind.AVERAGE_POOL_GRAD)}
    assert len(windows) == 3 + 2 + 3 + 2 + 2  # convs, pools, dW of each conv, dX of the last two, pool grads
    assert {name: w.kernel_shape for name, w in windows.items() if len(w.kernel_shape) != 2} == {}
    assert {p: g.tensor(p).shape for p in step.params if p.endswith("weight")} == \
        {"0.weight": (7, 3, 5), "3.weight": (6, 7, 3), "5.weight": (6, 2, 3), "8.weight": (5, 60)}
    assert all(g.tensor(step.grads[p]).shape == g.tensor(p).shape for p in step.params)


@pytest.mark.slow
def test_conv1d_net_gradients_match_finite_differences(rng):
    """The compiled gradients of the whole 1-D net at a realistic size (batch 16, length 101) against
    central differences of the float64 references."""
    import convc
    x = rng.standard_normal((16, 3, 101)).astype(np.float32)
    result = convc.gradcheck(conv1d_net(), x, rng.integers(0, 5, 16), samples=6)
    assert result.ok, result


@pytest.mark.parametrize("kind,attrs", [(OpKind.CONV, ConvAttrs((3,), (1,), (1, 1), (1,), 1)),
                                        (OpKind.MAX_POOL, PoolAttrs((3,), (2,), (1, 1), (1,))),
                                        (OpKind.AVERAGE_POOL, PoolAttrs((3,), (2,), (1, 1), (1,)))])
def test_gradient_kernels_refuse_a_1d_window(rng, kind, attrs):
    """Without the rewrite a 1-D gradient op reaches its emitter, which says so instead of guessing."""
    import dataclasses

    from convc.driver import compile_plan
    from convc.errors import CompileError
    from convc.options import resolve_options
    from convc.passes import pipeline as pl
    from convc.passes.dce import eliminate_dead_code
    from convc.passes.kernel_selection import select_kernels
    from train.grad_helpers import grad_graph
    inputs = [rng.standard_normal((2, 3, 11)).astype(np.float32)]
    if kind is OpKind.CONV:
        inputs.append(rng.standard_normal((4, 3, 3)).astype(np.float32))
    g, _ = grad_graph(kind, attrs, inputs, range(len(inputs)))
    # the forward op is dead (only gradients are outputs): what is compiled is the gradient ops
    raw = dataclasses.replace(pl.AS_BUILT, passes=(("dead-code elimination", eliminate_dead_code),
                                                   ("kernels, 1-D windows left", lambda g: select_kernels(g, True))))
    plan = pl.pipeline(g, variant=raw)
    assert {op.kind for op in plan.order} & {kind} == set()
    with pytest.raises(CompileError, match="2-D windows"):
        compile_plan(plan, resolve_options(threads=1, cache=False))


@pytest.mark.parametrize("group,m,stride", [(1, 12, 1), (4, 12, 1), (8, 8, 1), (8, 8, 2)])
def test_grads_at_real_size_two_threads(rng, group, m, stride):
    """dX and dW of a 3x3 conv at a training size with odd widths, the work split between 2 threads: the
    flipped forward conv (stride 1), grouped, and the direct depthwise loops (group = channels, strides 1
    and 2); the compiled gradients against the float64 reference of the same graph."""
    from convc.driver import compile_training_graph
    from convc.options import CompileOptions
    from convc.reference import run_reference
    from train.grad_helpers import KERNEL_TOL, grad_graph, rel_error
    attrs = ConvAttrs((3, 3), (stride,) * 2, (1, 1, 1, 1), (1, 1), group)
    x = rng.standard_normal((16, 8, 17, 15)).astype(np.float32)
    w = rng.standard_normal((m, 8 // group, 3, 3)).astype(np.float32)
    g, names = grad_graph(OpKind.CONV, attrs, [x, w], wrt=(0, 1))
    dy_shape = g.tensor("dy").shape
    feeds = {names[0]: x, names[1]: w, "dy": rng.standard_normal(dy_shape).astype(np.float32)}
    got = compile_training_graph(g, CompileOptions(threads=2)).run(feeds)
    ref = run_reference(g, {k: v.astype(np.float64) for k, v in feeds.items()})
    for out in g.outputs:
        assert rel_error(got[out], ref[out]) < KERNEL_TOL, out
