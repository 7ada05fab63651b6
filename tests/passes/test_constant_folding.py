"""Constant folding (+ DCE): ops on constants are evaluated at compile time and disappear."""
from __future__ import annotations

import numpy as np
from convc.passes.constant_folding import fold_constants
from convc.passes.dce import eliminate_dead_code
from pass_helpers import add_input, check_pass

from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.shape import ReshapeAttrs


def fold(g: Graph) -> Graph:
    return eliminate_dead_code(fold_constants(g))


def test_chain_of_constant_ops_folds_and_is_gone(rng):
    g = Graph("cf")
    x = add_input(g, "x", (2, 3, 4))
    g.add_constant("a", rng.standard_normal((3, 1)).astype(np.float32))
    g.add_constant("b", rng.standard_normal((1, 4)).astype(np.float32))
    s = g.add_op(OpKind.ADD, NoAttrs(), ["a", "b"], name="const_add").outputs[0]       # (3, 4), constant
    r = g.add_op(OpKind.RELU, NoAttrs(), [s], name="const_relu").outputs[0]          # constant too
    g.add_op(OpKind.MUL, NoAttrs(), [x, r], ["y"], name="live_mul")
    g.outputs = ["y"]
    out = check_pass(g, fold, rng)
    assert [op.name for op in out.ops()] == ["live_mul"]
    folded = out.tensor(out.op("live_mul").inputs[1])
    assert folded.kind is TensorKind.CONSTANT and folded.dtype == np.float32
    np.testing.assert_array_equal(folded.data, np.maximum(g.tensor("a").data + g.tensor("b").data, 0))
    assert not out.has_tensor("a") and not out.has_tensor("b"), "DCE drops the constants nothing reads"


def test_constant_graph_output_and_views_fold(rng):
    g = Graph("cf_out")
    x = add_input(g, "x", (4,))
    g.add_constant("c", rng.standard_normal((2, 2)).astype(np.float32))
    g.add_op(OpKind.RESHAPE, ReshapeAttrs((4,)), ["c"], ["flat"], name="const_reshape")
    g.add_op(OpKind.ADD, NoAttrs(), [x, "flat"], ["y"], name="add")
    g.outputs = ["y", "flat"]  # a folded tensor can stay a graph output
    out = check_pass(g, fold, rng, gone=[OpKind.RESHAPE])
    assert out.tensor("flat").kind is TensorKind.CONSTANT


def test_nothing_to_fold_leaves_the_graph_alone(rng):
    g = Graph("cf_none")
    x = add_input(g, "x", (3,))
    g.add_op(OpKind.SIGMOID, NoAttrs(), [x], ["y"], name="sig")
    g.outputs = ["y"]
    out = check_pass(g, fold, rng)
    assert [op.name for op in out.ops()] == ["sig"]
