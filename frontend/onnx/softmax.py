"""Softmax. Before opset 13 it flattens the input to 2-D at ``axis`` and normalizes the second dimension."""
from __future__ import annotations

import numpy as np

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.shape import normalize_axis
from convc.ops import OpKind
from convc.ops.shape import ReshapeAttrs
from convc.ops.softmax import SoftmaxAttrs


@converter("Softmax", until=12)
def softmax_coerced_2d(ctx: NodeContext) -> None:
    ctx.require_float()
    shape = ctx.input_shape(0)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 1)), len(shape))
    if int(np.prod(shape[axis + 1:], dtype=np.int64)) == 1:
        # the 2-D row is exactly the axis: no reshape needed (this also covers axis = last)
        ctx.add_op(OpKind.SOFTMAX, SoftmaxAttrs(axis), ctx.inputs[:1])
        return
    rows, cols = (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
    flat = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs((rows, cols)), ctx.inputs[:1], [ctx.fresh_tensor("flat")],
                      name=f"{ctx.name}/flatten")
    normalized = ctx.add_op(OpKind.SOFTMAX, SoftmaxAttrs(1), flat, [ctx.fresh_tensor("softmax")])
    ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(shape), normalized, name=f"{ctx.name}/unflatten")


@converter("Softmax", since=13)
def softmax(ctx: NodeContext) -> None:
    ctx.require_float()
    axis = normalize_axis(ctx, int(ctx.attr("axis", -1)), len(ctx.input_shape(0)))
    ctx.add_op(OpKind.SOFTMAX, SoftmaxAttrs(axis), ctx.inputs[:1])

