"""Activations, broadcasting arithmetic, Identity, Dropout (inference form) and Cast between floats.

Opset 6 spelled broadcasting with attributes: Add/Sub/Mul/Div-6 broadcast B only with
``broadcast=1``, aligning B's dimensions with A's starting at ``axis`` (default: the trailing
ones), and PRelu-6 applies a slope of shape (C,) per channel. Those are rewritten to numpy
broadcasting here (B gets trailing 1s), so the ops themselves have one semantics.
"""
from __future__ import annotations

import numpy as np
import onnx

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise import ClipAttrs, DropoutAttrs, EluAttrs, HardSigmoidAttrs, LeakyReluAttrs, SeluAttrs
from convc.ops.shape import ReshapeAttrs


def _simple(op_type: str, kind: OpKind) -> None:
    def convert(ctx: NodeContext) -> None:
        ctx.require_float()
        ctx.add_op(kind, NoAttrs(), ctx.present_inputs())
    convert.__name__ = op_type.lower()
    converter(op_type)(convert)


for _op_type, _kind in [("Relu", OpKind.RELU), ("Sigmoid", OpKind.SIGMOID), ("Tanh", OpKind.TANH),
                        ("Identity", OpKind.IDENTITY), ("HardSwish", OpKind.HARD_SWISH),
                        ("Softplus", OpKind.SOFTPLUS), ("Softsign", OpKind.SOFTSIGN)]:
    _simple(_op_type, _kind)


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


@converter("PRelu")
def prelu(ctx: NodeContext) -> None:
    ctx.require_float()
    x, slope = ctx.input_shape(0), ctx.input_shape(1)
    inputs = list(ctx.inputs[:2])
    if ctx.opset < 7 and len(x) > 2 and slope == (x[1],):
        inputs[1] = _reshaped(ctx, 1, (x[1],) + (1,) * (len(x) - 2), "slope_per_channel")  # PRelu-6: per channel
    ctx.add_op(OpKind.PRELU, NoAttrs(), inputs)


@converter("Elu")
def elu(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.ELU, EluAttrs(alpha=float(ctx.attr("alpha", 1.0))), ctx.inputs[:1])


@converter("Selu")
def selu(ctx: NodeContext) -> None:
    ctx.require_float()
    defaults = SeluAttrs()
    attrs = SeluAttrs(alpha=float(ctx.attr("alpha", defaults.alpha)), gamma=float(ctx.attr("gamma", defaults.gamma)))
    ctx.add_op(OpKind.SELU, attrs, ctx.inputs[:1])


@converter("HardSigmoid")
def hard_sigmoid(ctx: NodeContext) -> None:
    ctx.require_float()
    attrs = HardSigmoidAttrs(alpha=float(ctx.attr("alpha", 0.2)), beta=float(ctx.attr("beta", 0.5)))
    ctx.add_op(OpKind.HARD_SIGMOID, attrs, ctx.inputs[:1])


@converter("Clip", until=10)
def clip_bounds_attributes(ctx: NodeContext) -> None:
    ctx.require_float()
    attrs = ClipAttrs(float(ctx.attr("min", -np.inf)), float(ctx.attr("max", np.inf)))
    ctx.add_op(OpKind.CLIP, attrs, ctx.inputs[:1])


@converter("Clip", since=11)
def clip_bounds_inputs(ctx: NodeContext) -> None:
    """min and max are optional inputs; convc needs them as constants (ReLU6 exports them as initializers)."""
    ctx.require_float(0)
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if not ctx.has_input(i):
            bounds.append(default)
            continue
        v = np.asarray(ctx.constant(i))
        if v.size != 1:
            raise ctx.error(f"{ctx.input_names[i]} must be a scalar, got shape {v.shape}")
        bounds.append(float(v.reshape(-1)[0]))
    ctx.add_op(OpKind.CLIP, ClipAttrs(*bounds), ctx.inputs[:1])


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


@converter("LeakyRelu")
def leaky_relu(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.LEAKY_RELU, LeakyReluAttrs(alpha=float(ctx.attr("alpha", 0.01))), ctx.present_inputs())


@converter("Dropout", until=11)
def dropout_ratio_attribute(ctx: NodeContext) -> None:
    if ctx.opset < 7 and not int(ctx.attr("is_test", 0)):
        raise Unsupported("is_test=0: Dropout-6 in training mode; convc imports Dropout for inference only")
    _dropout(ctx, float(ctx.attr("ratio", 0.5)))


@converter("Dropout", since=12)
def dropout_ratio_input(ctx: NodeContext) -> None:
    if ctx.has_input(2) and bool(np.asarray(ctx.constant(2)).reshape(-1)[0]):
        raise Unsupported("training_mode=True; convc imports Dropout for inference only")
    ratio = 0.5
    if ctx.has_input(1):
        r = np.asarray(ctx.constant(1))
        if r.size != 1:
            raise ctx.error(f"ratio must be a scalar, got shape {r.shape}")
        ratio = float(r.reshape(-1)[0])
    _dropout(ctx, ratio)


def _dropout(ctx: NodeContext, ratio: float) -> None:
    if not 0.0 <= ratio < 1.0:
        raise ctx.error(f"ratio={ratio} must be in [0, 1)")
    ctx.require_float(0)
    if ctx.output_used(1):  # at inference nothing is dropped: the mask is all true, a constant
        mask_dtype = np.bool_ if ctx.opset >= 10 else ctx.input_type(0).dtype
        ctx.set_output(1, np.ones(ctx.input_shape(0), dtype=mask_dtype))
    ctx.add_op(OpKind.DROPOUT, DropoutAttrs(ratio=ratio), ctx.inputs[:1])
