"""Kernel selection: the pipeline records on every conv the algorithm the codegen runs it with."""
from __future__ import annotations

import dataclasses

import pytest
from convc.passes.im2col import lower_conv
from convc.passes.kernel_selection import select_kernels, select_training_kernels
from convc.passes.memory import plan_memory
from convc.passes.pipeline import Plan, pipeline
from pass_helpers import add_input, conv_attrs, weight

from convc.errors import CompileError
from convc.ir import Graph
from convc.ops import NoAttrs, OpKind
from convc.ops.conv import ConvAlgorithm as A
from convc.ops.pool import GlobalPoolAttrs, PoolAttrs
from convc.options import CompileOptions, applied


def conv(g: Graph, rng, x: str, cin: int, cout: int, name: str, k: int = 3, stride: int = 1, group: int = 1,
         pad: int | None = None, rank: int = 2, runtime_weight: bool = False) -> str:
    shape = (cout, cin // group) + (k,) * rank
    if runtime_weight:
        w = add_input(g, f"{name}.w", shape)
        g.inputs = list(g.inputs) + [w]
    else:
        w = g.add_constant(f"{name}.w", weight(rng, *shape)).name
    b = g.add_constant(f"{name}.b", weight(rng, cout, scale=0.1)).name
    attrs = conv_attrs(k, stride=stride, pad=k // 2 if pad is None else pad, group=group, rank=rank)
    return g.add_op(OpKind.CONV, attrs, [x, w, b], name=name).outputs[0]


def relu(g: Graph, x: str, name: str) -> str:
    return g.add_op(OpKind.RELU, NoAttrs(), [x], name=name).outputs[0]


def algorithms(g: Graph) -> dict[str, A]:
    return {op.name: op.attrs.algorithm for op in g.ops() if op.kind is OpKind.CONV}


def resnet_style(rng) -> Graph:
    """Stem 7x7 stride 2, max pool, a basic block (3x3, 3x3 + residual), a strided block with a 1x1
    stride-2 downsample, global pool."""
    g = Graph("resnet_style")
    x = add_input(g, "x", (2, 3, 32, 32))
    g.inputs = [x]
    y = relu(g, conv(g, rng, x, 3, 8, "stem", k=7, stride=2), "stem_relu")
    y = g.add_op(OpKind.MAX_POOL, PoolAttrs((3, 3), (2, 2), (1,) * 4, (1, 1)), [y], name="pool").outputs[0]
    z = relu(g, conv(g, rng, y, 8, 8, "b1c1"), "b1r1")
    z = conv(g, rng, z, 8, 8, "b1c2")
    y = relu(g, g.add_op(OpKind.ADD, NoAttrs(), [z, y], name="b1add").outputs[0], "b1r2")
    z = relu(g, conv(g, rng, y, 8, 16, "b2c1", stride=2), "b2r1")
    z = conv(g, rng, z, 16, 16, "b2c2")
    d = conv(g, rng, y, 8, 16, "b2down", k=1, stride=2)
    y = relu(g, g.add_op(OpKind.ADD, NoAttrs(), [z, d], name="b2add").outputs[0], "b2r2")
    g.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [y], ["out"], name="gap")
    g.outputs = ["out"]
    return g


def mobilenet_style(rng) -> Graph:
    """An inverted residual: 1x1 expand, 3x3 depthwise (stride 1, then stride 2), 1x1 project."""
    g = Graph("mobilenet_style")
    x = add_input(g, "x", (1, 8, 16, 16))
    g.inputs = [x]
    y = relu(g, conv(g, rng, x, 8, 24, "expand", k=1), "r1")
    y = relu(g, conv(g, rng, y, 24, 24, "dw", group=24), "r2")
    y = relu(g, conv(g, rng, y, 24, 24, "dw_s2", group=24, stride=2), "r3")
    y = conv(g, rng, y, 24, 8, "project", k=1)
    g.outputs = [y]
    return g


def test_resnet_style_runs_every_conv_as_an_implicit_gemm_channels_last(rng):
    assert algorithms(pipeline(resnet_style(rng)).graph) == dict.fromkeys(
        ["stem", "b1c1", "b1c2", "b2c1", "b2c2", "b2down"], A.IMPLICIT_GEMM_NHWC)


def test_mobilenet_style_depthwise_channels_last(rng):
    assert algorithms(pipeline(mobilenet_style(rng)).graph) == {
        "expand": A.IMPLICIT_GEMM_NHWC, "dw": A.DEPTHWISE_NHWC, "dw_s2": A.DEPTHWISE_NHWC,
        "project": A.IMPLICIT_GEMM_NHWC}


@pytest.mark.usefixtures("channels_first_pipeline")
def test_channels_first_kernels(rng):
    """Without the layout pass: general convs gather their im2col blocks themselves when there are
    two blocks per thread, else become Im2Col + a GEMM-shaped conv; 1x1 stride 1 is a GEMM on its
    input; a strided 1x1 goes through im2col; depthwise keeps its direct kernel."""
    g = resnet_style(rng)
    general = ["stem", "b1c1", "b1c2", "b2c1", "b2c2", "b2down"]
    # every one has a single block of output rows (16x16, 8x8, 4x4 outputs): 2 images x 1 block
    # is two blocks per thread on one thread, one on two
    with applied(CompileOptions(threads=1)):
        plan = pipeline(g)
    assert algorithms(plan.graph) == dict.fromkeys(general, A.IM2COL_FUSED)
    assert not [op.name for op in plan.graph.ops() if op.kind is OpKind.IM2COL]
    assert plan.graph.producer(plan.graph.op("b1c1").inputs[0]).kind is OpKind.MAX_POOL  # reads X itself
    with applied(CompileOptions(threads=2)):
        plan = pipeline(g)
    assert algorithms(plan.graph) == dict.fromkeys(general, A.POINTWISE)
    assert all(plan.graph.producer(plan.graph.op(n).inputs[0]).kind is OpKind.IM2COL for n in general)
    assert algorithms(pipeline(mobilenet_style(rng)).graph) == {
        "expand": A.POINTWISE, "dw": A.DEPTHWISE, "dw_s2": A.DEPTHWISE, "project": A.POINTWISE}


def test_grouped_3d_1d_and_runtime_weights(rng):
    """A grouped (not depthwise) conv stays channels first and goes through im2col; 3-D convs run
    direct loops; 1-D convs take the channels-first kernels (im2col, depthwise, pointwise); a conv
    whose weights are fed at run time cannot be lowered or packed: im2col in the kernel."""
    g = Graph("mixed")
    x = add_input(g, "x", (2, 8, 6, 6))
    v = add_input(g, "v", (1, 2, 4, 4, 4))
    s = add_input(g, "s", (2, 4, 20))
    g.inputs = [x, v, s]
    y = conv(g, rng, x, 8, 8, "grouped", group=2)
    y = conv(g, rng, y, 8, 8, "runtime", runtime_weight=True)
    y = conv(g, rng, y, 8, 8, "runtime_1x1", k=1, runtime_weight=True)
    y = conv(g, rng, y, 8, 8, "runtime_dw", group=8, runtime_weight=True)
    c3 = conv(g, rng, v, 2, 3, "c3d", rank=3)
    t = conv(g, rng, s, 4, 6, "c1d", rank=1)
    t = conv(g, rng, t, 6, 6, "dw1d", group=6, rank=1)
    t = conv(g, rng, t, 6, 4, "pw1d", k=1, rank=1)
    g.outputs = [y, c3, t]
    with applied(CompileOptions(threads=1)):  # "grouped" and "c1d" have blocks enough to gather them
        plan = pipeline(g)
    assert algorithms(plan.graph) == {
        "grouped": A.IM2COL_FUSED, "runtime": A.IM2COL_GEMM, "runtime_1x1": A.IM2COL_GEMM,
        "runtime_dw": A.DEPTHWISE, "c3d": A.DIRECT_ND, "c1d": A.IM2COL_FUSED, "dw1d": A.DEPTHWISE,
        "pw1d": A.POINTWISE}
    # a training plan reads every non-constant weight at run time
    trained = select_training_kernels(g.copy())
    assert {n: a for n, a in algorithms(trained).items() if a is A.RUNTIME_WEIGHTS} == dict.fromkeys(
        ["runtime", "runtime_1x1", "runtime_dw"], A.RUNTIME_WEIGHTS)


def test_im2col_read_twice_is_not_gathered_in_the_conv(rng):
    """A conv over an explicit Im2Col op is a GEMM on it (gathering in the conv is the lowering's
    choice, made where the conv has the matrix to itself)."""
    h = Graph("shared")
    add_input(h, "x", (1, 4, 8, 8))
    h.inputs = ["x"]
    conv(h, rng, "x", 4, 4, "c", pad=0)
    col = lower_conv(h, h.op("c"))
    h.add_op(OpKind.RELU, NoAttrs(), [col.outputs[0]], ["col_relu_out"], name="col_relu")
    h.outputs = [h.op("c").outputs[0], "col_relu_out"]
    assert algorithms(select_kernels(h)) == {"c": A.POINTWISE}


def test_codegen_refuses_an_unselected_conv(rng):
    from convc.codegen.module import emit_module
    g = Graph("unselected")
    x = add_input(g, "x", (1, 4, 8, 8))
    g.inputs = [x]
    g.outputs = [conv(g, rng, x, 4, 4, "lonely")]
    order = g.ops()
    with pytest.raises(CompileError, match="lonely"):
        emit_module(Plan(g, order, plan_memory(g, order)))


def test_no_channels_last_kernel_for_a_grouped_conv(rng):
    """The layout pass never converts a grouped conv; one converted by hand is refused, by name."""
    g = Graph("grouped_nhwc")
    x = add_input(g, "x", (1, 6, 6, 8))
    g.inputs = [x]
    w = g.add_constant("grouped.w", weight(rng, 8, 4, 3, 3)).name
    attrs = dataclasses.replace(conv_attrs(3, pad=1, group=2), layout="NHWC")
    g.outputs = list(g.add_op(OpKind.CONV, attrs, [x, w], name="grouped").outputs)
    with pytest.raises(CompileError, match="grouped"):
        select_kernels(g)


def test_selection_is_the_last_rewrite():
    from convc.passes import pipeline as p
    assert p.PIPELINE[-1][1] is select_kernels
