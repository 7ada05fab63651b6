"""Pooling: MaxPool routes dY to each window's first maximum, AveragePool spreads it evenly."""
from __future__ import annotations

from convc.passes.autodiff.core import GradContext, gradient

from convc.ir import Op
from convc.ops import OpKind
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
