"""Flatten, Reshape, Concat, Transpose, Squeeze/Unsqueeze, Split, Slice and Pad on run-time tensors (their
constant forms fold in folding.py). Squeeze and Unsqueeze become Reshapes (views); a Slice of one axis with
unit step becomes the block-copy Slice, any other the general StridedSlice."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise_grad import SliceAttrs
from convc.ops.shape import (ConcatAttrs, FlattenAttrs, PadAttrs, ReshapeAttrs, SplitAttrs, StridedSliceAttrs,
                             TransposeAttrs)


def normalize_axis(ctx: NodeContext, axis: int, rank: int, name: str = "axis", inclusive: bool = False) -> int:
    """``axis`` in [-rank, rank) (or [-rank, rank] with ``inclusive``) mapped to a non-negative index."""
    hi = rank + 1 if inclusive else rank
    if not -rank <= axis < hi:
        raise ctx.error(f"{name}={axis} is out of range for rank {rank} (input shape {ctx.input_shape(0)})")
    return axis + rank if axis < 0 else axis


def reshape_target(ctx: NodeContext, data_shape: tuple[int, ...], shape: np.ndarray, allowzero: bool) -> tuple[int, ...]:
    """Resolve the 0 (copy a dimension, unless allowzero) and -1 (infer) entries of a Reshape's shape."""
    if shape.ndim != 1 or shape.dtype.kind not in "iu":
        raise ctx.error(f"the shape input must be a 1-D integer tensor, got {shape.dtype} of shape {shape.shape}")
    requested = tuple(int(d) for d in shape)
    if allowzero and 0 in requested and -1 in requested:
        raise ctx.error(f"shape={requested} with allowzero=1 cannot hold both 0 and -1")
    if requested.count(-1) > 1 or any(d < -1 for d in requested):
        raise ctx.error(f"shape={requested} may hold at most one -1 and no other negative value")
    out = []
    for i, d in enumerate(requested):
        if d == 0 and not allowzero:
            if i >= len(data_shape):
                raise ctx.error(f"shape={requested}: the 0 at index {i} copies a dimension the input "
                                f"of shape {data_shape} does not have")
            d = data_shape[i]
        out.append(d)
    # Python integers: an int64 product of a shape like [2**62 + 1, 4] wraps around to a small number
    # that can equal the input's element count, and a huge target would pass as a valid reshape
    total = math.prod(data_shape)
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or total % known:
            raise ctx.error(f"cannot reshape input of shape {data_shape} ({total} elements) into shape={requested}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise ctx.error(f"cannot reshape input of shape {data_shape} ({total} elements) into shape={requested} "
                        f"(resolved to {tuple(out)})")
    return tuple(out)


@converter("Flatten")
def flatten(ctx: NodeContext) -> None:
    rank = len(ctx.input_shape(0))
    axis = normalize_axis(ctx, int(ctx.attr("axis", 1)), rank, inclusive=True)
    ctx.add_op(OpKind.FLATTEN, FlattenAttrs(axis), ctx.inputs[:1])


@converter("Reshape")
def reshape(ctx: NodeContext) -> None:
    target = reshape_target(ctx, ctx.input_shape(0), ctx.constant(1), bool(ctx.attr("allowzero", 0)))
    ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(target), ctx.inputs[:1])


@converter("Concat")
def concat(ctx: NodeContext) -> None:
    ctx.require_float()
    axis = normalize_axis(ctx, int(ctx.attr("axis")), len(ctx.input_shape(0)))
    ctx.add_op(OpKind.CONCAT, ConcatAttrs(axis), ctx.present_inputs())


# --- Transpose, Squeeze/Unsqueeze, Split, Slice and Pad on run-time tensors ----------------------
def _axes_value(ctx: NodeContext, i: int, what: str = "axes") -> list[int] | None:
    """An optional 1-D integer input (axes, split, steps, ...) that must be a constant; None when omitted."""
    if not ctx.has_input(i):
        return None
    v = np.asarray(ctx.constant(i))
    if v.ndim > 1 or v.dtype.kind not in "iu":
        raise ctx.error(f"{what} must be a 1-D integer tensor, got {v.dtype} of shape {v.shape}")
    return [int(a) for a in v.reshape(-1)]


def _distinct_axes(ctx: NodeContext, axes: Sequence[int], rank: int) -> list[int]:
    normalized = [normalize_axis(ctx, a, rank, "axes") for a in axes]
    if len(set(normalized)) != len(normalized):
        raise ctx.error(f"axes={list(axes)} repeats an axis")
    return normalized


@converter("Transpose")
def transpose(ctx: NodeContext) -> None:
    rank = len(ctx.input_shape(0))
    perm = ctx.ints("perm", tuple(reversed(range(rank))))
    assert perm is not None
    if sorted(perm) != list(range(rank)):
        raise ctx.error(f"perm={perm} is not a permutation of the {rank} axes of shape {ctx.input_shape(0)}")
    ctx.add_op(OpKind.TRANSPOSE, TransposeAttrs(tuple(perm)), ctx.inputs[:1])


def _squeeze(ctx: NodeContext, axes: list[int] | None) -> None:
    shape = ctx.input_shape(0)
    if axes is None:
        target = tuple(d for d in shape if d != 1)
    else:
        drop = set(_distinct_axes(ctx, axes, len(shape)))
        if any(shape[a] != 1 for a in drop):
            raise ctx.error(f"axes={axes} selects dimensions of shape {shape} that are not 1")
        target = tuple(d for i, d in enumerate(shape) if i not in drop)
    ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(target), ctx.inputs[:1])


def _unsqueeze(ctx: NodeContext, axes: list[int] | None) -> None:
    if axes is None:
        raise ctx.error("axes is required")
    shape = ctx.input_shape(0)
    target = list(shape)
    for a in sorted(_distinct_axes(ctx, axes, len(shape) + len(axes))):
        target.insert(a, 1)
    ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(tuple(target)), ctx.inputs[:1])


@converter("Squeeze", until=12)
def squeeze_axes_attribute(ctx: NodeContext) -> None:
    axes = ctx.ints("axes")
    _squeeze(ctx, list(axes) if axes is not None else None)


@converter("Squeeze", since=13)
def squeeze_axes_input(ctx: NodeContext) -> None:
    _squeeze(ctx, _axes_value(ctx, 1))


@converter("Unsqueeze", until=12)
def unsqueeze_axes_attribute(ctx: NodeContext) -> None:
    axes = ctx.ints("axes")
    _unsqueeze(ctx, list(axes) if axes is not None else None)


@converter("Unsqueeze", since=13)
def unsqueeze_axes_input(ctx: NodeContext) -> None:
    _unsqueeze(ctx, _axes_value(ctx, 1))


def _split(ctx: NodeContext, sizes: list[int] | None, num_outputs: int | None = None) -> None:
    ctx.require_float(0)
    shape = ctx.input_shape(0)
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), len(shape))
    length, n = shape[axis], len(ctx.outputs)
    if sizes is None:
        if num_outputs is not None:  # Split-18: ceil(length / n) each, the last one smaller
            if num_outputs != n:
                raise ctx.error(f"num_outputs={num_outputs} but the node has {n} outputs")
            part = -(-length // n)
            sizes = [min(part, length - k * part) for k in range(n)]
        else:
            if length % n:
                raise ctx.error(f"cannot split axis {axis} of length {length} into {n} equal parts")
            sizes = [length // n] * n
    if len(sizes) != n or sum(sizes) != length or any(s < 0 for s in sizes):
        raise ctx.error(f"split={sizes} must give {n} non-negative lengths summing to {length} (axis {axis} of "
                        f"shape {shape})")
    if 0 in sizes:
        raise Unsupported(f"split={sizes} makes an empty output; convc does not compile zero-size tensors")
    ctx.add_op(OpKind.SPLIT, SplitAttrs(axis, tuple(sizes)), ctx.inputs[:1], ctx.outputs)


@converter("Split", until=12)
def split_sizes_attribute(ctx: NodeContext) -> None:
    sizes = ctx.ints("split")
    _split(ctx, list(sizes) if sizes else None)


@converter("Split", since=13, until=17)
def split_sizes_input(ctx: NodeContext) -> None:
    _split(ctx, _axes_value(ctx, 1, "split"))


@converter("Split", since=18)
def split_num_outputs(ctx: NodeContext) -> None:
    num = ctx.attr("num_outputs", None)
    _split(ctx, _axes_value(ctx, 1, "split"), int(num) if num is not None else None)


def _slice(ctx: NodeContext, starts: list[int], ends: list[int], axes: list[int] | None,
           steps: list[int] | None) -> None:
    shape = ctx.input_shape(0)
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise ctx.error(f"starts={starts}, ends={ends}, axes={axes}, steps={steps} must have equal lengths")
    first = [0] * len(shape)
    step = [1] * len(shape)
    out = list(shape)
    for a, s, e, st in zip(_distinct_axes(ctx, axes, len(shape)), starts, ends, steps):
        if st == 0:
            raise ctx.error(f"steps={steps} holds a 0")
        lo, hi, st = slice(s, e, st).indices(shape[a])  # clamps exactly like ONNX
        first[a], step[a], out[a] = lo, st, len(range(lo, hi, st))
    if 0 in out:
        raise Unsupported(f"the slice of shape {shape} is empty ({tuple(out)}); convc does not compile zero-size "
                          "tensors")
    changed = [a for a in range(len(shape)) if out[a] != shape[a] or step[a] != 1]
    if not changed:
        ctx.add_op(OpKind.IDENTITY, NoAttrs(), ctx.inputs[:1])
    elif len(changed) == 1 and step[changed[0]] == 1:
        a = changed[0]
        ctx.add_op(OpKind.SLICE, SliceAttrs(a, first[a], first[a] + out[a]), ctx.inputs[:1])
    else:
        ctx.add_op(OpKind.STRIDED_SLICE, StridedSliceAttrs(tuple(first), tuple(step), tuple(out)), ctx.inputs[:1])


@converter("Slice", until=9)
def slice_attributes(ctx: NodeContext) -> None:
    axes = ctx.ints("axes")
    _slice(ctx, list(ctx.attr("starts")), list(ctx.attr("ends")), list(axes) if axes is not None else None, None)


@converter("Slice", since=10)
def slice_inputs(ctx: NodeContext) -> None:
    starts, ends = _axes_value(ctx, 1, "starts"), _axes_value(ctx, 2, "ends")
    assert starts is not None and ends is not None
    _slice(ctx, starts, ends, _axes_value(ctx, 3), _axes_value(ctx, 4, "steps"))


def _pad(ctx: NodeContext, pads: Sequence[int], mode: str, value: float, axes: list[int] | None = None) -> None:
    ctx.require_float(0)
    rank = len(ctx.input_shape(0))
    if mode not in PadAttrs.MODES:
        raise Unsupported(f"mode={mode!r}; convc pads in modes {', '.join(PadAttrs.MODES)}")
    if axes is None:
        if len(pads) != 2 * rank:
            raise ctx.error(f"pads={list(pads)} has {len(pads)} values, expected {2 * rank} for input shape "
                            f"{ctx.input_shape(0)}")
        full = tuple(int(p) for p in pads)
    else:
        axes = _distinct_axes(ctx, axes, rank)
        if len(pads) != 2 * len(axes):
            raise ctx.error(f"pads={list(pads)} has {len(pads)} values, expected {2 * len(axes)} for axes={axes}")
        begin, end = [0] * rank, [0] * rank
        for k, a in enumerate(axes):
            begin[a], end[a] = int(pads[k]), int(pads[len(axes) + k])
        full = tuple(begin + end)
    ctx.add_op(OpKind.PAD, PadAttrs(full, mode, value), ctx.inputs[:1])


@converter("Pad", until=10)
def pad_attributes(ctx: NodeContext) -> None:
    _pad(ctx, ctx.ints("pads") or (), str(ctx.attr("mode", "constant")), float(ctx.attr("value", 0.0)))


@converter("Pad", since=11)
def pad_inputs(ctx: NodeContext) -> None:
    pads = _axes_value(ctx, 1, "pads")
    assert pads is not None
    value = 0.0
    if ctx.has_input(2):
        v = np.asarray(ctx.constant(2))
        if v.size != 1:
            raise ctx.error(f"constant_value must be a scalar, got shape {v.shape}")
        value = float(v.reshape(-1)[0])
    _pad(ctx, pads, str(ctx.attr("mode", "constant")), value, _axes_value(ctx, 3) if ctx.opset >= 18 else None)


# Tile with more copies than this along one axis is refused: the Concat would take that many inputs
MAX_TILE_COPIES = 4096


@converter("Tile", since=6)
def tile(ctx: NodeContext) -> None:
    """Repeat the input ``repeats[i]`` times along each axis i: Concats of the input with itself, one axis
    at a time (the Concat kernels copy rows at any stride); a constant input is folded."""
    repeats = _axes_value(ctx, 1, "repeats")
    shape = ctx.input_shape(0)
    if repeats is None or len(repeats) != len(shape) or any(r < 0 for r in repeats):
        raise ctx.error(f"repeats={repeats} must hold one non-negative count per axis of the input {shape}")
    if ctx.is_constant(0):
        value = np.asarray(ctx.constant(0))
        ctx.check_size([d * r for d, r in zip(shape, repeats)], value.dtype)
        ctx.set_output(0, np.tile(value, repeats))
        return
    ctx.require_float(0)
    if 0 in repeats:
        raise Unsupported(f"repeats={repeats} makes an empty tensor; convc does not compile zero-size tensors")
    if max(repeats) > MAX_TILE_COPIES:
        raise Unsupported(f"repeats={repeats}: more than {MAX_TILE_COPIES} copies along one axis")
    tile_concats(ctx, ctx.inputs[0], repeats)


def tile_concats(ctx: NodeContext, value: str, repeats: Sequence[int]) -> None:
    """The node's output: run-time tensor ``value`` repeated ``repeats[i]`` times along each axis i, as one
    Concat of copies per repeated axis (an Identity when nothing repeats)."""
    moving = [i for i, r in enumerate(repeats) if r > 1]
    if not moving:
        ctx.add_op(OpKind.IDENTITY, NoAttrs(), [value])
        return
    for k, axis in enumerate(moving):
        last = k == len(moving) - 1
        out = None if last else [ctx.fresh_tensor(f"tiled{axis}")]
        value = ctx.add_op(OpKind.CONCAT, ConcatAttrs(axis), [value] * repeats[axis], out,
                           name=f"{ctx.name}/tile_axis{axis}")[0]
