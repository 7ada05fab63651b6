"""Gemm and 2-D MatMul: the gradients are Gemms themselves (with the transposes swapped).

For Y = alpha A' B' + beta C with A' = A or A^T and B' = B or B^T:
dA' = alpha dY B'^T and dB' = alpha A'^T dY, transposed back when the operand was; dC is beta dY
summed over the axes C was broadcast along.
"""
from __future__ import annotations

import numpy as np
from convc.passes.autodiff.core import GradContext, gradient
from convc.passes.autodiff.elementwise import reduce_to, scale

from convc.errors import GraphError
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.gemm import GemmAttrs
from convc.ops.shape import ReshapeAttrs


def _gemm(ctx: GradContext, a: str, b: str, trans_a: bool, trans_b: bool, alpha: float) -> str:
    return ctx.emit1(OpKind.GEMM, GemmAttrs(alpha=alpha, beta=0.0, trans_a=trans_a, trans_b=trans_b), [a, b])

@gradient(OpKind.GEMM)
def gemm_grad(ctx: GradContext, op: Op, dys: list) -> list:
    at = op.attrs
    if not at.epilogue.empty:
        raise GraphError(f"node {op.name!r}: differentiate the graph before epilogue fusion")
    (dy,) = dys
    a, b = op.inputs[:2]
    out = [None] * len(op.inputs)
    if ctx.needs(op, 0):
        out[0] = (_gemm(ctx, b, dy, at.trans_b, True, at.alpha) if at.trans_a
                  else _gemm(ctx, dy, b, False, not at.trans_b, at.alpha))
    if ctx.needs(op, 1):
        out[1] = (_gemm(ctx, dy, a, True, at.trans_a, at.alpha) if at.trans_b
                  else _gemm(ctx, a, dy, not at.trans_a, False, at.alpha))
    if len(op.inputs) > 2 and ctx.needs(op, 2):
        out[2] = scale(ctx, reduce_to(ctx, dy, ctx.shape(op.inputs[2])), at.beta)
    return out

@gradient(OpKind.MATMUL)
def matmul_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """A[..., M, K] @ B[K, N] (B 2-D): the leading axes of A fold into M."""
    (dy,) = dys
    a, b = op.inputs
    sa, sb = ctx.shape(a), ctx.shape(b)
    if len(sb) != 2 or len(sa) < 2:
        raise GraphError(f"node {op.name!r}: convc differentiates MatMul of an (..., M, K) tensor by a 2-D (K, N) "
                         f"one, got A.shape={sa}, B.shape={sb}")
    m = int(np.prod(sa[:-1]))
    a2, dy2 = a, dy
    if len(sa) > 2:
        a2 = ctx.emit1(OpKind.RESHAPE, ReshapeAttrs((m, sa[-1])), [a])
        dy2 = ctx.emit1(OpKind.RESHAPE, ReshapeAttrs((m, sb[1])), [dy])
    da = db = None
    if ctx.needs(op, 0):
        da = _gemm(ctx, dy2, b, False, True, 1.0)
        if len(sa) > 2:
            da = ctx.emit1(OpKind.RESHAPE, ReshapeAttrs(sa), [da])
    if ctx.needs(op, 1):
        db = _gemm(ctx, a2, dy2, True, False, 1.0)
    return [da, db]
