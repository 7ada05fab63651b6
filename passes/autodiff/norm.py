"""BatchNormalization in training mode: one op gives dX, dscale and dB from the saved batch statistics."""
from __future__ import annotations

from convc.passes.autodiff.core import GradContext, gradient

from convc.ir import Op
from convc.ops import OpKind


@gradient(OpKind.BATCH_NORM_TRAIN)
def batch_norm_grad(ctx: GradContext, op: Op, dys: list) -> list:
    x, scale, _ = op.inputs
    _, mean, invstd = op.outputs
    dx, dscale, dbias = ctx.emit(OpKind.BATCH_NORM_GRAD, op.attrs, [x, scale, mean, invstd, dys[0]])
    return [dx, dscale, dbias]
