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

from convc.passes.rewrite import add_const, is_constant, move_before, record_origin

from convc.ir import Graph, Op
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.im2col import Im2ColAttrs

Predicate = Callable[[Graph, Op], bool]


def is_gemm_conv(a: ConvAttrs) -> bool:
    """A 1x1 (any rank), stride-1, unpadded conv: its input already is the GEMM operand."""
    return all(k == 1 for k in a.kernel_shape) and all(s == 1 for s in a.strides) and not any(a.pads)


def is_depthwise(g: Graph, op: Op) -> bool:
    """One input and one output channel per group: the codegen's direct depthwise kernel is faster."""
    channels = g.tensor(op.inputs[0]).shape[1]
    return op.attrs.group == channels and g.tensor(op.outputs[0]).shape[1] == channels


def is_general_conv(g: Graph, op: Op) -> bool:
    """The default predicate: every 1-D or 2-D conv with constant weights that is not already a GEMM
    and not depthwise."""
    return (op.kind is OpKind.CONV and not op.attrs.channels_last and op.attrs.spatial_rank in (1, 2) and not is_gemm_conv(op.attrs)
            and is_constant(g, op.inputs[1]) and not is_depthwise(g, op))


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
