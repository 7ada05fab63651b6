"""Activations, broadcasting arithmetic, Identity, Dropout (inference form) and Cast between floats.

Opset 6 spelled broadcasting with attributes: Add/Sub/Mul/Div-6 broadcast B only with
``broadcast=1``, aligning B's dimensions with A's starting at ``axis`` (default: the trailing
ones), and PRelu-6 applies a slope of shape (C,) per channel. Those are rewritten to numpy
broadcasting here (B gets trailing 1s), so the ops themselves have one semantics.

A unary op (``OpGroup.UNARY``) needs no converter of its own: its ONNX op type is its kind's name
and its attributes parse from their ``onnx_attr`` declaration (Clip's bounds, attributes until
opset 10 and inputs since 11, included). Dropout, which imports only for inference, is the exception.
"""
from __future__ import annotations

import numpy as np
import onnx

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.ops import NoAttrs, OpGroup, OpKind, op_def
from convc.ops.elementwise import DropoutAttrs
from convc.ops.shape import ReshapeAttrs


def _reshaped(ctx: NodeContext, i: int, shape: tuple[int, ...], suffix: str) -> str:
    """Input ``i`` viewed with ``shape`` (same elements): a folded constant or a Reshape op."""
    if ctx.input_shape(i) == shape:
        return ctx.inputs[i]
    (out,) = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(shape), [ctx.inputs[i]], [ctx.fresh_tensor(suffix)],
                        name=f"{ctx.name}/{suffix}")
    return out


def legacy_broadcast_inputs(ctx: NodeContext) -> list[str]:
    """The two inputs of an opset-6 binary op, B reshaped so numpy broadcasting means what ``broadcast``
    and ``axis`` said."""
    a, b = ctx.input_shape(0), ctx.input_shape(1)
    if not int(ctx.attr("broadcast", 0)):
        if a != b:
            raise ctx.error(f"A.shape={a} and B.shape={b} differ but broadcast=0 (opset {ctx.opset} broadcasts "
                            "only when asked to)")
        return list(ctx.inputs[:2])
    axis = ctx.attr("axis", None)
    axis = len(a) - len(b) if axis is None else int(axis) + (len(a) if int(axis) < 0 else 0)
    if not 0 <= axis <= len(a) - len(b) or any(d not in (1, a[axis + k]) for k, d in enumerate(b)):
        raise ctx.error(f"B.shape={b} does not broadcast to A.shape={a} at axis={ctx.attr('axis', None)}")
    return [ctx.inputs[0], _reshaped(ctx, 1, b + (1,) * (len(a) - axis - len(b)), "B_aligned")]


def _binary(op_type: str, kind: OpKind) -> None:
    def legacy(ctx: NodeContext) -> None:
        ctx.require_float()
        ctx.add_op(kind, NoAttrs(), legacy_broadcast_inputs(ctx))

    def convert(ctx: NodeContext) -> None:
        ctx.require_float()
        ctx.add_op(kind, NoAttrs(), ctx.present_inputs())
    legacy.__name__ = f"{op_type.lower()}_legacy_broadcast"
    convert.__name__ = op_type.lower()
    converter(op_type, until=6)(legacy)
    converter(op_type, since=7)(convert)


for _op_type, _kind in [("Add", OpKind.ADD), ("Mul", OpKind.MUL), ("Sub", OpKind.SUB), ("Div", OpKind.DIV)]:
    _binary(_op_type, _kind)


def _variadic(op_type: str, kind: OpKind) -> None:
    def convert(ctx: NodeContext) -> None:
        ctx.require_float()
        shapes = [ctx.input_shape(i) for i in range(len(ctx.inputs))]
        if ctx.opset < 8 and len(set(shapes)) > 1:
            raise ctx.error(f"{op_type}-6 does not broadcast (that came in opset 8), but the inputs have shapes "
                            f"{shapes}")
        ctx.add_op(kind, NoAttrs(), ctx.present_inputs())
    convert.__name__ = op_type.lower()
    converter(op_type)(convert)


for _op_type, _kind in [("Sum", OpKind.SUM), ("Max", OpKind.MAX), ("Min", OpKind.MIN)]:
    _variadic(_op_type, _kind)


# Pow with a constant scalar exponent, as exported models use it (x**2 in variances, x**3 in the tanh form
# of GELU, x**0.5): multiplications or the op that computes it exactly; any other exponent runs libm's powf
POW_BY_EXPONENT = {1.0: [OpKind.IDENTITY], 2.0: ["square"], 3.0: ["square", "times_x"], 0.5: [OpKind.SQRT],
                   -1.0: [OpKind.RECIPROCAL], -0.5: [OpKind.SQRT, OpKind.RECIPROCAL], -2.0: ["square", OpKind.RECIPROCAL]}


@converter("Pow")
def pow_(ctx: NodeContext) -> None:
    ctx.require_float(0)
    if not ctx.is_constant(1):
        ctx.require_float(1)
        ctx.add_op(OpKind.POW, NoAttrs(), ctx.inputs[:2])
        return
    e = np.asarray(ctx.constant(1))
    if e.size != 1 or float(e.reshape(-1)[0]) not in POW_BY_EXPONENT:
        # any other constant exponent, in the base's type (ONNX allows an integer exponent)
        exponent = ctx.state.fresh_name(f"{ctx.name}/exponent")
        ctx.state.values[exponent] = e.astype(ctx.input_type(0).dtype)
        ctx.add_op(OpKind.POW, NoAttrs(), [ctx.inputs[0], exponent])
        return
    steps = POW_BY_EXPONENT[float(e.reshape(-1)[0])]
    x = value = ctx.inputs[0]
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        out = None if last else [ctx.fresh_tensor(f"pow{i}_out")]
        if step == "square":
            inputs, kind = [value, value], OpKind.MUL
        elif step == "times_x":
            inputs, kind = [value, x], OpKind.MUL
        else:
            inputs, kind = [value], step
        value = ctx.add_op(kind, NoAttrs(), inputs, out, name=f"{ctx.name}/pow{i}")[0]


@converter("PRelu")
def prelu(ctx: NodeContext) -> None:
    ctx.require_float()
    x, slope = ctx.input_shape(0), ctx.input_shape(1)
    inputs = list(ctx.inputs[:2])
    if ctx.opset < 7 and len(x) > 2 and slope == (x[1],):
        inputs[1] = _reshaped(ctx, 1, (x[1],) + (1,) * (len(x) - 2), "slope_per_channel")  # PRelu-6: per channel
    ctx.add_op(OpKind.PRELU, NoAttrs(), inputs)


@converter("Cast")
def cast(ctx: NodeContext) -> None:
    """Cast of a run-time tensor: convc compiles float32 tensors, so only float32 -> float32 (an Identity)."""
    to = int(ctx.attr("to"))
    src = ctx.input_type(0).dtype
    target = onnx.TensorProto.DataType.Name(to) if to in onnx.TensorProto.DataType.values() else str(to)
    if to != onnx.TensorProto.FLOAT or src != np.float32:
        raise Unsupported(f"Cast of a run-time {src} tensor to {target}: convc compiles float32 tensors only, "
                          "so it supports Cast from float32 to float32 (other casts fold when their input is a "
                          "constant)")
    ctx.add_op(OpKind.IDENTITY, NoAttrs(), ctx.inputs[:1])


@converter("Dropout", until=11)
def dropout_ratio_attribute(ctx: NodeContext) -> None:
    if ctx.opset < 7 and not int(ctx.attr("is_test", 0)):
        raise Unsupported("is_test=0: Dropout-6 in training mode; convc imports Dropout for inference only")
    _dropout(ctx)


@converter("Dropout", since=12)
def dropout_ratio_input(ctx: NodeContext) -> None:
    """training_mode=True (PyTorch's TrainingMode.TRAINING export) imports as the same op: the training step
    drops (DropoutTrain), inference does not, as PyTorch's eval() does. Its mask is drawn at run time, so
    a graph that reads it is not supported."""
    training = ctx.has_input(2) and bool(np.asarray(ctx.constant(2)).reshape(-1)[0])
    if training and ctx.output_used(1):
        raise Unsupported("training_mode=True with its mask output used; convc draws the mask inside its training "
                          "step and does not expose it as a tensor")
    _dropout(ctx)


def _dropout(ctx: NodeContext) -> None:
    attrs = ctx.parse(DropoutAttrs)
    if not 0.0 <= attrs.ratio < 1.0:
        raise ctx.error(f"ratio={attrs.ratio} must be in [0, 1)")
    ctx.require_float(0)
    if ctx.output_used(1):  # at inference nothing is dropped: the mask is all true, a constant
        mask_dtype = np.bool_ if ctx.opset >= 10 else ctx.input_type(0).dtype
        ctx.set_output(1, np.ones(ctx.input_shape(0), dtype=mask_dtype))
    ctx.add_op(OpKind.DROPOUT, attrs, ctx.inputs[:1])


def _unary(kind: OpKind) -> None:
    """The converter of a unary op whose attributes are all declared with ``onnx_attr`` (or none)."""
    def convert(ctx: NodeContext) -> None:
        ctx.require_float(0)
        ctx.add_op(kind, ctx.parse(op_def(kind).attrs), ctx.inputs[:1])
    convert.__name__ = kind.name.lower()
    converter(kind.value)(convert)


# every other unary op: ONNX op type, attributes and defaults come from its OpDef
for _kind in sorted(OpGroup.UNARY - {OpKind.DROPOUT}, key=lambda k: k.value):
    _unary(_kind)
