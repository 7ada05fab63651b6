"""Flatten and Reshape take dY back to the input's shape; Concat slices dY along its axis."""
from __future__ import annotations

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.elementwise_grad import SliceAttrs
from convc.ops.shape import ReshapeAttrs
from convc.passes.autodiff.core import GradContext, gradient


@gradient(OpKind.FLATTEN, OpKind.RESHAPE)
def reshape_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(OpKind.RESHAPE, ReshapeAttrs(ctx.shape(op.inputs[0])), [dys[0]])]


@gradient(OpKind.CONCAT)
def concat_grad(ctx: GradContext, op: Op, dys: list) -> list:
    out, start = [], 0
    for i, t in enumerate(op.inputs):
        stop = start + ctx.shape(t)[op.attrs.axis]
        out.append(ctx.emit1(OpKind.SLICE, SliceAttrs(op.attrs.axis, start, stop), [dys[0]])
                   if ctx.needs(op, i) else None)
        start = stop
    return out
