"""Reductions: dY (viewed with the reduced axes kept as 1) broadcast back over them. ReduceSum copies
it; ReduceMax and ReduceMin give it to the elements equal to the result, split evenly between ties
(torch.amax's rule); ReduceProd multiplies it by the product of the other elements (zeros counted
apart, so it is exact where x has some).
ReduceMean, L1, L2, SumSquare, LogSum and LogSumExp import as these plus elementwise ops, which
differentiate on their own."""
from __future__ import annotations

from convc.passes.autodiff.core import GradContext, gradient
from convc.passes.autodiff.elementwise import binary, const, ge_mask

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.elementwise import ClipAttrs
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
    """dx_i = dY times the product of the other elements, exact where x has zeros (a ReduceProd after a
    ReLU): with P the product of the nonzero elements and k the number of zeros, it is P / x_i when k = 0,
    P at the zero when k = 1, and 0 otherwise."""
    x = op.inputs[0]
    keepdims = tuple(1 if i in op.attrs.axes else d for i, d in enumerate(ctx.shape(x)))
    zero, one = const(ctx, x, 0.0, "zero"), const(ctx, x, 1.0, "one")
    is_zero = binary(ctx, OpKind.MUL, ge_mask(ctx, zero, x), ge_mask(ctx, x, zero))
    nonzero_x = binary(ctx, OpKind.ADD, x, is_zero)  # the zeros replaced by ones
    product = ctx.emit1(OpKind.REDUCE_PROD, ReduceAttrs(op.attrs.axes, keepdims), [nonzero_x])
    zeros = ctx.emit1(OpKind.REDUCE_SUM, ReduceAttrs(op.attrs.axes, keepdims), [is_zero])
    no_zero = binary(ctx, OpKind.SUB, one, ctx.emit1(OpKind.CLIP, ClipAttrs(0.0, 1.0), [zeros]))
    one_zero = binary(ctx, OpKind.MUL, ge_mask(ctx, zeros, one), ge_mask(ctx, one, zeros))
    share = binary(ctx, OpKind.ADD, binary(ctx, OpKind.DIV, no_zero, nonzero_x),
                   binary(ctx, OpKind.MUL, one_zero, is_zero))
    return [binary(ctx, OpKind.MUL, binary(ctx, OpKind.MUL, kept(ctx, op, dys[0]), product), share)]
