"""BatchNormalization, inference form (running statistics), LRN and LayerNormalization."""
from __future__ import annotations

import numpy as np

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.shape import normalize_axis
from convc.ops import OpKind
from convc.ops.norm import BatchNormAttrs, LayerNormAttrs, LrnAttrs


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


@converter("LayerNormalization", since=17)
def layer_norm(ctx: NodeContext) -> None:
    ctx.require_float(0, 1, 2)
    if int(ctx.attr("stash_type", 1)) != 1:
        raise Unsupported(f"stash_type={ctx.attr('stash_type')}: convc computes the statistics in float32 "
                          "(stash_type=1)")
    statistics = any(ctx.output_used(i) for i in (1, 2))
    shape = ctx.input_shape(0)
    axis = normalize_axis(ctx, int(ctx.attr("axis", -1)), len(shape))
    row = tuple(shape[axis:])
    params = []
    for i, name in ((1, "Scale"), (2, "B")):
        if not ctx.has_input(i):
            continue
        given = ctx.input_shape(i)
        if given == row:
            params.append(ctx.inputs[i])
            continue
        # a Scale or B of shape (1, C) or (C,) against a row (H, C), say: broadcast once, at import
        if not ctx.is_constant(i):
            raise Unsupported(f"{name} of shape {given} computed at run time must have the normalized shape {row}")
        try:
            value = np.broadcast_to(ctx.constant(i), row)
        except ValueError:
            raise ctx.error(f"{name} of shape {given} does not broadcast to the normalized shape {row}") from None
        full = ctx.state.fresh_name(f"{ctx.name}/{name.lower()}")
        ctx.state.values[full] = np.ascontiguousarray(value)
        params.append(full)
    outputs = [ctx.outputs[0]]
    if statistics:  # Mean and InvStdDev, under fresh names where the node leaves one out
        outputs += [ctx.outputs[i] if i < len(ctx.outputs) and ctx.outputs[i] else ctx.fresh_tensor(stat)
                    for i, stat in ((1, "mean"), (2, "inv_std_dev"))]
    ctx.add_op(OpKind.LAYER_NORM, ctx.parse(LayerNormAttrs, axis=axis, statistics=statistics),
               [ctx.inputs[0], *params], outputs)
