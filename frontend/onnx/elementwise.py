"""Activations, broadcasting arithmetic, Identity and Dropout (inference form)."""
from __future__ import annotations

import numpy as np

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise import DropoutAttrs, LeakyReluAttrs


def _simple(op_type: str, kind: OpKind) -> None:
    def convert(ctx: NodeContext) -> None:
        ctx.require_float()
        ctx.add_op(kind, NoAttrs(), ctx.present_inputs())
    convert.__name__ = op_type.lower()
    converter(op_type)(convert)


for _op_type, _kind in [("Relu", OpKind.RELU), ("Sigmoid", OpKind.SIGMOID), ("Tanh", OpKind.TANH),
                        ("Identity", OpKind.IDENTITY), ("Add", OpKind.ADD), ("Mul", OpKind.MUL)]:
    _simple(_op_type, _kind)


@converter("Sum")
def sum_(ctx: NodeContext) -> None:
    ctx.require_float()
    shapes = [ctx.input_shape(i) for i in range(len(ctx.inputs))]
    if ctx.opset < 8 and len(set(shapes)) > 1:
        raise ctx.error(f"Sum-6 does not broadcast (that came in opset 8), but the inputs have shapes {shapes}")
    ctx.add_op(OpKind.SUM, NoAttrs(), ctx.present_inputs())


@converter("LeakyRelu")
def leaky_relu(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.LEAKY_RELU, LeakyReluAttrs(alpha=float(ctx.attr("alpha", 0.01))), ctx.present_inputs())


@converter("Dropout", until=11)
def dropout_ratio_attribute(ctx: NodeContext) -> None:
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
    if ctx.output_used(1):
        raise Unsupported("the optional output 'mask' is used; convc imports Dropout for inference only")
    ctx.require_float(0)
    ctx.add_op(OpKind.DROPOUT, DropoutAttrs(ratio=ratio), ctx.inputs[:1])
