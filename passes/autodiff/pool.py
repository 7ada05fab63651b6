"""Pooling: MaxPool routes dY to each window's first maximum, AveragePool spreads it evenly. LpPool,
y = (sum over the window of |x|^p)^(1/p), gives dX = x |x|^(p-2) times the window-sum transposed of
dY y^(1-p) (an AveragePoolGrad counting every tap, times the taps): not finite where a window is all
zeros, as in PyTorch."""
from __future__ import annotations

import numpy as np
from convc.passes.autodiff.core import GradContext, gradient
from convc.passes.autodiff.elementwise import binary, const, scale

from convc.ir import Op
from convc.ops import NoAttrs, OpKind
from convc.ops.pool import PoolAttrs
from convc.ops.pool_grad import PoolGradAttrs

GRAD_OF = {
    OpKind.MAX_POOL: OpKind.MAX_POOL_GRAD,
    OpKind.AVERAGE_POOL: OpKind.AVERAGE_POOL_GRAD,
    OpKind.GLOBAL_AVERAGE_POOL: OpKind.GLOBAL_AVERAGE_POOL_GRAD,
    OpKind.GLOBAL_MAX_POOL: OpKind.GLOBAL_MAX_POOL_GRAD,
}
READS_X = frozenset({OpKind.MAX_POOL, OpKind.GLOBAL_MAX_POOL})


@gradient(*GRAD_OF)
def pool_grad(ctx: GradContext, op: Op, dys: list) -> list:
    x = op.inputs[0]
    attrs = PoolGradAttrs(op.attrs if op.kind in (OpKind.MAX_POOL, OpKind.AVERAGE_POOL) else None, ctx.shape(x))
    inputs = [x, dys[0]] if op.kind in READS_X else [dys[0]]
    return [ctx.emit1(GRAD_OF[op.kind], attrs, inputs)]


@gradient(OpKind.LP_POOL)
def lp_pool_grad(ctx: GradContext, op: Op, dys: list) -> list:
    a, x, y = op.attrs, op.inputs[0], op.outputs[0]
    p = a.p
    window = PoolAttrs(a.kernel_shape, a.strides, a.pads, a.dilations, ceil_mode=a.ceil_mode, count_include_pad=True)
    weighted = binary(ctx, OpKind.MUL, dys[0], binary(ctx, OpKind.POW, y, const(ctx, y, 1.0 - p, "exponent")))
    spread = ctx.emit1(OpKind.AVERAGE_POOL_GRAD, PoolGradAttrs(window, ctx.shape(x)), [weighted])
    summed = scale(ctx, spread, float(np.prod(a.kernel_shape)))
    abs_x = ctx.emit1(OpKind.ABS, NoAttrs(), [x])
    slope = binary(ctx, OpKind.MUL, x, binary(ctx, OpKind.POW, abs_x, const(ctx, x, p - 2.0, "exponent")))
    return [binary(ctx, OpKind.MUL, summed, slope)]
