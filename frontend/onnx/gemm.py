"""Gemm and MatMul."""
from __future__ import annotations

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter
from convc.ops import NoAttrs, OpKind
from convc.ops.gemm import GemmAttrs


@converter("Gemm")
def gemm(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.GEMM, ctx.parse(GemmAttrs), ctx.present_inputs())


@converter("MatMul")
def matmul(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.MATMUL, NoAttrs(), ctx.present_inputs())
