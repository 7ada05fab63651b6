"""im2col lowering: a general convolution becomes an explicit Im2Col op followed by a GEMM-shaped conv.

    Conv(X, W[M, Cg, k...], group, epilogue)
      -> Im2Col(X) = col[N, C * prod(k), *out]
      -> Conv(col, W.reshape(M, Cg * prod(k), 1, ...), kernel 1, stride 1, no pads, same group,
              same bias, same epilogue)

A 1x1, stride-1, unpadded conv already is a GEMM in the codegen (no im2col buffer) and is left as
it is. ``should_lower`` chooses per conv, so a faster direct kernel can keep the convs it handles.
"""
from __future__ import annotations

from collections.abc import Callable

from convc.passes.kernel_selection import im2col_candidate
from convc.passes.rewrite import add_const, move_before, record_origin

from convc.ir import Graph, Op
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs, is_pointwise
from convc.ops.im2col import Im2ColAttrs

Predicate = Callable[[Graph, Op], bool]


is_gemm_conv = is_pointwise  # a 1x1, stride-1, unpadded conv: its input already is the GEMM operand
# the default predicate: every 1-D or 2-D channels-first conv with constant weights that is neither
# pointwise nor depthwise (the codegen's direct kernels are faster for those)
is_general_conv = im2col_candidate


def lower_im2col(g: Graph, should_lower: Predicate = is_general_conv) -> Graph:
    moves = {}
    for op in g.ops():
        if op.kind is OpKind.CONV and should_lower(g, op):
            col = lower_conv(g, op)
            moves[op.name] = [col.name, col.outputs[0]]
    move_before(g, moves)
    return g


def lower_conv(g: Graph, conv: Op) -> Op:
    """Rewrite ``conv`` in place (it keeps its name, output and epilogue); returns the new Im2Col op."""
    a: ConvAttrs = conv.attrs
    w = g.tensor(conv.inputs[1]).data
    r = a.spatial_rank
    col = g.add_op(OpKind.IM2COL, Im2ColAttrs.of(a), [conv.inputs[0]], name=f"{conv.name}_im2col")
    record_origin(g, col.name, conv.name)
    w2 = w.reshape((w.shape[0], -1) + (1,) * r)  # row-major: channel order (c, taps), as Im2Col writes
    conv.attrs = ConvAttrs((1,) * r, (1,) * r, (0,) * (2 * r), (1,) * r, a.group, a.epilogue)
    g.set_inputs(conv, (col.outputs[0], add_const(g, f"{conv.name}_w_col", w2)) + conv.inputs[2:])
    return col
