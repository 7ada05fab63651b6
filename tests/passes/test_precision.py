"""passes/precision.py: which tensors the bf16 pass rounds, where it puts RoundBF16, and what it leaves alone."""
from __future__ import annotations

import numpy as np
import pytest
from pass_helpers import add_input, conv_attrs, weight

from convc.errors import CompileError
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind, op_def
from convc.ops.gemm import GemmAttrs
from convc.ops.precision import is_bf16, round_bf16
from convc.options import CompileOptions, applied
from convc.passes.im2col import lower_im2col
from convc.passes.pipeline import pipeline
from convc.passes.precision import bf16_operands, to_bf16
from convc.reference import run_reference


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def two_convs_and_a_residual(rng) -> Graph:
    """x -> conv1 -> a; a -> conv2 -> b; a + b -> y: ``a`` is read by a conv and by the Add."""
    g = Graph("block")
    add_input(g, "x", (2, 8, 9, 11))
    w1, w2 = g.add_constant("w1", weight(rng, 8, 8, 3, 3)).name, g.add_constant("w2", weight(rng, 8, 8, 3, 3)).name
    a = g.add_op(OpKind.CONV, conv_attrs(pad=1), ["x", w1], ["a"]).outputs[0]
    b = g.add_op(OpKind.CONV, conv_attrs(pad=1), [a, w2], ["b"]).outputs[0]
    g.add_op(OpKind.ADD, NoAttrs(), [a, b], ["y"])
    g.outputs = ["y"]
    return g


def test_constants_are_rounded_and_runtime_operands_get_a_round_op(rng):
    g = two_convs_and_a_residual(rng)
    w1 = g.tensor("w1").data.copy()
    out = to_bf16(g.copy())
    out.verify()
    convs = [op for op in out.ops() if op.kind is OpKind.CONV]
    for op in convs:
        producer = out.producer(op.inputs[0])
        assert producer.kind is OpKind.ROUND_BF16
        assert is_bf16(out.tensor(op.inputs[1]).data)
    assert np.array_equal(out.tensor("w1").data, round_bf16(w1))
    # the residual Add still reads the float32 conv output, not its rounded copy
    (add,) = [op for op in out.ops() if op.kind is OpKind.ADD]
    assert add.inputs[0] == "a"
    assert out.metadata["precision"] == "bf16"
    # numbers: the reference run of the rewritten graph equals the float32 graph on rounded operands
    x = rng.standard_normal((2, 8, 9, 11)).astype(np.float32)
    def conv(x, w):
        return op_def(OpKind.CONV).reference(conv_attrs(pad=1), x, round_bf16(g.tensor(w).data))[0]
    a = conv(round_bf16(x), "w1")
    np.testing.assert_array_equal(run_reference(out, {"x": x})["y"], a + conv(round_bf16(a), "w2"))


def test_a_tensor_read_by_two_products_is_rounded_once(rng):
    g = Graph("fork")
    add_input(g, "x", (1, 4, 6, 6))
    for i in range(2):
        g.add_op(OpKind.CONV, conv_attrs(k=1), ["x", g.add_constant(f"w{i}", weight(rng, 4, 4, 1, 1)).name], [f"y{i}"])
    g.outputs = ["y0", "y1"]
    out = to_bf16(g)
    rounds = [op for op in out.ops() if op.kind is OpKind.ROUND_BF16]
    assert len(rounds) == 1 and {c.kind for c in out.consumers(rounds[0].outputs[0])} == {OpKind.CONV}


def test_a_constant_also_read_elsewhere_keeps_its_float32_values(rng):
    """W feeds a Gemm and an Add: the Gemm reads a rounded copy, the Add the original."""
    g = Graph("shared")
    add_input(g, "x", (5, 5))
    w = g.add_constant("w", rng.standard_normal((5, 5)).astype(np.float32))
    original = w.data.copy()
    g.add_op(OpKind.GEMM, GemmAttrs(), ["x", "w"], ["p"])
    g.add_op(OpKind.ADD, NoAttrs(), ["p", "w"], ["y"])
    g.outputs = ["y"]
    out = to_bf16(g)
    (gemm,) = [op for op in out.ops() if op.kind is OpKind.GEMM]
    assert gemm.inputs[1] != "w" and np.array_equal(out.tensor(gemm.inputs[1]).data, round_bf16(original))
    assert np.array_equal(out.tensor("w").data, original)


def test_an_im2col_has_its_input_rounded_not_its_output(rng):
    g = Graph("grouped")
    add_input(g, "x", (2, 6, 10, 10))
    g.add_op(OpKind.CONV, conv_attrs(pad=1, group=2), ["x", g.add_constant("w", weight(rng, 6, 3, 3, 3)).name], ["y"])
    g.outputs = ["y"]
    lowered = lower_im2col(g, threads=64)
    assert [op.kind for op in lowered.ops()] == [OpKind.IM2COL, OpKind.CONV]
    out = to_bf16(lowered)
    assert [op.kind for op in out.ops()] == [OpKind.ROUND_BF16, OpKind.IM2COL, OpKind.CONV]


def test_float32_compiles_leave_the_graph_alone(rng):
    g = two_convs_and_a_residual(rng)
    with applied(CompileOptions(threads=1)):
        plan = pipeline(g)
    assert OpKind.ROUND_BF16 not in {op.kind for op in plan.graph.ops()} and "precision" not in plan.graph.metadata
    assert bf16_operands(g) is g and OpKind.ROUND_BF16 not in {op.kind for op in g.ops()}  # no compile: no options


def test_the_pipeline_runs_it_for_bf16(rng):
    g = two_convs_and_a_residual(rng)
    with applied(CompileOptions(threads=1, precision="bf16", winograd=False)):
        plan = pipeline(g)
    assert plan.graph.metadata["precision"] == "bf16"
    assert [op.kind for op in plan.order].count(OpKind.ROUND_BF16) == 2
    assert not is_bf16(g.tensor("w1").data)  # the pipeline rounded its copy


def test_a_non_float32_operand_is_refused(rng):
    g = Graph("f64")
    g.add_tensor("x", (3, 4), np.float64, TensorKind.INPUT)
    g.add_constant("w", np.ones((4, 2)))
    g.add_op(OpKind.GEMM, GemmAttrs(), ["x", "w"], ["y"])
    g.outputs = ["y"]
    with pytest.raises(CompileError, match="bf16 precision needs float32 operands, tensor 'x' is float64"):
        to_bf16(g)
