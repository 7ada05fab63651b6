"""Reductions: dY (viewed with the reduced axes kept as 1) broadcast back over them. ReduceSum copies
it; ReduceMax and ReduceMin give it to the elements equal to the result, split evenly between ties
(torch.amax's rule); ReduceProd multiplies it by y / x, which is the product of the other elements
wherever x is not 0 (at an exact 0 it is not finite: the product-of-the-others kernel is not written).
ReduceMean, L1, L2, SumSquare, LogSum and LogSumExp import as these plus elementwise ops, which
differentiate on their own."""
from __future__ import annotations

from convc.passes.autodiff.core import GradContext, gradient
from convc.passes.autodiff.elementwise import binary, ge_mask

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.reduce import ReduceAttrs
from convc.ops.shape import ExpandAttrs, ReshapeAttrs


def kept(ctx: GradContext, op: Op, t: str) -> str:
    """``t`` (shaped like the result) viewed with the reduced axes kept as 1, so it broadcasts against x."""
    x_shape = ctx.shape(op.inputs[0])
    keepdims = tuple(1 if i in op.attrs.axes else d for i, d in enumerate(x_shape))
    return t if ctx.shape(t) == keepdims else ctx.emit1(OpKind.RESHAPE, ReshapeAttrs(keepdims), [t])


@gradient(OpKind.REDUCE_SUM)
def reduce_sum_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(OpKind.EXPAND, ExpandAttrs(ctx.shape(op.inputs[0])), [kept(ctx, op, dys[0])])]


@gradient(OpKind.REDUCE_MAX, OpKind.REDUCE_MIN)
def reduce_max_min_grad(ctx: GradContext, op: Op, dys: list) -> list:
    x, y = op.inputs[0], kept(ctx, op, op.outputs[0])
    mask = ge_mask(ctx, x, y) if op.kind is OpKind.REDUCE_MAX else ge_mask(ctx, y, x)
    keepdims = ctx.shape(y)
    ties = ctx.emit1(OpKind.REDUCE_SUM, ReduceAttrs(op.attrs.axes, keepdims), [mask])
    return [binary(ctx, OpKind.MUL, mask, binary(ctx, OpKind.DIV, kept(ctx, op, dys[0]), ties))]


@gradient(OpKind.REDUCE_PROD)
def reduce_prod_grad(ctx: GradContext, op: Op, dys: list) -> list:
    x = op.inputs[0]
    dy_y = binary(ctx, OpKind.MUL, kept(ctx, op, dys[0]), kept(ctx, op, op.outputs[0]))
    return [binary(ctx, OpKind.DIV, dy_y, x)]
