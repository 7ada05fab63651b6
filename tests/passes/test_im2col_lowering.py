"""im2col lowering: general convs become Im2Col + a 1x1 GEMM-shaped conv."""
from __future__ import annotations

import numpy as np
import pytest
from convc.passes.dce import eliminate_dead_code
from convc.passes.im2col import is_gemm_conv, is_general_conv, lower_im2col
from convc.passes.kernel_selection import select_kernels
from pass_helpers import add_input, check_pass, conv_attrs, kinds, weight

from convc.ir import Graph
from convc.ops import NoAttrs, OpKind
from convc.ops.conv import ConvAlgorithm as A
from convc.ops.epilogue import Epilogue
from convc.options import CompileOptions, applied


# threads enough that no conv here has two blocks of output rows per thread: every lowered conv
# gets the explicit Im2Col op these tests look at (gathering in the conv: the tests at the end)
MANY = 64


def lower(g: Graph) -> Graph:
    return eliminate_dead_code(lower_im2col(g, threads=MANY))


def lower_every_general_conv(g: Graph) -> Graph:
    """Lower depthwise convs too (the default predicate leaves them to the direct depthwise kernel)."""
    return eliminate_dead_code(lower_im2col(g, should_lower=lambda gr, op: not is_gemm_conv(op.attrs), threads=MANY))


CASES = {
    # name: (input shape, out channels, conv attrs)
    "3x3 pad 1": ((2, 3, 8, 8), 4, conv_attrs(3, pad=1)),
    "3x3 stride 2": ((1, 3, 9, 9), 5, conv_attrs(3, stride=2, pad=1)),
    "5x5 dilation 2": ((1, 2, 12, 12), 3, conv_attrs(5, dilation=2, pad=2)),
    "asymmetric pads": ((1, 2, 7, 6), 3, conv_attrs((3, 2), pads=(1, 0, 0, 1))),
    "group 2": ((2, 4, 6, 6), 6, conv_attrs(3, pad=1, group=2)),
    "group 4 of 2": ((1, 8, 6, 6), 8, conv_attrs(3, pad=1, group=4)),
    "1x1 stride 2": ((1, 4, 7, 7), 3, conv_attrs(1, stride=2)),
    "1-D causal dilated": ((2, 3, 16), 4, conv_attrs(3, dilation=2, pads=(4, 0), rank=1)),
    "1-D stride 2": ((1, 2, 11), 3, conv_attrs(4, stride=2, pad=1, rank=1)),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", list(CASES))
def test_lowered_conv_computes_the_same(rng, case, bias):
    shape, m, a = CASES[case]
    g = Graph("conv")
    x = add_input(g, "x", shape)
    g.add_constant("w", weight(rng, m, shape[1] // a.group, *a.kernel_shape))
    inputs = [x, "w"] + ([g.add_constant("b", weight(rng, m, scale=0.1)).name] if bias else [])
    g.add_op(OpKind.CONV, a, inputs, ["y"], name="conv")
    g.outputs = ["y"]
    out = check_pass(g, lower_every_general_conv, rng)
    assert kinds(out) == [OpKind.IM2COL, OpKind.CONV]
    conv = out.op("conv")
    assert is_gemm_conv(conv.attrs) and conv.attrs.group == a.group
    taps = int(np.prod(a.kernel_shape))
    assert out.tensor(conv.inputs[0]).shape[1] == shape[1] * taps, "Im2Col channels = C * taps"
    assert out.tensor(conv.inputs[1]).shape == (m, shape[1] // a.group * taps) + (1,) * a.spatial_rank
    assert out.metadata["origin"] == {"conv_im2col": "conv"}
    assert not out.has_tensor("w"), "the original weight is dead"


def test_depthwise_conv_stays_for_the_direct_kernel(rng):
    g = Graph("depthwise")
    x = add_input(g, "x", (1, 4, 6, 6))
    g.add_constant("w", weight(rng, 4, 1, 3, 3))
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1, group=4), [x, "w"], ["y"], name="conv")
    g.outputs = ["y"]
    out = check_pass(g, lower, rng)
    assert kinds(out) == [OpKind.CONV] and not is_general_conv(out, out.op("conv"))


def test_default_predicate_keeps_depthwise_convs_direct(rng):
    g = Graph("depthwise")
    x = add_input(g, "x", (1, 4, 6, 6))
    g.add_constant("w", weight(rng, 4, 1, 3, 3))
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1, group=4), [x, "w"], ["y"], name="dw")
    g.outputs = ["y"]
    assert kinds(check_pass(g, lower, rng)) == [OpKind.CONV]


def test_epilogue_and_residual_survive_lowering(rng):
    g = Graph("fused")
    x = add_input(g, "x", (1, 3, 6, 6))
    r = add_input(g, "r", (1, 4, 6, 6))
    g.add_constant("w", weight(rng, 4, 3, 3, 3))
    g.add_constant("b", weight(rng, 4, scale=0.1))
    a = conv_attrs(3, pad=1)
    from dataclasses import replace
    a = replace(a, epilogue=Epilogue(residual=True, activation=OpKind.RELU, activation_attrs=NoAttrs()))
    g.add_op(OpKind.CONV, a, [x, "w", "b", r], ["y"], name="conv")
    g.outputs = ["y"]
    out = check_pass(g, lower, rng)
    assert out.op("conv").attrs.epilogue == a.epilogue and out.op("conv").inputs[-1] == "r"


@pytest.mark.slow
def test_gemm_shaped_convs_and_the_predicate_keep_their_conv(rng):
    g = Graph("keep")
    x = add_input(g, "x", (1, 3, 5, 5))
    g.add_constant("w1", weight(rng, 4, 3, 1, 1))
    g.add_constant("w3", weight(rng, 4, 4, 3, 3))
    y = g.add_op(OpKind.CONV, conv_attrs(1), [x, "w1"], name="pointwise").outputs[0]
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1), [y, "w3"], ["y"], name="spatial")
    g.outputs = ["y"]
    out = check_pass(g, lower, rng)
    assert kinds(out) == [OpKind.CONV, OpKind.IM2COL, OpKind.CONV], "the 1x1 conv already is a GEMM"
    keep_spatial = lambda gr, op: is_general_conv(gr, op) and op.name != "spatial"
    kept = check_pass(g, lambda gr: lower_im2col(gr, should_lower=keep_spatial, threads=MANY), rng)
    assert kinds(kept) == [OpKind.CONV, OpKind.CONV]


def test_im2col_runs_right_before_its_conv(rng):
    g = Graph("order")
    x = add_input(g, "x", (1, 2, 6, 6))
    g.add_constant("w", weight(rng, 2, 2, 3, 3))
    a = g.add_op(OpKind.CONV, conv_attrs(3, pad=1), [x, "w"], name="c1").outputs[0]
    g.add_op(OpKind.SIGMOID, NoAttrs(), [x], ["s"], name="side")  # ready at the same time as c1's Im2Col
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1), [a, "w"], ["y"], name="c2")
    g.outputs = ["y", "s"]
    out = lower(g.copy())
    assert [op.name for op in out.ops()] == ["c1_im2col", "c1", "side", "c2_im2col", "c2"]


def gathering_case(rng, group: int = 1) -> Graph:
    """(2, 4, 42, 20) -> 3x3 pad 1 -> (2, 6, 42, 20): blocks of 8 output rows (160 pixels), 6 per image."""
    g = Graph("gather")
    x = add_input(g, "x", (2, 4, 42, 20))
    g.add_constant("w", weight(rng, 6, 4 // group, 3, 3))
    g.add_constant("b", weight(rng, 6, scale=0.1))
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1, group=group), [x, "w", "b"], ["y"], name="conv")
    g.outputs = ["y"]
    return g


@pytest.mark.parametrize("group,threads,gathers", [
    (1, 1, True), (1, 6, True), (1, 7, False),    # 2 images x 6 blocks = 12 tasks: >= 2 per thread up to 6
    (2, 12, True), (2, 13, False),                # x 2 groups = 24 tasks
])
def test_conv_with_two_blocks_per_thread_gathers_its_own_im2col(rng, group, threads, gathers):
    """The lowering decides once, for the compile's threads: the conv keeps X and its window and is
    marked IM2COL_FUSED (no Im2Col op, no im2col matrix in the arena), or gets the explicit op."""
    g = gathering_case(rng, group)
    out = check_pass(g, lambda gr: eliminate_dead_code(lower_im2col(gr, threads=threads)), rng)
    conv = out.op("conv")
    if gathers:
        assert kinds(out) == [OpKind.CONV] and conv.attrs.algorithm is A.IM2COL_FUSED
        assert conv.inputs[:2] == ("x", "w") and conv.attrs.kernel_shape == (3, 3)
        assert select_kernels(out).op("conv").attrs.algorithm is A.IM2COL_FUSED  # kept by kernel selection
    else:
        assert kinds(out) == [OpKind.IM2COL, OpKind.CONV] and conv.attrs.algorithm is A.UNSELECTED
        assert select_kernels(out).op("conv").attrs.algorithm is A.POINTWISE


def test_the_compile_threads_decide(rng):
    """Inside a compile (``applied``) the lowering reads CompileOptions.threads."""
    for threads, left in [(1, [OpKind.CONV]), (7, [OpKind.IM2COL, OpKind.CONV])]:
        with applied(CompileOptions(threads=threads)):
            assert kinds(lower_im2col(gathering_case(rng))) == left
