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
    attrs = BatchNormAttrs(epsilon=float(ctx.attr("epsilon", 1e-5)), momentum=float(ctx.attr("momentum", 0.9)))
    ctx.add_op(OpKind.BATCH_NORM, attrs, ctx.inputs[:5])


@converter("LRN")
def lrn(ctx: NodeContext) -> None:
    ctx.require_float()
    size = int(ctx.attr("size"))
    if size < 1:
        raise ctx.error(f"size={size} must be positive")
    attrs = LrnAttrs(size, alpha=float(ctx.attr("alpha", 1e-4)), beta=float(ctx.attr("beta", 0.75)),
                     bias=float(ctx.attr("bias", 1.0)))
    ctx.add_op(OpKind.LRN, attrs, ctx.inputs[:1])
