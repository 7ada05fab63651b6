"""Conv: dX is a transposed convolution of dY (ConvGradInput), dW the correlation of X with dY
(ConvGradWeight, an im2col GEMM in the kernels), dB the sum of dY over batch and space."""
from __future__ import annotations

from convc.errors import GraphError
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv_grad import ConvGradAttrs
from convc.ops.elementwise_grad import ReduceSumAttrs
from convc.passes.autodiff.core import GradContext, gradient


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
        out[2] = ctx.emit1(OpKind.REDUCE_SUM, ReduceSumAttrs((0,) + tuple(range(2, rank)), ctx.shape(op.inputs[2])),
                           [dy])
    return out
