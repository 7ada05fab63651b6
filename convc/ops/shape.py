"""Ops that only move data: Flatten, Reshape, Concat, Transpose, Split, Pad and StridedSlice."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, no_flops, register


@dataclass(frozen=True)
class FlattenAttrs:
    axis: int = onnx_attr(1)  # non-negative after import


@dataclass(frozen=True)
class ReshapeAttrs:
    shape: tuple[int, ...]  # fully resolved at import: no 0 and no -1


@dataclass(frozen=True)
class ConcatAttrs:
    axis: int = onnx_attr()  # non-negative after import


def flatten_infer(a: FlattenAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.FLATTEN, types, 1, 1)
    s = types[0].shape
    if not 0 <= a.axis <= len(s):
        raise GraphError(f"Flatten axis={a.axis} is out of range for shape {s}")
    return [TensorType((int(np.prod(s[:a.axis])), int(np.prod(s[a.axis:]))), types[0].dtype)]


def reshape_infer(a: ReshapeAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.RESHAPE, types, 1, 1)
    s = types[0].shape
    if int(np.prod(s)) != int(np.prod(a.shape)) or any(d < 0 for d in a.shape):
        raise GraphError(f"Reshape cannot turn shape {s} ({int(np.prod(s))} elements) into {a.shape}")
    return [TensorType(a.shape, types[0].dtype)]


def concat_infer(a: ConcatAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.CONCAT, types, 1, -1)
    first = types[0]
    if not 0 <= a.axis < first.rank:
        raise GraphError(f"Concat axis={a.axis} is out of range for rank {first.rank}")
    for t in types[1:]:
        if t.rank != first.rank or any(x != y for i, (x, y) in enumerate(zip(t.shape, first.shape)) if i != a.axis):
            raise GraphError(f"Concat on axis {a.axis} of shapes {[t.shape for t in types]}: "
                             "all other dimensions must match")
        if t.dtype != first.dtype:
            raise GraphError(f"Concat inputs have different dtypes: {[str(t.dtype) for t in types]}")
    shape = list(first.shape)
    shape[a.axis] = sum(t.shape[a.axis] for t in types)
    return [TensorType(tuple(shape), first.dtype)]


register(OpDef(OpKind.FLATTEN, FlattenAttrs, flatten_infer,
               lambda a, x: [x.reshape(int(np.prod(x.shape[:a.axis])), -1).copy()], flops=no_flops))
register(OpDef(OpKind.RESHAPE, ReshapeAttrs, reshape_infer, lambda a, x: [x.reshape(a.shape).copy()],
               flops=no_flops))
register(OpDef(OpKind.CONCAT, ConcatAttrs, concat_infer, lambda a, *xs: [np.concatenate(xs, axis=a.axis)],
               n_inputs=(1, -1), flops=no_flops))


# --- Transpose, Split, Pad, StridedSlice (ONNX coverage) ------------------------------------------
@dataclass(frozen=True)
class TransposeAttrs:
    perm: tuple[int, ...] = onnx_attr()  # output axis i is input axis perm[i]


@dataclass(frozen=True)
class SplitAttrs:
    axis: int                 # non-negative after import
    sizes: tuple[int, ...]    # one positive length per output, summing to the axis length


@dataclass(frozen=True)
class PadAttrs:
    """ONNX Pad on every axis: ``pads`` is all begins then all ends; a negative pad crops."""
    pads: tuple[int, ...]
    mode: str = "constant"    # constant, reflect, edge or wrap (numpy.pad's modes of the same names)
    value: float = 0.0        # the fill of mode "constant"

    MODES = ("constant", "reflect", "edge", "wrap")


@dataclass(frozen=True)
class StridedSliceAttrs:
    """out[i_0, ..., i_r] = x[starts[0] + i_0 * steps[0], ...]: every axis, resolved at import."""
    starts: tuple[int, ...]
    steps: tuple[int, ...]    # non-zero, negative walks backwards
    shape: tuple[int, ...]    # the output shape


def transpose_infer(a: TransposeAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.TRANSPOSE, types, 1, 1)
    s = types[0].shape
    if sorted(a.perm) != list(range(len(s))):
        raise GraphError(f"Transpose perm={a.perm} is not a permutation of the axes of shape {s}")
    return [TensorType(tuple(s[p] for p in a.perm), types[0].dtype)]


def split_infer(a: SplitAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.SPLIT, types, 1, 1)
    s = types[0].shape
    if not 0 <= a.axis < len(s):
        raise GraphError(f"Split axis={a.axis} is out of range for shape {s}")
    if sum(a.sizes) != s[a.axis] or any(n < 1 for n in a.sizes):
        raise GraphError(f"Split sizes {a.sizes} must be positive and sum to {s[a.axis]}, the length of axis "
                         f"{a.axis} of shape {s}")
    return [TensorType(s[:a.axis] + (n,) + s[a.axis + 1:], types[0].dtype) for n in a.sizes]


def split_reference(a: SplitAttrs, x: np.ndarray) -> list[np.ndarray]:
    cuts = np.cumsum(a.sizes)[:-1]
    return [np.ascontiguousarray(part) for part in np.split(x, cuts, axis=a.axis)]


def pad_widths(a: PadAttrs, rank: int) -> list[tuple[int, int]]:
    return [(a.pads[i], a.pads[rank + i]) for i in range(rank)]


def pad_infer(a: PadAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.PAD, types, 1, 1)
    s = types[0].shape
    if len(a.pads) != 2 * len(s):
        raise GraphError(f"Pad pads={a.pads} has {len(a.pads)} values, expected {2 * len(s)} for shape {s}")
    if a.mode not in PadAttrs.MODES:
        raise GraphError(f"Pad mode={a.mode!r} is not one of {PadAttrs.MODES}")
    out = tuple(d + b + e for d, (b, e) in zip(s, pad_widths(a, len(s))))
    if any(d < 1 for d in out):
        raise GraphError(f"Pad pads={a.pads} crops shape {s} to the empty shape {out}")
    return [TensorType(out, types[0].dtype)]


def pad_source_index(a: PadAttrs, size: int, axis: int, rank: int) -> np.ndarray:
    """For each output position along ``axis``, the input index it copies (-1: the constant fill)."""
    b, e = pad_widths(a, rank)[axis]
    idx = np.arange(size)[max(-b, 0):size - max(-e, 0)]  # negative pads crop first
    widths = (max(b, 0), max(e, 0))
    if a.mode == "constant":
        return np.pad(idx, widths, constant_values=-1)
    return np.pad(idx, widths, mode=a.mode)


def pad_reference(a: PadAttrs, x: np.ndarray) -> list[np.ndarray]:
    crop = tuple(slice(max(-b, 0), d - max(-e, 0)) for d, (b, e) in zip(x.shape, pad_widths(a, x.ndim)))
    widths = [(max(b, 0), max(e, 0)) for b, e in pad_widths(a, x.ndim)]
    kept = x[crop]
    if a.mode == "constant":
        return [np.pad(kept, widths, constant_values=np.asarray(a.value, x.dtype))]
    return [np.pad(kept, widths, mode=a.mode)]


def strided_slice_infer(a: StridedSliceAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.STRIDED_SLICE, types, 1, 1)
    s = types[0].shape
    if not len(a.starts) == len(a.steps) == len(a.shape) == len(s):
        raise GraphError(f"StridedSlice starts={a.starts}, steps={a.steps}, shape={a.shape} must each have one "
                         f"value per axis of shape {s}")
    for d, start, step, n in zip(s, a.starts, a.steps, a.shape):
        last = start + (n - 1) * step
        if step == 0 or n < 1 or not (0 <= start < d and 0 <= last < d):
            raise GraphError(f"StridedSlice starts={a.starts}, steps={a.steps}, shape={a.shape} reads outside "
                             f"shape {s}")
    return [TensorType(a.shape, types[0].dtype)]


def strided_slice_reference(a: StridedSliceAttrs, x: np.ndarray) -> list[np.ndarray]:
    index = np.ix_(*[start + step * np.arange(n) for start, step, n in zip(a.starts, a.steps, a.shape)])
    return [np.ascontiguousarray(x[index])]


register(OpDef(OpKind.TRANSPOSE, TransposeAttrs, transpose_infer,
               lambda a, x: [np.ascontiguousarray(np.transpose(x, a.perm))], flops=no_flops))
register(OpDef(OpKind.SPLIT, SplitAttrs, split_infer, split_reference, flops=no_flops))
register(OpDef(OpKind.PAD, PadAttrs, pad_infer, pad_reference, flops=no_flops))
register(OpDef(OpKind.STRIDED_SLICE, StridedSliceAttrs, strided_slice_infer, strided_slice_reference,
               flops=no_flops))


@dataclass(frozen=True)
class ExpandAttrs:
    """The input broadcast (numpy's rules) to ``shape``, the output shape resolved at import."""
    shape: tuple[int, ...]


def expand_infer(a: ExpandAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.EXPAND, types, 1, 1)
    x = types[0].shape
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(x, a.shape))
    except ValueError:
        raise GraphError(f"Expand: shape {x} does not broadcast to {a.shape}") from None
    if out != tuple(a.shape):
        raise GraphError(f"Expand: shape {x} broadcast to {a.shape} gives {out}; shape must be the output's")
    return [TensorType(out, types[0].dtype)]


register(OpDef(OpKind.EXPAND, ExpandAttrs, expand_infer, lambda a, x: [np.broadcast_to(x, a.shape).copy()],
               flops=no_flops))
