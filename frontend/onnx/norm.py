"""BatchNormalization (running statistics at inference, batch statistics in the training step; either mode imports), LRN, LayerNormalization and InstanceNormalization."""
from __future__ import annotations

import numpy as np

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.shape import normalize_axis
from convc.ops import NoAttrs, OpKind
from convc.ops.norm import BatchNormAttrs, LayerNormAttrs, LrnAttrs
from convc.ops.shape import ReshapeAttrs


@converter("BatchNormalization")
def batch_norm(ctx: NodeContext) -> None:
    if ctx.opset < 7 and not int(ctx.attr("is_test", 0)):
        raise Unsupported("is_test=0 (BatchNormalization-6 in training mode); convc imports the inference form")
    # training_mode=1 (PyTorch's TrainingMode.TRAINING export) imports as the same op: the training step
    # normalizes every BatchNormalization with batch statistics and updates the running ones
    # (passes/autodiff/training.py), inference reads the running statistics, as PyTorch's eval() does
    if ctx.attr("spatial", 1) != 1:
        raise Unsupported("spatial=0 (statistics per activation, not per channel) is not supported")
    used = [ctx.output_names[i] if i < len(ctx.output_names) else f"#{i}"
            for i in range(1, len(ctx.outputs)) if ctx.output_used(i)]
    if used:
        raise Unsupported(f"the optional outputs {used} are used; convc updates the running statistics inside "
                          "its training step and does not expose them as tensors")
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


@converter("InstanceNormalization")
def instance_norm(ctx: NodeContext) -> None:
    """Each (image, channel) plane normalized over its spatial positions, then scaled and shifted per channel:
    a LayerNormalization over the axes after the channel (its scale all ones), then per-channel Mul and Add."""
    ctx.require_float()
    shape = ctx.input_shape(0)
    if len(shape) < 3:
        raise ctx.error(f"the input must be (N, C, D1, ...), got shape {shape}")
    c = shape[1]
    for i, name in ((1, "scale"), (2, "B")):
        if ctx.input_shape(i) != (c,):
            raise ctx.error(f"{name} has shape {ctx.input_shape(i)}, expected ({c},) for the input's {c} channels")
    dtype = ctx.input_type(0).dtype
    ones = ctx.state.fresh_name(f"{ctx.name}/ones")
    ctx.state.values[ones] = np.ones(shape[2:], dtype=dtype)
    per_channel = (c,) + (1,) * (len(shape) - 2)
    scale, bias = [], []
    for i, out in ((1, scale), (2, bias)):
        if ctx.is_constant(i):
            name = ctx.state.fresh_name(f"{ctx.name}/{'scale' if i == 1 else 'bias'}")
            ctx.state.values[name] = np.asarray(ctx.constant(i)).reshape(per_channel)
            out.append(name)
        else:
            out.append(ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(per_channel), [ctx.inputs[i]],
                                  [ctx.fresh_tensor(f"input{i}_per_channel")], name=f"{ctx.name}/reshape{i}")[0])
    eps = float(ctx.attr("epsilon", 1e-5))
    normalized = ctx.add_op(OpKind.LAYER_NORM, LayerNormAttrs(axis=2, epsilon=eps), [ctx.inputs[0], ones],
                            [ctx.fresh_tensor("normalized")], name=f"{ctx.name}/normalize")
    scaled = ctx.add_op(OpKind.MUL, NoAttrs(), [normalized[0], scale[0]], [ctx.fresh_tensor("scaled")],
                        name=f"{ctx.name}/scale")
    ctx.add_op(OpKind.ADD, NoAttrs(), [scaled[0], bias[0]], name=f"{ctx.name}/shift")


@converter("GroupNormalization", since=18)
def group_norm(ctx: NodeContext) -> None:
    """Channels split into ``num_groups`` groups, each (image, group) normalized over its channels and
    positions: the input viewed as (N, G, C/G * spatial), a LayerNormalization over the last axis (scale all
    ones), viewed back, then scaled and shifted per channel (opset 21's per-channel scale and bias; opset 18's
    per-group ones repeated to the channels, as onnxruntime reads them)."""
    ctx.require_float()
    shape = ctx.input_shape(0)
    groups = int(ctx.attr("num_groups"))
    if len(shape) < 3:
        raise ctx.error(f"the input must be (N, C, D1, ...), got shape {shape}")
    n, c = shape[0], shape[1]
    if groups < 1 or c % groups:
        raise ctx.error(f"num_groups={groups} must divide the {c} channels")
    if int(ctx.attr("stash_type", 1)) != 1:
        raise Unsupported(f"stash_type={ctx.attr('stash_type')}: convc computes the statistics in float32")
    per_channel = (c,) + (1,) * (len(shape) - 2)
    params = []
    for i, name in ((1, "scale"), (2, "bias")):
        given = ctx.input_shape(i)
        if given not in ((c,), (groups,)):
            raise ctx.error(f"{name} has shape {given}, expected ({c},) (opset 21) or ({groups},) (opset 18)")
        value = np.asarray(ctx.constant(i))  # a run-time scale or bias is Unsupported, naming the input
        if given == (groups,):
            value = np.repeat(value, c // groups)
        const = ctx.state.fresh_name(f"{ctx.name}/{name}")
        ctx.state.values[const] = value.reshape(per_channel).astype(ctx.input_type(0).dtype)
        params.append(const)
    rest = int(np.prod(shape[1:], dtype=np.int64)) // groups
    grouped = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs((n, groups, rest)), [ctx.inputs[0]],
                         [ctx.fresh_tensor("grouped")], name=f"{ctx.name}/group")
    ones = ctx.state.fresh_name(f"{ctx.name}/ones")
    ctx.state.values[ones] = np.ones((rest,), dtype=ctx.input_type(0).dtype)
    eps = float(ctx.attr("epsilon", 1e-5))
    normalized = ctx.add_op(OpKind.LAYER_NORM, LayerNormAttrs(axis=2, epsilon=eps), [grouped[0], ones],
                            [ctx.fresh_tensor("normalized")], name=f"{ctx.name}/normalize")
    back = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(tuple(shape)), normalized, [ctx.fresh_tensor("ungrouped")],
                      name=f"{ctx.name}/ungroup")
    scaled = ctx.add_op(OpKind.MUL, NoAttrs(), [back[0], params[0]], [ctx.fresh_tensor("scaled")],
                        name=f"{ctx.name}/scale")
    ctx.add_op(OpKind.ADD, NoAttrs(), [scaled[0], params[1]], name=f"{ctx.name}/shift")
