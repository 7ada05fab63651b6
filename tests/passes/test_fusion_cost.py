"""Epilogue fusion's cost does not grow with the square of the model's size: a residual Add sorts
the whole graph only when both of its inputs come from fusible producers."""
from __future__ import annotations

import pytest
from convc.passes.fusion import fuse_epilogues
from pass_helpers import add_input, conv_attrs, weight

from convc.ir import Graph
from convc.ops import NoAttrs, OpKind


def residual_tower(rng, blocks: int, two_convs_every: int = 0) -> Graph:
    """``blocks`` of conv -> Add(x) -> ReLU (ResNet's identity blocks); every ``two_convs_every``-th
    block adds two convs instead (a downsampling block: both producers fusible)."""
    g = Graph("tower")
    x = add_input(g, "x", (1, 4, 6, 6))
    for i in range(blocks):
        def conv(src, name):
            w = g.add_constant(f"{name}.w", weight(rng, 4, 4, 3, 3)).name
            b = g.add_constant(f"{name}.b", weight(rng, 4, scale=0.1)).name
            return g.add_op(OpKind.CONV, conv_attrs(3, pad=1), [src, w, b], name=name).outputs[0]
        c = conv(x, f"c{i}")
        other = conv(x, f"d{i}") if two_convs_every and i % two_convs_every == 0 else x
        s = g.add_op(OpKind.ADD, NoAttrs(), [c, other], name=f"add{i}").outputs[0]
        x = g.add_op(OpKind.RELU, NoAttrs(), [s], name=f"relu{i}").outputs[0]
    g.outputs = [x]
    return g


@pytest.mark.parametrize("two_convs_every", [0, 4])
def test_residual_fusion_sorts_the_graph_only_for_two_fusible_producers(rng, monkeypatch, two_convs_every):
    sorts = []
    real = Graph.ops
    monkeypatch.setattr(Graph, "ops", lambda self: sorts.append(1) or real(self))
    counts = []
    for blocks in (4, 16):
        g = residual_tower(rng, blocks, two_convs_every)
        sorts.clear()
        out = fuse_epilogues(g)
        assert all(op.kind is OpKind.CONV for op in out.ops())  # every Add and ReLU fused
        counts.append(len(sorts) - 1)  # (less the check's own sort)
    # the pass's own walks, plus one per Add of two convs (16 // 4 = 4, 4 // 4 = 1: 3 more)
    assert counts[1] - counts[0] == (3 if two_convs_every else 0), counts
