"""ReduceMean and ReduceSum, on float tensors at run time and on any constant at import.

Their axes are an attribute until opset 17 (ReduceMean) / 12 (ReduceSum) and an optional input after;
no axes reduce every axis, unless ``noop_with_empty_axes`` (then the node is an identity).
A mean over the spatial axes of an (N, C, ...) tensor -- squeeze-and-excitation blocks written as
``x.mean((2, 3), keepdim=True)``, global pooling by mean -- is a GlobalAveragePool, with its kernels,
layouts and gradient; any other mean is a ReduceSum scaled by 1/n.
"""
from __future__ import annotations

import numpy as np

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter, folder
from convc.frontend.onnx.shape import _axes_value, _distinct_axes
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise_grad import ReduceSumAttrs
from convc.ops.pool import GlobalPoolAttrs
from convc.ops.shape import ReshapeAttrs


def _axes(ctx: NodeContext, from_input: bool) -> tuple[int, ...] | None:
    """The reduced axes, non-negative and sorted; None for an identity (empty axes, noop_with_empty_axes)."""
    rank = len(ctx.input_shape(0))
    axes = _axes_value(ctx, 1) if from_input else (list(ctx.ints("axes")) if ctx.ints("axes") is not None else None)
    if not axes:
        if from_input and int(ctx.attr("noop_with_empty_axes", 0)):
            return None
        return tuple(range(rank))
    return tuple(sorted(_distinct_axes(ctx, axes, rank)))


def _out_shape(ctx: NodeContext, axes: tuple[int, ...]) -> tuple[int, ...]:
    shape = ctx.input_shape(0)
    if int(ctx.attr("keepdims", 1)):
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce(ctx: NodeContext, from_input: bool, mean: bool) -> None:
    ctx.require_float(0)
    axes = _axes(ctx, from_input)
    if axes is None:
        ctx.add_op(OpKind.IDENTITY, NoAttrs(), ctx.inputs[:1])
        return
    shape, out = ctx.input_shape(0), _out_shape(ctx, axes)
    if mean and len(shape) >= 3 and axes == tuple(range(2, len(shape))):
        if len(out) == len(shape):
            ctx.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), ctx.inputs[:1])
        else:
            pooled = ctx.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), ctx.inputs[:1],
                                [ctx.fresh_tensor("pooled")], name=f"{ctx.name}/global_pool")
            ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(out), pooled, name=f"{ctx.name}/squeeze")
        return
    if not mean:
        ctx.add_op(OpKind.REDUCE_SUM, ReduceSumAttrs(axes, out), ctx.inputs[:1])
        return
    total = ctx.add_op(OpKind.REDUCE_SUM, ReduceSumAttrs(axes, out), ctx.inputs[:1], [ctx.fresh_tensor("sum")],
                       name=f"{ctx.name}/reduce_sum")
    n = int(np.prod([shape[a] for a in axes], dtype=np.int64))
    scale = ctx.state.fresh_name(f"{ctx.name}/inv_count")
    ctx.state.values[scale] = np.array(1.0 / n, dtype=ctx.input_type(0).dtype)
    ctx.add_op(OpKind.MUL, NoAttrs(), [total[0], scale], name=f"{ctx.name}/scale")


def _fold(ctx: NodeContext, from_input: bool, mean: bool) -> list[np.ndarray]:
    """Constant reductions (shape arithmetic on integers, weights), in the input's dtype as ONNX defines."""
    x = np.asarray(ctx.constant(0))
    axes = _axes(ctx, from_input)
    if axes is None:
        return [x]
    keep = bool(int(ctx.attr("keepdims", 1)))
    if mean:  # as onnx's reference: numpy's mean, cast back (integers truncate)
        y = x.mean(axis=axes, keepdims=keep, dtype=np.float64)
    else:
        y = x.sum(axis=axes, keepdims=keep)
    return [np.asarray(y).astype(x.dtype)]


@converter("ReduceMean", until=17)
def reduce_mean_axes_attribute(ctx: NodeContext) -> None:
    _reduce(ctx, from_input=False, mean=True)


@converter("ReduceMean", since=18)
def reduce_mean_axes_input(ctx: NodeContext) -> None:
    _reduce(ctx, from_input=True, mean=True)


@converter("ReduceSum", until=12)
def reduce_sum_axes_attribute(ctx: NodeContext) -> None:
    _reduce(ctx, from_input=False, mean=False)


@converter("ReduceSum", since=13)
def reduce_sum_axes_input(ctx: NodeContext) -> None:
    _reduce(ctx, from_input=True, mean=False)


@folder("ReduceMean", until=17)
def fold_reduce_mean_axes_attribute(ctx: NodeContext) -> list[np.ndarray]:
    return _fold(ctx, from_input=False, mean=True)


@folder("ReduceMean", since=18)
def fold_reduce_mean_axes_input(ctx: NodeContext) -> list[np.ndarray]:
    return _fold(ctx, from_input=True, mean=True)


@folder("ReduceSum", until=12)
def fold_reduce_sum_axes_attribute(ctx: NodeContext) -> list[np.ndarray]:
    return _fold(ctx, from_input=False, mean=False)


@folder("ReduceSum", since=13)
def fold_reduce_sum_axes_input(ctx: NodeContext) -> list[np.ndarray]:
    return _fold(ctx, from_input=True, mean=False)
