"""Softmax and LogSoftmax. Before opset 13 they flatten the input to 2-D at ``axis`` and normalize the second
dimension."""
from __future__ import annotations

import numpy as np

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.shape import normalize_axis
from convc.ops import OpKind
from convc.ops.shape import ReshapeAttrs
from convc.ops.softmax import SoftmaxAttrs


def _coerced_2d(ctx: NodeContext, kind: OpKind) -> None:
    ctx.require_float()
    shape = ctx.input_shape(0)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 1)), len(shape))
    if int(np.prod(shape[axis + 1:], dtype=np.int64)) == 1:
        # the 2-D row is exactly the axis: no reshape needed (this also covers axis = last)
        ctx.add_op(kind, SoftmaxAttrs(axis), ctx.inputs[:1])
        return
    rows, cols = (int(np.prod(shape[:axis], dtype=np.int64)), int(np.prod(shape[axis:], dtype=np.int64)))
    flat = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs((rows, cols)), ctx.inputs[:1], [ctx.fresh_tensor("flat")],
                      name=f"{ctx.name}/flatten")
    normalized = ctx.add_op(kind, SoftmaxAttrs(1), flat, [ctx.fresh_tensor(kind.value.lower())])
    ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(shape), normalized, name=f"{ctx.name}/unflatten")


def _one_axis(ctx: NodeContext, kind: OpKind) -> None:
    ctx.require_float()
    axis = normalize_axis(ctx, int(ctx.attr("axis", -1)), len(ctx.input_shape(0)))
    ctx.add_op(kind, SoftmaxAttrs(axis), ctx.inputs[:1])


@converter("Softmax", until=12)
def softmax_coerced_2d(ctx: NodeContext) -> None:
    _coerced_2d(ctx, OpKind.SOFTMAX)


@converter("Softmax", since=13)
def softmax(ctx: NodeContext) -> None:
    _one_axis(ctx, OpKind.SOFTMAX)


@converter("LogSoftmax", until=12)
def log_softmax_coerced_2d(ctx: NodeContext) -> None:
    _coerced_2d(ctx, OpKind.LOG_SOFTMAX)


@converter("LogSoftmax", since=13)
def log_softmax(ctx: NodeContext) -> None:
    _one_axis(ctx, OpKind.LOG_SOFTMAX)
