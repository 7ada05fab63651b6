"""Epilogue fusion: activations and residual adds into the producing Conv/Gemm."""
from __future__ import annotations

import numpy as np
import pytest
from convc.passes.dce import eliminate_dead_code
from convc.passes.fusion import fuse_epilogues
from pass_helpers import add_input, check_pass, conv_attrs, kinds, weight

from convc.ir import Graph
from convc.ops import NoAttrs, OpKind, fusible_activations
from convc.ops.elementwise import ClipAttrs, GeluAttrs, LeakyReluAttrs, SwishAttrs
from convc.ops.gemm import GemmAttrs

ACTIVATION_ATTRS = {OpKind.LEAKY_RELU: LeakyReluAttrs(0.2), OpKind.CLIP: ClipAttrs(0.0, 6.0),
                    OpKind.SWISH: SwishAttrs(1.5), OpKind.GELU: GeluAttrs()}


def fuse(g: Graph) -> Graph:
    return eliminate_dead_code(fuse_epilogues(g))


def conv(g: Graph, rng, x: str, cin: int, cout: int, name: str, k: int = 3, out: str | None = None) -> str:
    w = g.add_constant(f"{name}.w", weight(rng, cout, cin, k, k)).name
    b = g.add_constant(f"{name}.b", weight(rng, cout, scale=0.1)).name
    return g.add_op(OpKind.CONV, conv_attrs(k, pad=k // 2), [x, w, b], [out] if out else None, name=name).outputs[0]


@pytest.mark.parametrize("act", sorted(fusible_activations(), key=lambda k: k.value), ids=lambda k: k.value)
def test_activation_fuses_into_conv(rng, act):
    g = Graph("conv_act")
    x = add_input(g, "x", (2, 3, 6, 6))
    c = conv(g, rng, x, 3, 4, "conv")
    g.add_op(act, ACTIVATION_ATTRS.get(act, NoAttrs()), [c], ["y"], name="act")
    g.outputs = ["y"]
    out = check_pass(g, fuse, rng, gone=[act])
    epi = out.op("conv").attrs.epilogue
    assert epi.activation is act and epi.activation_attrs == ACTIVATION_ATTRS.get(act, NoAttrs())
    assert out.op("conv").outputs == ("y",)


@pytest.mark.parametrize("act", sorted(fusible_activations(), key=lambda k: k.value), ids=lambda k: k.value)
def test_activation_fuses_into_gemm(rng, act):
    g = Graph("gemm_act")
    x = add_input(g, "x", (3, 8))
    g.add_constant("w", weight(rng, 5, 8))
    g.add_constant("c", weight(rng, 5, scale=0.1))
    y = g.add_op(OpKind.GEMM, GemmAttrs(trans_b=True), [x, "w", "c"], name="fc").outputs[0]
    g.add_op(act, ACTIVATION_ATTRS.get(act, NoAttrs()), [y], ["y"], name="act")
    g.outputs = ["y"]
    out = check_pass(g, fuse, rng, gone=[act])
    assert kinds(out) == [OpKind.GEMM]


@pytest.mark.parametrize("add_kind", [OpKind.ADD, OpKind.SUM])
def test_residual_add_and_relu_fuse_into_the_conv(rng, add_kind):
    g = Graph("residual")
    x = add_input(g, "x", (1, 4, 5, 5))
    a = conv(g, rng, x, 4, 4, "conv_a")
    r = g.add_op(OpKind.RELU, NoAttrs(), [a], name="relu_a").outputs[0]
    b = conv(g, rng, r, 4, 4, "conv_b")
    s = g.add_op(add_kind, NoAttrs(), [x, b], name="add").outputs[0]  # the conv on the right-hand side
    g.add_op(OpKind.RELU, NoAttrs(), [s], ["y"], name="relu_out")
    g.outputs = ["y"]
    out = check_pass(g, fuse, rng, gone=[OpKind.RELU, add_kind])
    conv_b = out.op("conv_b")
    assert conv_b.inputs[-1] == "x", "the other side of the Add becomes the residual input"
    assert conv_b.attrs.epilogue.fused_names() == ["Add", "Relu"]
    assert out.metadata["absorbed"] == {"conv_a": ("relu_a",), "conv_b": ("add", "relu_out")}


def test_gemm_residual(rng):
    g = Graph("gemm_residual")
    x = add_input(g, "x", (2, 6))
    g.add_constant("w", weight(rng, 6, 6))
    y = g.add_op(OpKind.GEMM, GemmAttrs(), [x, "w"], name="fc").outputs[0]
    g.add_op(OpKind.ADD, NoAttrs(), [y, x], ["y"], name="add")
    g.outputs = ["y"]
    out = check_pass(g, fuse, rng, gone=[OpKind.ADD])
    assert out.op("fc").attrs.epilogue.residual


def test_broadcasting_add_is_not_a_residual(rng):
    g = Graph("bias_add")
    x = add_input(g, "x", (1, 3, 4, 4))
    c = conv(g, rng, x, 3, 3, "conv")
    g.add_constant("bias", np.ones((3, 1, 1), np.float32))
    g.add_op(OpKind.ADD, NoAttrs(), [c, "bias"], ["y"], name="add")
    g.outputs = ["y"]
    out = check_pass(g, fuse, rng)
    assert kinds(out) == [OpKind.CONV, OpKind.ADD]


def test_no_fusion_when_the_conv_output_is_read_twice_or_is_a_graph_output(rng):
    g = Graph("shared")
    x = add_input(g, "x", (1, 2, 4, 4))
    c = conv(g, rng, x, 2, 2, "conv", out="c")
    g.add_op(OpKind.RELU, NoAttrs(), [c], ["y"], name="relu")
    g.add_op(OpKind.TANH, NoAttrs(), [c], ["z"], name="tanh")
    g.outputs = ["y", "z"]
    out = check_pass(g, fuse, rng)
    assert kinds(out) == [OpKind.CONV, OpKind.RELU, OpKind.TANH]
    assert {op for op, _ in out.metadata["pass_notes"]} == {"relu", "tanh"}

    g2 = Graph("conv_is_output")
    x = add_input(g2, "x", (1, 2, 4, 4))
    conv(g2, rng, x, 2, 2, "conv", out="c")
    g2.add_op(OpKind.RELU, NoAttrs(), ["c"], ["y"], name="relu")
    g2.outputs = ["c", "y"]
    out = check_pass(g2, fuse, rng)
    assert kinds(out) == [OpKind.CONV, OpKind.RELU]


def test_second_activation_stays(rng):
    g = Graph("two_acts")
    x = add_input(g, "x", (1, 2, 4, 4))
    c = conv(g, rng, x, 2, 2, "conv")
    r = g.add_op(OpKind.RELU, NoAttrs(), [c], name="relu").outputs[0]
    g.add_op(OpKind.SIGMOID, NoAttrs(), [r], ["y"], name="sigmoid")
    g.outputs = ["y"]
    out = check_pass(g, fuse, rng, gone=[OpKind.RELU])
    assert kinds(out) == [OpKind.CONV, OpKind.SIGMOID]
    assert "already applies Relu" in out.metadata["pass_notes"][0][1]
