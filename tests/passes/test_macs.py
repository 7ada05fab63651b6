"""Exact MAC, other-op FLOP and parameter counts on hand-built graphs (arithmetic beside each number)."""
from __future__ import annotations

import numpy as np
from convc.passes.bn_folding import fold_batch_norm
from convc.passes.fusion import fuse_epilogues
from convc.passes.macs import Cost, Params, count_params, graph_cost, op_costs, total_params
from helpers import without_flop_rule
from pass_helpers import add_input, bn_params, conv_attrs, weight

from convc.ir import Graph
from convc.ops import NoAttrs, OpKind
from convc.ops.gemm import GemmAttrs
from convc.ops.norm import BatchNormAttrs
from convc.ops.pool import GlobalPoolAttrs, PoolAttrs
from convc.ops.shape import FlattenAttrs
from convc.ops.softmax import SoftmaxAttrs


def small_cnn(rng) -> Graph:
    g = Graph("small_cnn")
    x = add_input(g, "x", (1, 3, 32, 32))
    g.add_constant("w1", weight(rng, 16, 3, 3, 3))
    g.add_constant("b1", weight(rng, 16))
    c1 = g.add_op(OpKind.CONV, conv_attrs(3, pad=1), [x, "w1", "b1"], name="conv1").outputs[0]  # 1x16x32x32
    bn = [g.add_constant(f"bn.{i}", v).name for i, v in enumerate(bn_params(rng, 16))]
    b1 = g.add_op(OpKind.BATCH_NORM, BatchNormAttrs(), [c1] + bn, name="bn1").outputs[0]
    r1 = g.add_op(OpKind.RELU, NoAttrs(), [b1], name="relu1").outputs[0]
    p1 = g.add_op(OpKind.MAX_POOL, PoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1)), [r1], name="pool").outputs[0]
    g.add_constant("w2", weight(rng, 32, 4, 3, 3))
    c2 = g.add_op(OpKind.CONV, conv_attrs(3, stride=2, pad=1, group=4), [p1, "w2"], name="conv2").outputs[0]
    g.add_constant("w3", weight(rng, 32, 1, 3, 3))
    c3 = g.add_op(OpKind.CONV, conv_attrs(3, group=32), [c2, "w3"], name="dw3").outputs[0]  # 1x32x6x6
    gp = g.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [c3], name="gap").outputs[0]
    f = g.add_op(OpKind.FLATTEN, FlattenAttrs(1), [gp], name="flatten").outputs[0]
    g.add_constant("wf", weight(rng, 10, 32))
    g.add_constant("bf", weight(rng, 10))
    y = g.add_op(OpKind.GEMM, GemmAttrs(trans_b=True), [f, "wf", "bf"], name="fc").outputs[0]
    g.add_op(OpKind.SOFTMAX, SoftmaxAttrs(1), [y], ["prob"], name="softmax")
    g.outputs = ["prob"]
    g.verify()
    return g


def test_small_cnn_counts(rng):
    g = small_cnn(rng)
    cost = op_costs(g)
    assert cost["conv1"] == Cost(442_368, 16_384)   # 16*32*32 outputs * 3*3*3 taps; bias: 16*32*32
    assert cost["bn1"] == Cost(0, 32_768)           # 2 per element: 2 * 16*32*32
    assert cost["relu1"] == Cost(0, 16_384)         # 16*32*32
    assert cost["pool"] == Cost(0, 16_384)          # 16*16*16 outputs * 2*2 taps
    assert cost["conv2"] == Cost(73_728, 0)         # 32*8*8 outputs * (16/4)*3*3 = 2048 * 36; no bias
    assert cost["dw3"] == Cost(10_368, 0)           # 32*6*6 outputs * 1*3*3 = 1152 * 9
    assert cost["gap"] == Cost(0, 1_152)            # one per input element: 32*6*6
    assert cost["flatten"] == Cost(0, 0)            # a view
    assert cost["fc"] == Cost(320, 10)              # 1*10 outputs * 32; bias 10
    assert cost["softmax"] == Cost(0, 40)           # 4 per element * 10
    total = graph_cost(g)
    assert total.macs == 526_784                    # 442368 + 73728 + 10368 + 320
    assert total.flops == 1_053_568                 # 2 x MACs
    assert total.other_flops == 83_122              # 16384+32768+16384+16384+1152+10+40

    params = count_params(g)
    assert params["conv1"] == Params(448)           # 16*3*3*3 + 16
    assert params["bn1"] == Params(32, 32)          # scale+B 2*16; mean+var 2*16 are statistics
    assert params["conv2"] == Params(1_152)         # 32*4*3*3
    assert params["dw3"] == Params(288)             # 32*1*3*3
    assert params["fc"] == Params(330)              # 10*32 + 10
    assert total_params(g) == Params(2_250, 32)     # 448 + 32 + 1152 + 288 + 330


def test_bn_folding_and_fusion_do_not_change_macs(rng):
    g = small_cnn(rng)
    fused = fuse_epilogues(fold_batch_norm(g.copy()))
    assert [op.kind for op in fused.ops()][:2] == [OpKind.CONV, OpKind.MAX_POOL]
    assert graph_cost(fused).macs == graph_cost(g).macs == 526_784


def test_padded_taps_count_and_matmul_batches(rng):
    g = Graph("edge")
    x = add_input(g, "x", (1, 2, 10))
    g.add_constant("w", weight(rng, 4, 2, 3))
    g.add_op(OpKind.CONV, conv_attrs(3, pad=1, rank=1), [x, "w"], ["y"], name="conv1d")
    a = add_input(g, "a", (2, 3, 4))
    g.add_constant("b", weight(rng, 4, 5))
    g.add_op(OpKind.MATMUL, NoAttrs(), [a, "b"], ["z"], name="matmul")
    g.outputs = ["y", "z"]
    assert op_costs(g)["conv1d"] == Cost(240, 0)   # 4*10 outputs * 2*3 taps, the edge taps in the padding too
    assert op_costs(g)["matmul"] == Cost(120, 0)   # 2*3*5 outputs * K=4
    assert total_params(g) == Params(44)           # 4*2*3 + 4*5


def test_shared_constants_count_once_and_integers_not_at_all(rng):
    g = Graph("shared")
    x = add_input(g, "x", (2, 8))
    g.add_constant("c", weight(rng, 8))
    a = g.add_op(OpKind.ADD, NoAttrs(), [x, "c"], name="add").outputs[0]
    g.add_op(OpKind.MUL, NoAttrs(), [a, "c"], ["y"], name="mul")
    g.outputs = ["y"]
    p = count_params(g)
    assert p["add"] == Params(8) and p["mul"] == Params(0)  # c: 8 values, counted at its first reader
    assert graph_cost(g) == Cost(0, 32)                    # 16 adds + 16 multiplies


def test_caffe_bn_scale_affine_counts_once(rng):
    """BN (fixed scale 1, B 0) + Mul + Add by per-channel constants, as Caffe exports BatchNorm+Scale:
    the trainable affine is the Mul/Add pair, so the BN's scale and B join its statistics."""
    g = Graph("caffe")
    x = add_input(g, "x", (1, 4, 3, 3))
    bn = [g.add_constant(f"bn.{i}", v).name for i, v in enumerate(bn_params(rng, 4))]
    b = g.add_op(OpKind.BATCH_NORM, BatchNormAttrs(), [x] + bn, name="bn").outputs[0]
    g.add_constant("gamma", np.ones((4, 1, 1), np.float32))
    g.add_constant("beta", np.zeros((4, 1, 1), np.float32))
    m = g.add_op(OpKind.MUL, NoAttrs(), [b, "gamma"], name="scale").outputs[0]
    g.add_op(OpKind.ADD, NoAttrs(), [m, "beta"], ["y"], name="shift")
    g.outputs = ["y"]
    assert total_params(g) == Params(8, 16)  # gamma 4 + beta 4; mean, var, scale, B: 4*4 fixed values


def test_an_op_without_a_rule_is_named_not_zero(rng, monkeypatch):
    without_flop_rule(monkeypatch, OpKind.SOFTMAX)
    g = small_cnn(rng)
    assert op_costs(g)["softmax"].unmodelled == ("softmax (Softmax)",)
    assert graph_cost(g).unmodelled == ("softmax (Softmax)",)


def test_costs_add_up():
    assert Cost(1, 2, ("a",)) + Cost(10, 20, ("b",)) == Cost(11, 22, ("a", "b"))
    assert Params(1, 2) + Params(3, 4) == Params(4, 6) and Params(4, 6).total == 10


def test_conv_transpose_lrn_and_transpose(rng):
    from convc.ops.conv_transpose import ConvTransposeAttrs
    from convc.ops.norm import LrnAttrs
    from convc.ops.shape import TransposeAttrs
    g = Graph("more")
    x = add_input(g, "x", (1, 4, 3, 3))
    g.add_constant("w", weight(rng, 4, 6, 4, 4))
    g.add_constant("b", weight(rng, 6))
    a = ConvTransposeAttrs((4, 4), (2, 2), (1, 1, 1, 1), (1, 1))
    y = g.add_op(OpKind.CONV_TRANSPOSE, a, [x, "w", "b"], name="deconv").outputs[0]  # 1x6x6x6
    n = g.add_op(OpKind.LRN, LrnAttrs(5), [y], name="lrn").outputs[0]
    g.add_op(OpKind.TRANSPOSE, TransposeAttrs((0, 2, 3, 1)), [n], ["t"], name="nhwc")
    g.outputs = ["t"]
    cost = op_costs(g)
    assert cost["deconv"] == Cost(3_456, 216)  # every input x every weight: 4*3*3 * 6*4*4; bias 6*6*6
    assert cost["lrn"] == Cost(0, 2_808)       # (2*5 + 3) * 216
    assert cost["nhwc"] == Cost(0, 0)          # data movement, not unmodelled
    assert graph_cost(g).unmodelled == ()
    assert total_params(g) == Params(390)      # 4*6*4*4 + 6
