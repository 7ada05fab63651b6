"""Softmax: dX = Y (dY - sum(dY Y)) along the axis (the loss fuses it away for cross-entropy)."""
from __future__ import annotations

from convc.passes.autodiff.core import GradContext, gradient

from convc.ir import Op
from convc.ops import OpKind


@gradient(OpKind.SOFTMAX)
def softmax_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(OpKind.SOFTMAX_GRAD, op.attrs, [op.outputs[0], dys[0]])]
