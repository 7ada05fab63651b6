"""Softmax: dX = Y (dY - sum(dY Y)) along the axis (the loss fuses it away for cross-entropy).
LogSoftmax: dX = dY - exp(Y) sum(dY) along the axis."""
from __future__ import annotations

from convc.passes.autodiff.core import GradContext, gradient
from convc.passes.autodiff.elementwise import binary

from convc.ir import Op
from convc.ops import NoAttrs, OpKind
from convc.ops.reduce import ReduceAttrs


@gradient(OpKind.SOFTMAX)
def softmax_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(OpKind.SOFTMAX_GRAD, op.attrs, [op.outputs[0], dys[0]])]


@gradient(OpKind.LOG_SOFTMAX)
def log_softmax_grad(ctx: GradContext, op: Op, dys: list) -> list:
    shape = ctx.shape(op.outputs[0])
    axis = op.attrs.axis
    keepdims = tuple(1 if i == axis else d for i, d in enumerate(shape))
    total = ctx.emit1(OpKind.REDUCE_SUM, ReduceAttrs((axis,), keepdims), [dys[0]])
    probs = ctx.emit1(OpKind.EXP, NoAttrs(), [op.outputs[0]])
    return [binary(ctx, OpKind.SUB, dys[0], binary(ctx, OpKind.MUL, probs, total))]
