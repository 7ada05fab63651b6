"""Constant folding: numpy evaluation of nodes whose inputs are all constants.

Exporters compute shapes with chains of Shape/Gather/Unsqueeze/Concat/... that end in a Reshape's
shape or a Pad's pads. Shapes are concrete at import (the batch is fixed), so ``Shape`` always
folds and the whole chain becomes constants: none of these ops reaches the compiled graph.
Every folder preserves the ONNX output dtype.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter, folder
from convc.frontend.onnx.shape import normalize_axis, reshape_target


def _values(ctx: NodeContext) -> list[np.ndarray]:
    return [np.asarray(ctx.constant(i)) for i in range(len(ctx.inputs)) if ctx.has_input(i)]


def _int_list(ctx: NodeContext, value: np.ndarray, what: str) -> list[int]:
    if value.ndim > 1 or value.dtype.kind not in "iu":
        raise ctx.error(f"{what} must be a 1-D integer tensor, got {value.dtype} of shape {value.shape}")
    return [int(v) for v in value.reshape(-1)]


# --- sources ------------------------------------------------------------------------------
@folder("Constant")
def constant(ctx: NodeContext) -> list[np.ndarray]:
    given = [k for k in ("value", "value_float", "value_floats", "value_int", "value_ints", "value_string",
                         "value_strings", "sparse_value") if k in ctx.attrs]
    if len(given) != 1:
        raise ctx.error(f"needs exactly one of value, value_float(s), value_int(s); got {given}")
    key, v = given[0], ctx.attrs[given[0]]
    if key == "value":
        return [np.asarray(v)]
    if key in ("value_float", "value_floats"):
        return [np.asarray(v, dtype=np.float32)]
    if key in ("value_int", "value_ints"):
        return [np.asarray(v, dtype=np.int64)]
    raise Unsupported(f"{key} constants are not supported")


@converter("Shape")
def shape(ctx: NodeContext) -> None:
    dims = ctx.input_shape(0)
    r = len(dims)
    start, end = int(ctx.attr("start", 0)), ctx.attr("end", None)
    end = r if end is None else int(end)
    start, end = (min(max(i + r if i < 0 else i, 0), r) for i in (start, end))
    ctx.set_output(0, np.array(dims[start:end], dtype=np.int64))


@converter("Size")
def size(ctx: NodeContext) -> None:
    ctx.set_output(0, np.array(math.prod(ctx.input_shape(0)), dtype=np.int64))


@folder("ConstantOfShape", since=9)
def constant_of_shape(ctx: NodeContext) -> list[np.ndarray]:
    dims = _int_list(ctx, np.asarray(ctx.constant(0)), "the shape input")
    if any(d < 0 for d in dims):
        raise ctx.error(f"shape={dims} has a negative dimension")
    value = np.asarray(ctx.attr("value", np.zeros(1, dtype=np.float32)))
    if value.size != 1:
        raise ctx.error(f"value must hold one element, got shape {value.shape}")
    ctx.check_size(dims, value.dtype)
    return [np.full(dims, value.reshape(-1)[0], dtype=value.dtype)]


@folder("Range", since=11)
def range_(ctx: NodeContext) -> list[np.ndarray]:
    start, limit, delta = (v.reshape(()) for v in _values(ctx))
    if delta == 0:
        raise ctx.error("delta=0")
    if start.dtype.kind in "iu":
        n = max(-(-(int(limit) - int(start)) // int(delta)), 0)
    else:
        span = (float(limit) - float(start)) / float(delta)
        if not math.isfinite(span):
            raise ctx.error(f"start={float(start)}, limit={float(limit)}, delta={float(delta)} give no finite length")
        n = max(math.ceil(span), 0)
    ctx.check_size((n,), start.dtype)
    return [(start + np.arange(n) * delta).astype(start.dtype)]


# --- indexing and data movement -----------------------------------------------------------
@folder("Identity")
def identity(ctx: NodeContext) -> list[np.ndarray]:
    return [np.asarray(ctx.constant(0)).copy()]


@folder("Gather")
def gather(ctx: NodeContext) -> list[np.ndarray]:
    data, indices = _values(ctx)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), data.ndim)
    n = data.shape[axis]
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise ctx.error(f"indices {indices.reshape(-1).tolist()} are out of range for axis {axis} of size {n}")
    ctx.check_size(data.shape[:axis] + indices.shape + data.shape[axis + 1:], data.dtype)
    return [np.take(data, indices.astype(np.int64), axis=axis)]


def _unsqueeze(ctx: NodeContext, data: np.ndarray, axes: list[int]) -> list[np.ndarray]:
    rank = data.ndim + len(axes)
    normalized = sorted(normalize_axis(ctx, a, rank, "axes") for a in axes)
    if len(set(normalized)) != len(normalized):
        raise ctx.error(f"axes={axes} repeats an axis")
    shape = list(data.shape)
    for a in normalized:
        shape.insert(a, 1)
    return [data.reshape(shape)]


def _squeeze(ctx: NodeContext, data: np.ndarray, axes: list[int] | None) -> list[np.ndarray]:
    if axes is None:
        return [data.reshape([d for d in data.shape if d != 1])]
    normalized = {normalize_axis(ctx, a, data.ndim, "axes") for a in axes}
    if any(data.shape[a] != 1 for a in normalized):
        raise ctx.error(f"axes={axes} selects dimensions of shape {data.shape} that are not 1")
    return [data.reshape([d for i, d in enumerate(data.shape) if i not in normalized])]


@folder("Unsqueeze", until=12)
def unsqueeze_axes_attribute(ctx: NodeContext) -> list[np.ndarray]:
    return _unsqueeze(ctx, np.asarray(ctx.constant(0)), list(ctx.ints("axes") or ()))


@folder("Unsqueeze", since=13)
def unsqueeze_axes_input(ctx: NodeContext) -> list[np.ndarray]:
    return _unsqueeze(ctx, np.asarray(ctx.constant(0)), _int_list(ctx, np.asarray(ctx.constant(1)), "axes"))


@folder("Squeeze", until=12)
def squeeze_axes_attribute(ctx: NodeContext) -> list[np.ndarray]:
    axes = ctx.ints("axes")
    return _squeeze(ctx, np.asarray(ctx.constant(0)), list(axes) if axes is not None else None)


@folder("Squeeze", since=13)
def squeeze_axes_input(ctx: NodeContext) -> list[np.ndarray]:
    axes = _int_list(ctx, np.asarray(ctx.constant(1)), "axes") if ctx.has_input(1) else None
    return _squeeze(ctx, np.asarray(ctx.constant(0)), axes)


@folder("Concat")
def concat(ctx: NodeContext) -> list[np.ndarray]:
    values = _values(ctx)
    axis = normalize_axis(ctx, int(ctx.attr("axis")), values[0].ndim)
    if any(v.ndim != values[0].ndim for v in values):
        raise ctx.error(f"inputs of shapes {[v.shape for v in values]} have different ranks")
    out = list(values[0].shape)
    out[axis] = sum(v.shape[axis] for v in values)
    ctx.check_size(out, values[0].dtype)
    return [np.concatenate(values, axis=axis).astype(values[0].dtype)]


@folder("Reshape")
def reshape(ctx: NodeContext) -> list[np.ndarray]:
    data, target = _values(ctx)
    return [data.reshape(reshape_target(ctx, data.shape, target, bool(ctx.attr("allowzero", 0))))]


def _slice(ctx: NodeContext, data: np.ndarray, starts: list[int], ends: list[int], axes: list[int] | None,
           steps: list[int] | None) -> list[np.ndarray]:
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error(f"starts={starts}, ends={ends}, axes={axes}, steps={steps} must have equal lengths")
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step == 0:
            raise ctx.error(f"steps={steps} holds a 0")
        index[normalize_axis(ctx, axis, data.ndim, "axes")] = slice(start, end, step)  # numpy clamps like ONNX
    return [data[tuple(index)].copy()]


@folder("Slice", until=9)
def slice_attributes(ctx: NodeContext) -> list[np.ndarray]:
    return _slice(ctx, np.asarray(ctx.constant(0)), list(ctx.attr("starts")), list(ctx.attr("ends")),
                  list(ctx.ints("axes")) if ctx.ints("axes") is not None else None, None)


@folder("Slice", since=10)
def slice_inputs(ctx: NodeContext) -> list[np.ndarray]:
    data = np.asarray(ctx.constant(0))
    starts, ends, axes, steps = (_int_list(ctx, np.asarray(ctx.constant(i)), name) if ctx.has_input(i) else None
                                 for i, name in ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps")))
    assert starts is not None and ends is not None
    return _slice(ctx, data, starts, ends, axes, steps)


@folder("Transpose")
def transpose(ctx: NodeContext) -> list[np.ndarray]:
    data = np.asarray(ctx.constant(0))
    perm = ctx.ints("perm", tuple(reversed(range(data.ndim))))
    assert perm is not None
    if sorted(perm) != list(range(data.ndim)):
        raise ctx.error(f"perm={perm} is not a permutation of the {data.ndim} axes of shape {data.shape}")
    return [np.transpose(data, perm).copy()]


@folder("Expand", since=8)
def expand(ctx: NodeContext) -> list[np.ndarray]:
    data, dims = _values(ctx)
    target = _int_list(ctx, dims, "the shape input")
    try:
        out_shape = np.broadcast_shapes(data.shape, tuple(target))
    except ValueError:
        raise ctx.error(f"cannot expand shape {data.shape} to shape={target}") from None
    ctx.check_size(out_shape, data.dtype)
    return [np.broadcast_to(data, out_shape).copy()]


@folder("Cast")
def cast(ctx: NodeContext) -> list[np.ndarray]:
    to = int(ctx.attr("to"))
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(to)
    except (KeyError, ValueError):
        raise ctx.error(f"to={to} is not an ONNX tensor type") from None
    if dtype.kind in "OSU":
        raise Unsupported(f"Cast to {onnx.TensorProto.DataType.Name(to)} is not supported")
    return [np.asarray(ctx.constant(0)).astype(dtype)]


# --- arithmetic ---------------------------------------------------------------------------
def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    q = a // b
    return np.where((a % b != 0) & ((a < 0) != (b < 0)), q + 1, q)  # truncate toward zero like C


def _binary(op_type: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], keep_dtype: bool = True) -> None:
    def fold(ctx: NodeContext) -> list[np.ndarray]:
        a, b = _values(ctx)
        if ctx.opset < 7 and int(ctx.attr("broadcast", 0)) and ctx.attr("axis", None) is not None:
            axis = int(ctx.attr("axis")) % max(a.ndim, 1)  # opset 6: B's dimensions start at A's axis
            b = b.reshape(b.shape + (1,) * (a.ndim - axis - b.ndim))
        try:
            shape = np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise ctx.error(f"cannot broadcast shapes {a.shape} and {b.shape}") from None
        ctx.check_size(shape, np.result_type(a, b))  # (n, 1) + (1, n) is n**2 elements
        out = np.asarray(fn(a, b))
        return [out.astype(a.dtype) if keep_dtype else out]
    fold.__name__ = op_type.lower()
    folder(op_type)(fold)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        if np.any(b == 0):
            raise ZeroDivisionError("integer division by zero")
        return _int_div(a, b)
    return a / b


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Pow keeps the base's type; numpy refuses integers to negative integer powers, so compute in
    float64 (exact for the shape arithmetic this folds) and let the caller cast back."""
    with np.errstate(all="ignore"):
        return np.power(a.astype(np.float64), b.astype(np.float64))


_binary("Add", np.add)
_binary("Pow", _pow)
_binary("Sub", np.subtract)
_binary("Mul", np.multiply)
_binary("Div", _div)
_binary("Equal", np.equal, keep_dtype=False)


def _variadic(op_type: str, fn: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    def fold(ctx: NodeContext) -> list[np.ndarray]:
        values = _values(ctx)
        try:
            shape = np.broadcast_shapes(*[v.shape for v in values])
        except ValueError:
            raise ctx.error(f"cannot broadcast shapes {[v.shape for v in values]}") from None
        ctx.check_size(shape, np.result_type(*values))
        out = values[0]
        for v in values[1:]:
            out = fn(out, v)
        return [np.asarray(out).astype(values[0].dtype)]
    fold.__name__ = op_type.lower()
    folder(op_type)(fold)


_variadic("Max", np.maximum)  # shape arithmetic: CenterCropPad's expansion takes Max of two shapes
_variadic("Min", np.minimum)
_variadic("Sum", np.add)


@folder("Where", since=9)
def where(ctx: NodeContext) -> list[np.ndarray]:
    cond, x, y = _values(ctx)
    try:
        shape = np.broadcast_shapes(cond.shape, x.shape, y.shape)
    except ValueError:
        raise ctx.error(f"cannot broadcast shapes {[cond.shape, x.shape, y.shape]}") from None
    ctx.check_size(shape, x.dtype)
    return [np.where(cond.astype(bool), x, y).astype(x.dtype)]


def _unary(op_type: str, fn: Callable[[np.ndarray], np.ndarray]) -> None:
    def fold(ctx: NodeContext) -> list[np.ndarray]:
        x = np.asarray(ctx.constant(0))
        return [np.asarray(fn(x)).astype(x.dtype)]
    fold.__name__ = op_type.lower()
    folder(op_type)(fold)


_unary("Floor", np.floor)
_unary("Ceil", np.ceil)
_unary("Round", np.round)  # half to even, as ONNX
_unary("Neg", np.negative)
