"""BatchNormalization (running statistics at inference, batch statistics in the training step; either mode imports),
LRN, LayerNormalization, InstanceNormalization and GroupNormalization.

The training step trains a normalization's scale and shift when they are the model's initializers (PyTorch's
``weight`` and ``bias``), under their own names and shapes, so a Trainer's state_dict keys are the initializer
names. The converters declare the role of every constant they read or make in ``graph.metadata[
"parameter_roles"]`` (passes/autodiff/training.py's DECLARED_ROLES): "norm" for a scale, "bias" for a shift,
None for a value that is no parameter (a Constant node's, PyTorch's export of ``affine=False``; the all-ones
scale of the LayerNormalization that InstanceNormalization and GroupNormalization are built from)."""
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


_ROLES = "parameter_roles"  # passes/autodiff/training.py's DECLARED_ROLES (the frontend does not import passes)


def _declare(ctx: NodeContext, name: str, role: str | None) -> None:
    """``name`` trains with ``role`` when it is an initializer of the model; otherwise it is no parameter."""
    ctx.graph.metadata.setdefault(_ROLES, {})[name] = role if name in ctx.state.initializers else None


def _fixed(ctx: NodeContext, base: str, value: np.ndarray) -> str:
    """A constant the import adds as part of a decomposition: never a parameter."""
    name = ctx.state.fresh_name(f"{ctx.name}/{base}")
    ctx.state.values[name] = value
    ctx.graph.metadata.setdefault(_ROLES, {})[name] = None
    return name


def _viewed(ctx: NodeContext, i: int, shape: tuple[int, ...], role: str) -> str:
    """Input ``i`` (a scale or shift) as ``shape``: a Reshape op, not a folded copy, so that a constant keeps its
    name and shape and trains as itself (the gradient flows back through the view)."""
    name = ctx.inputs[i]
    if ctx.is_constant(i):
        _declare(ctx, name, role)
        if tuple(ctx.input_shape(i)) == shape:
            return name
        ctx.state.materialize(name)
        out = ctx.fresh_tensor(f"{'scale' if i == 1 else 'bias'}_view")
        ctx.graph.add_op(OpKind.RESHAPE, ReshapeAttrs(shape), [name], [out],
                         name=ctx.state.fresh_name(f"{ctx.name}/view{i}"))
        return out
    return ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(shape), [name], [ctx.fresh_tensor(f"input{i}_view")],
                      name=f"{ctx.name}/reshape{i}")[0]


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
    for i, name, role in ((1, "Scale", "norm"), (2, "B", "bias")):
        if not ctx.has_input(i):
            continue
        given = ctx.input_shape(i)
        if given == row:
            if ctx.is_constant(i):
                _declare(ctx, ctx.inputs[i], role)
            params.append(ctx.inputs[i])
            continue
        # a Scale or B of shape (1, C) or (C,) against a row (H, C), say: broadcast once, at import
        if not ctx.is_constant(i):
            raise Unsupported(f"{name} of shape {given} computed at run time must have the normalized shape {row}")
        try:
            value = np.broadcast_to(ctx.constant(i), row)
        except ValueError:
            raise ctx.error(f"{name} of shape {given} does not broadcast to the normalized shape {row}") from None
        if ctx.inputs[i] in ctx.state.initializers:
            # a parameter: broadcast at run time (an Add of zeros), so that it trains as itself, in its own shape
            _declare(ctx, ctx.inputs[i], role)
            zeros = ctx.state.materialize(_fixed(ctx, "zeros", np.zeros(row, value.dtype)))
            full = ctx.fresh_tensor(f"{name.lower()}_broadcast")
            ctx.graph.add_op(OpKind.ADD, NoAttrs(), [ctx.state.materialize(ctx.inputs[i]), zeros], [full],
                             name=ctx.state.fresh_name(f"{ctx.name}/broadcast{i}"))
        else:
            full = _fixed(ctx, name.lower(), np.ascontiguousarray(value))
        params.append(full)
    outputs = [ctx.outputs[0]]
    if statistics:  # Mean and InvStdDev, under fresh names where the node leaves one out
        outputs += [ctx.outputs[i] if i < len(ctx.outputs) and ctx.outputs[i] else ctx.fresh_tensor(stat)
                    for i, stat in ((1, "mean"), (2, "inv_std_dev"))]
    ctx.add_op(OpKind.LAYER_NORM, ctx.parse(LayerNormAttrs, axis=axis, statistics=statistics),
               [ctx.inputs[0], *params], outputs)


def _affine(ctx: NodeContext, normalized: str, shape: tuple[int, ...]) -> None:
    """y = normalized * scale + bias, with the scale and bias viewed as ``shape`` (per channel or per group)."""
    scaled = ctx.add_op(OpKind.MUL, NoAttrs(), [normalized, _viewed(ctx, 1, shape, "norm")],
                        [ctx.fresh_tensor("scaled")], name=f"{ctx.name}/scale")
    ctx.add_op(OpKind.ADD, NoAttrs(), [scaled[0], _viewed(ctx, 2, shape, "bias")], name=f"{ctx.name}/shift")


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
    ones = _fixed(ctx, "ones", np.ones(shape[2:], dtype=ctx.input_type(0).dtype))
    eps = float(ctx.attr("epsilon", 1e-5))
    normalized = ctx.add_op(OpKind.LAYER_NORM, LayerNormAttrs(axis=2, epsilon=eps), [ctx.inputs[0], ones],
                            [ctx.fresh_tensor("normalized")], name=f"{ctx.name}/normalize")
    _affine(ctx, normalized[0], (c,) + (1,) * (len(shape) - 2))


@converter("GroupNormalization", since=18)
def group_norm(ctx: NodeContext) -> None:
    """Channels split into ``num_groups`` groups, each (image, group) normalized over its channels and
    positions: the input viewed as (N, G, C/G * spatial), a LayerNormalization over the last axis (scale all
    ones), then scaled and shifted: opset 18's per-group scale and bias on that view (as onnxruntime reads
    them), opset 21's per-channel ones on the input's shape, viewed back."""
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
    given = [ctx.input_shape(i) for i in (1, 2)]
    for name, have in zip(("scale", "bias"), given):
        if have not in ((c,), (groups,)):
            raise ctx.error(f"{name} has shape {have}, expected ({c},) (opset 21) or ({groups},) (opset 18)")
    if given[0] != given[1]:
        raise ctx.error(f"scale has shape {given[0]} and bias {given[1]}: both must be per channel or per group")
    per_group = given[0] == (groups,) and groups != c
    rest = int(np.prod(shape[1:], dtype=np.int64)) // groups
    grouped = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs((n, groups, rest)), [ctx.inputs[0]],
                         [ctx.fresh_tensor("grouped")], name=f"{ctx.name}/group")
    ones = _fixed(ctx, "ones", np.ones((rest,), dtype=ctx.input_type(0).dtype))
    eps = float(ctx.attr("epsilon", 1e-5))
    normalized = ctx.add_op(OpKind.LAYER_NORM, LayerNormAttrs(axis=2, epsilon=eps), [grouped[0], ones],
                            [ctx.fresh_tensor("normalized")], name=f"{ctx.name}/normalize")
    if per_group:
        shifted = ctx.fresh_tensor("affine")
        scaled = ctx.add_op(OpKind.MUL, NoAttrs(), [normalized[0], _viewed(ctx, 1, (groups, 1), "norm")],
                            [ctx.fresh_tensor("scaled")], name=f"{ctx.name}/scale")
        ctx.add_op(OpKind.ADD, NoAttrs(), [scaled[0], _viewed(ctx, 2, (groups, 1), "bias")], [shifted],
                   name=f"{ctx.name}/shift")
        ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(tuple(shape)), [shifted], name=f"{ctx.name}/ungroup")
        return
    back = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(tuple(shape)), normalized, [ctx.fresh_tensor("ungrouped")],
                      name=f"{ctx.name}/ungroup")
    _affine(ctx, back[0], (c,) + (1,) * (len(shape) - 2))
