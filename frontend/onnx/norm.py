"""BatchNormalization, inference form (running statistics), and LRN."""
from __future__ import annotations

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.ops import OpKind
from convc.ops.norm import BatchNormAttrs, LrnAttrs


@converter("BatchNormalization")
def batch_norm(ctx: NodeContext) -> None:
    if ctx.opset < 7 and not int(ctx.attr("is_test", 0)):
        raise Unsupported("is_test=0 (BatchNormalization-6 in training mode); convc imports the inference form")
    if ctx.attr("training_mode", 0) != 0:
        raise Unsupported("training_mode=1 normalizes with batch statistics; convc imports the inference form")
    if ctx.attr("spatial", 1) != 1:
        raise Unsupported("spatial=0 (statistics per activation, not per channel) is not supported")
    used = [ctx.output_names[i] if i < len(ctx.output_names) else f"#{i}"
            for i in range(1, len(ctx.outputs)) if ctx.output_used(i)]
    if used:
        raise Unsupported(f"the optional outputs {used} are used; they exist only in training")
    ctx.require_float()
    ctx.add_op(OpKind.BATCH_NORM, ctx.parse(BatchNormAttrs), ctx.inputs[:5])


@converter("LRN")
def lrn(ctx: NodeContext) -> None:
    ctx.require_float()
    attrs = ctx.parse(LrnAttrs)
    if attrs.size < 1:
        raise ctx.error(f"size={attrs.size} must be positive")
    ctx.add_op(OpKind.LRN, attrs, ctx.inputs[:1])
