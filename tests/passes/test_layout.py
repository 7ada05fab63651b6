"""Channels-last layout: conv chains run channels last, with transposes only where the layout changes."""
from __future__ import annotations

import numpy as np
from convc.passes.layout import to_channels_last
from pass_helpers import add_input, check_pass, conv_attrs, kinds, weight

from convc.ir import Graph
from convc.ops import NoAttrs, OpKind
from convc.ops.epilogue import Epilogue
from convc.ops.pool import GlobalPoolAttrs, PoolAttrs
from convc.ops.shape import ConcatAttrs, FlattenAttrs


def conv(g: Graph, rng, x: str, cin: int, cout: int, name: str, k: int = 3, group: int = 1, **kw) -> str:
    w = g.add_constant(f"{name}.w", weight(rng, cout, cin // group, k, k)).name
    b = g.add_constant(f"{name}.b", weight(rng, cout, scale=0.1)).name
    attrs = conv_attrs(k, pad=k // 2, group=group)
    if kw:
        attrs = type(attrs)(**{**attrs.__dict__, **kw})
    return g.add_op(OpKind.CONV, attrs, [x, w, b], name=name).outputs[0]


def layouts(g: Graph) -> dict[str, str]:
    return {op.name: op.attrs.layout for op in g.ops() if hasattr(op.attrs, "layout")}


def transposes(g: Graph) -> list[str]:
    return [op.name for op in g.ops() if op.kind is OpKind.TRANSPOSE]


def test_cnn_runs_channels_last_between_its_edges(rng):
    """conv -> relu -> maxpool -> conv (+ residual add) -> global pool -> flatten: one transpose in,
    one out, every conv and pool channels last, the elementwise ops between them too."""
    g = Graph("cnn")
    x = add_input(g, "x", (2, 3, 12, 12))
    y = conv(g, rng, x, 3, 8, "c1")
    y = g.add_op(OpKind.RELU, NoAttrs(), [y], name="relu").outputs[0]
    y = g.add_op(OpKind.MAX_POOL, PoolAttrs((2, 2), (2, 2), (0,) * 4, (1, 1)), [y], name="pool").outputs[0]
    z = conv(g, rng, y, 8, 8, "c2")
    y = g.add_op(OpKind.ADD, NoAttrs(), [z, y], name="add").outputs[0]
    y = g.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [y], name="gap").outputs[0]
    g.add_op(OpKind.FLATTEN, FlattenAttrs(1), [y], ["out"], name="flatten")
    g.outputs = ["out"]
    out = check_pass(g, to_channels_last, rng)
    assert transposes(out) == ["x_to_nhwc"]  # the pooled (2, 1, 1, 8) is (2, 8, 1, 1) as it is: a view
    assert out.producer("gap_out").kind is OpKind.RESHAPE
    assert layouts(out) == {"c1": "NHWC", "pool": "NHWC", "c2": "NHWC", "gap": "NHWC"}
    add = out.op("add")
    assert all(out.producer(t).kind is OpKind.CONV or out.producer(t).name == "pool" for t in add.inputs)
    assert out.tensor(add.outputs[0]).shape == (2, 6, 6, 8)  # the add runs channels last too
    assert out.tensor("out").shape == (2, 8)


def test_concat_of_channels_last_tensors_stays_channels_last(rng):
    """A fire module: two convs concatenated along channels, then a conv: Concat on axis 3."""
    g = Graph("fire")
    x = add_input(g, "x", (1, 4, 6, 6))
    s = conv(g, rng, x, 4, 3, "squeeze", k=1)
    a = conv(g, rng, s, 3, 5, "expand1", k=1)
    b = conv(g, rng, s, 3, 6, "expand3")
    c = g.add_op(OpKind.CONCAT, ConcatAttrs(1), [a, b], name="concat").outputs[0]
    conv(g, rng, c, 11, 2, "next")
    g.outputs = [g.op("next").outputs[0]]
    out = check_pass(g, to_channels_last, rng)
    assert out.op("concat").attrs.axis == 3
    assert transposes(out) == ["x_to_nhwc", "next_out_to_nchw"]


def test_graph_outputs_keep_their_name_and_layout(rng):
    g = Graph("two_outputs")
    x = add_input(g, "x", (1, 4, 7, 5))
    y = conv(g, rng, x, 4, 6, "c1")
    g.add_op(OpKind.RELU, NoAttrs(), [y], ["feature"], name="relu")
    conv(g, rng, "feature", 6, 3, "c2")
    g.outputs = ["feature", g.op("c2").outputs[0]]
    out = check_pass(g, to_channels_last, rng)
    for name in g.outputs:
        assert out.tensor(name).shape == g.tensor(name).shape
        assert out.producer(name).kind is OpKind.TRANSPOSE


def test_ops_it_cannot_convert_read_channels_first(rng):
    """A grouped (non-depthwise) conv, a broadcasting Mul and a Concat stay channels first: each
    reads a transpose back of a converted op's output, and the numbers do not change."""
    g = Graph("mixed")
    x = add_input(g, "x", (1, 4, 6, 6))
    a = conv(g, rng, x, 4, 8, "plain")
    b = conv(g, rng, a, 8, 8, "grouped", group=2)
    d = conv(g, rng, a, 8, 8, "depthwise", group=8)
    scale = g.add_constant("scale", rng.uniform(0.5, 1.5, (1, 8, 1, 1)).astype(np.float32)).name
    m = g.add_op(OpKind.MUL, NoAttrs(), [d, scale], name="scale_mul").outputs[0]
    g.add_op(OpKind.CONCAT, ConcatAttrs(1), [b, m], ["out"], name="concat")
    g.outputs = ["out"]
    out = check_pass(g, to_channels_last, rng)
    assert layouts(out) == {"plain": "NHWC", "grouped": "NCHW", "depthwise": "NHWC"}
    assert out.op("grouped").inputs[0] == "plain_out"  # the transpose back, named as before
    assert out.producer("plain_out").kind is OpKind.TRANSPOSE
    assert kinds(out).count(OpKind.TRANSPOSE) == 3  # x in; plain and depthwise back


def test_fused_residual_reads_its_twin(rng):
    """A conv whose epilogue adds a residual reads the residual channels last as well."""
    g = Graph("residual")
    x = add_input(g, "x", (1, 8, 5, 5))
    a = conv(g, rng, x, 8, 8, "c1")
    w = g.add_constant("c2.w", weight(rng, 8, 8, 3, 3)).name
    attrs = conv_attrs(3, pad=1)
    attrs = type(attrs)(**{**attrs.__dict__, "epilogue": Epilogue(True, OpKind.RELU)})
    g.add_op(OpKind.CONV, attrs, [a, w, a], ["out"], name="c2")
    g.outputs = ["out"]
    out = check_pass(g, to_channels_last, rng)
    c2 = out.op("c2")
    assert c2.attrs.channels_last and c2.inputs[0] == c2.inputs[2] == out.op("c1").outputs[0]
    assert transposes(out) == ["x_to_nhwc", "out_to_nchw"]


def test_leaves_channels_first_only_graphs_alone(rng):
    """No conv: nothing to gain, nothing changes."""
    g = Graph("pool_only")
    x = add_input(g, "x", (1, 3, 8, 8))
    g.add_op(OpKind.MAX_POOL, PoolAttrs((2, 2), (2, 2), (0,) * 4, (1, 1)), [x], ["out"], name="pool")
    g.outputs = ["out"]
    out = check_pass(g, to_channels_last, rng)
    assert kinds(out) == [OpKind.MAX_POOL] and layouts(out) == {"pool": "NCHW"}
