"""The Reduce* family, on float tensors at run time and on any constant at import.

Their axes are an attribute until opset 17 (ReduceSum: 12) and an optional input after; no axes
reduce every axis, unless ``noop_with_empty_axes`` (then the node is an identity).
ReduceSum, ReduceMax, ReduceMin and ReduceProd are convc ops (convc/ops/reduce.py); the others are
built from them: a mean over the spatial axes of an (N, C, ...) tensor -- squeeze-and-excitation
blocks written as ``x.mean((2, 3), keepdim=True)``, global pooling by mean -- is a GlobalAveragePool,
with its kernels, layouts and gradient, any other mean a ReduceSum scaled by 1/n; ReduceL1, ReduceL2,
ReduceSumSquare and ReduceLogSum are a ReduceSum with Abs, a square, Sqrt or Log around it; and
ReduceLogSumExp subtracts the maximum before Exp (m + log(sum(exp(x - m)))), so it does not overflow
where the result is finite.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter, folder
from convc.frontend.onnx.shape import _axes_value, _distinct_axes
from convc.ops import NoAttrs, OpKind
from convc.ops.pool import GlobalPoolAttrs
from convc.ops.reduce import ReduceAttrs
from convc.ops.shape import ReshapeAttrs

def _lowest(dtype: np.dtype):
    """The maximum of an empty set, as ONNX defines it: the lowest value of the type (False, -inf)."""
    return False if dtype == np.bool_ else -np.inf if dtype.kind == "f" else np.iinfo(dtype).min


def _highest(dtype: np.dtype):
    return True if dtype == np.bool_ else np.inf if dtype.kind == "f" else np.iinfo(dtype).max


# ONNX op type -> (the opset its axes became an input, numpy's reduction for constants)
REDUCE_OPS: dict[str, tuple[int, Callable[..., np.ndarray]]] = {
    "ReduceSum": (13, lambda x, axes, keep: x.sum(axis=axes, keepdims=keep)),
    "ReduceMean": (18, lambda x, axes, keep: x.mean(axis=axes, keepdims=keep, dtype=np.float64)),
    "ReduceMax": (18, lambda x, axes, keep: x.max(axis=axes, keepdims=keep, initial=_lowest(x.dtype))),
    "ReduceMin": (18, lambda x, axes, keep: x.min(axis=axes, keepdims=keep, initial=_highest(x.dtype))),
    "ReduceProd": (18, lambda x, axes, keep: x.prod(axis=axes, keepdims=keep)),
    "ReduceL1": (18, lambda x, axes, keep: np.abs(x).sum(axis=axes, keepdims=keep)),
    "ReduceL2": (18, lambda x, axes, keep: np.sqrt(np.square(x.astype(np.float64)).sum(axis=axes, keepdims=keep))),
    "ReduceSumSquare": (18, lambda x, axes, keep: np.square(x).sum(axis=axes, keepdims=keep)),
    "ReduceLogSum": (18, lambda x, axes, keep: np.log(x.astype(np.float64).sum(axis=axes, keepdims=keep))),
    "ReduceLogSumExp": (18, lambda x, axes, keep: np.log(np.exp(x.astype(np.float64)).sum(axis=axes,
                                                                                             keepdims=keep))),
}
PRIMITIVE = {"ReduceSum": OpKind.REDUCE_SUM, "ReduceMax": OpKind.REDUCE_MAX, "ReduceMin": OpKind.REDUCE_MIN,
             "ReduceProd": OpKind.REDUCE_PROD}


def _axes(ctx: NodeContext, from_input: bool) -> tuple[int, ...] | None:
    """The reduced axes, non-negative and sorted; None for an identity (empty axes, noop_with_empty_axes)."""
    rank = len(ctx.input_shape(0))
    axes = _axes_value(ctx, 1) if from_input else (list(ctx.ints("axes")) if ctx.ints("axes") is not None else None)
    if not axes:
        if from_input and int(ctx.attr("noop_with_empty_axes", 0)):
            return None
        return tuple(range(rank))
    return tuple(sorted(_distinct_axes(ctx, axes, rank)))


class _Builder:
    """Adds the ops of one Reduce* node, each under a name derived from the node's."""

    def __init__(self, ctx: NodeContext, axes: tuple[int, ...]):
        self.ctx, self.axes = ctx, axes
        shape = ctx.input_shape(0)
        self.keepdims_shape = tuple(1 if i in axes else d for i, d in enumerate(shape))
        self.out_shape = self.keepdims_shape if int(ctx.attr("keepdims", 1)) else \
            tuple(d for i, d in enumerate(shape) if i not in axes)
        self.count = int(np.prod([shape[a] for a in axes], dtype=np.int64))

    def op(self, kind: OpKind, attrs, inputs: list[str], step: str, last: bool = False) -> str:
        ctx = self.ctx
        out = None if last else [ctx.fresh_tensor(f"{step}_out")]  # tensors and ops share one namespace
        return ctx.add_op(kind, attrs, inputs, out, name=f"{ctx.name}/{step}")[0]

    def constant(self, step: str, value: float) -> str:
        name = self.ctx.state.fresh_name(f"{self.ctx.name}/{step}")
        self.ctx.state.values[name] = np.array(value, dtype=self.ctx.input_type(0).dtype)
        return name

    def reduce(self, kind: OpKind, x: str, step: str, last: bool = False, keepdims: bool = False) -> str:
        shape = self.keepdims_shape if keepdims else self.out_shape
        return self.op(kind, ReduceAttrs(self.axes, shape), [x], step, last)


def _convert(op_type: str, ctx: NodeContext, from_input: bool) -> None:
    ctx.require_float(0)
    axes = _axes(ctx, from_input)
    x = ctx.inputs[0]
    if axes is None:
        ctx.add_op(OpKind.IDENTITY, NoAttrs(), [x])
        return
    r = _Builder(ctx, axes)
    rank = len(ctx.input_shape(0))
    if op_type in PRIMITIVE:
        r.reduce(PRIMITIVE[op_type], x, "reduce", last=True)
    elif op_type == "ReduceMean" and rank >= 3 and axes == tuple(range(2, rank)):
        if r.out_shape == r.keepdims_shape:
            ctx.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [x])
        else:
            pooled = r.op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [x], "global_pool")
            r.op(OpKind.RESHAPE, ReshapeAttrs(r.out_shape), [pooled], "squeeze", last=True)
    elif op_type == "ReduceMean":
        total = r.reduce(OpKind.REDUCE_SUM, x, "reduce_sum")
        r.op(OpKind.MUL, NoAttrs(), [total, r.constant("inv_count", 1.0 / r.count)], "scale", last=True)
    elif op_type == "ReduceL1":
        r.reduce(OpKind.REDUCE_SUM, r.op(OpKind.ABS, NoAttrs(), [x], "abs"), "reduce_sum", last=True)
    elif op_type in ("ReduceL2", "ReduceSumSquare"):
        squares = r.op(OpKind.MUL, NoAttrs(), [x, x], "square")
        if op_type == "ReduceSumSquare":
            r.reduce(OpKind.REDUCE_SUM, squares, "reduce_sum", last=True)
        else:
            r.op(OpKind.SQRT, NoAttrs(), [r.reduce(OpKind.REDUCE_SUM, squares, "reduce_sum")], "sqrt", last=True)
    elif op_type == "ReduceLogSum":
        r.op(OpKind.LOG, NoAttrs(), [r.reduce(OpKind.REDUCE_SUM, x, "reduce_sum")], "log", last=True)
    else:  # ReduceLogSumExp: m + log(sum(exp(x - m))), m the maximum over the axes
        m = r.reduce(OpKind.REDUCE_MAX, x, "max", keepdims=True)
        e = r.op(OpKind.EXP, NoAttrs(), [r.op(OpKind.SUB, NoAttrs(), [x, m], "shift")], "exp")
        lse = r.op(OpKind.LOG, NoAttrs(), [r.reduce(OpKind.REDUCE_SUM, e, "reduce_sum", keepdims=True)], "log")
        total = r.op(OpKind.ADD, NoAttrs(), [lse, m], "add_max", last=r.out_shape == r.keepdims_shape)
        if r.out_shape != r.keepdims_shape:
            r.op(OpKind.RESHAPE, ReshapeAttrs(r.out_shape), [total], "squeeze", last=True)


def _fold(op_type: str, ctx: NodeContext, from_input: bool) -> list[np.ndarray]:
    """Constant reductions (shape arithmetic on integers, weights), in the input's dtype as ONNX defines
    (as onnx's reference: numpy's result cast back, so an integer mean truncates)."""
    x = np.asarray(ctx.constant(0))
    axes = _axes(ctx, from_input)
    if axes is None:
        return [x]
    with np.errstate(all="ignore"):
        y = REDUCE_OPS[op_type][1](x, axes, bool(int(ctx.attr("keepdims", 1))))
    return [np.asarray(y).astype(x.dtype)]


def _register(op_type: str, input_since: int) -> None:
    def convert_attribute(ctx: NodeContext) -> None:
        _convert(op_type, ctx, from_input=False)

    def convert_input(ctx: NodeContext) -> None:
        _convert(op_type, ctx, from_input=True)

    def fold_attribute(ctx: NodeContext) -> list[np.ndarray]:
        return _fold(op_type, ctx, from_input=False)

    def fold_input(ctx: NodeContext) -> list[np.ndarray]:
        return _fold(op_type, ctx, from_input=True)

    name = op_type[len("Reduce"):].lower()
    for fn, suffix in ((convert_attribute, "axes_attribute"), (convert_input, "axes_input"),
                       (fold_attribute, "fold_axes_attribute"), (fold_input, "fold_axes_input")):
        fn.__name__ = f"reduce_{name}_{suffix}"
    converter(op_type, until=input_since - 1)(convert_attribute)
    converter(op_type, since=input_since)(convert_input)
    folder(op_type, until=input_since - 1)(fold_attribute)
    folder(op_type, since=input_since)(fold_input)


for _op_type, (_since, _) in REDUCE_OPS.items():
    _register(_op_type, _since)
