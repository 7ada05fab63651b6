"""Conv: dX is a transposed convolution of dY (ConvGradInput), dW the correlation of X with dY
(ConvGradWeight, an im2col GEMM in the kernels), dB the sum of dY over batch and space.
ConvTranspose: the same two ops with the roles of the input and output swapped."""
from __future__ import annotations

from convc.passes.autodiff.core import GradContext, gradient

from convc.errors import GraphError
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.conv_grad import ConvGradAttrs
from convc.ops.reduce import ReduceAttrs
from convc.ops.shape import PadAttrs


@gradient(OpKind.CONV)
def conv_grad(ctx: GradContext, op: Op, dys: list) -> list:
    a = op.attrs
    if not a.epilogue.empty:
        raise GraphError(f"node {op.name!r}: differentiate the graph before epilogue fusion")
    (dy,) = dys
    x, w = op.inputs[:2]
    out = [None] * len(op.inputs)
    if ctx.needs(op, 0):
        out[0] = ctx.emit1(OpKind.CONV_GRAD_INPUT, ConvGradAttrs(a, ctx.shape(x)), [w, dy])
    if ctx.needs(op, 1):
        out[1] = ctx.emit1(OpKind.CONV_GRAD_WEIGHT, ConvGradAttrs(a, ctx.shape(w)), [x, dy])
    if len(op.inputs) > 2 and ctx.needs(op, 2):
        rank = len(ctx.shape(dy))
        out[2] = ctx.emit1(OpKind.REDUCE_SUM, ReduceAttrs((0,) + tuple(range(2, rank)), ctx.shape(op.inputs[2])),
                           [dy])
    return out


@gradient(OpKind.CONV_TRANSPOSE)
def conv_transpose_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """ConvTranspose is the input gradient of the Conv that maps its output back to its input (same
    kernel, strides, dilations and group; pads (begin, end - output_padding)), so dX is that Conv of
    dY and dW that Conv's weight gradient with the roles of X and dY swapped. Negative pads (an
    output_shape beyond the natural size) become a crop of dY first."""
    a = op.attrs
    if not a.epilogue.empty:
        raise GraphError(f"node {op.name!r}: differentiate the graph before epilogue fusion")
    (dy,) = dys
    x, w = op.inputs[:2]
    r = a.spatial_rank
    begin = list(a.pads_begin)
    end = [a.pads_end[i] - a.extra[i] for i in range(r)]
    crop = [min(p, 0) for p in begin] + [min(p, 0) for p in end]
    src = dy
    if any(crop):
        src = ctx.emit1(OpKind.PAD, PadAttrs((0, 0) + tuple(crop[:r]) + (0, 0) + tuple(crop[r:])), [dy])
    conv = ConvAttrs(a.kernel_shape, a.strides, tuple(max(p, 0) for p in begin + end), a.dilations, a.group)
    out = [None] * len(op.inputs)
    if ctx.needs(op, 0):
        out[0] = ctx.emit1(OpKind.CONV, conv, [src, w])
    if ctx.needs(op, 1):
        out[1] = ctx.emit1(OpKind.CONV_GRAD_WEIGHT, ConvGradAttrs(conv, ctx.shape(w)), [src, x])
    if len(op.inputs) > 2 and ctx.needs(op, 2):
        rank = len(ctx.shape(dy))
        out[2] = ctx.emit1(OpKind.REDUCE_SUM, ReduceAttrs((0,) + tuple(range(2, rank)), ctx.shape(op.inputs[2])),
                           [dy])
    return out
