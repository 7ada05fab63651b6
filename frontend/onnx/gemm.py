"""Gemm and MatMul."""
from __future__ import annotations

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter
from convc.ops import NoAttrs, OpKind
from convc.ops.gemm import GemmAttrs


@converter("Gemm")
def gemm(ctx: NodeContext) -> None:
    ctx.require_float()
    attrs = GemmAttrs(alpha=float(ctx.attr("alpha", 1.0)), beta=float(ctx.attr("beta", 1.0)),
                      trans_a=bool(ctx.attr("transA", 0)), trans_b=bool(ctx.attr("transB", 0)))
    ctx.add_op(OpKind.GEMM, attrs, ctx.present_inputs())


@converter("MatMul")
def matmul(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.MATMUL, NoAttrs(), ctx.present_inputs())
