"""Ops that only move data: Flatten, Reshape, Concat."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, register


@dataclass(frozen=True)
class FlattenAttrs:
    axis: int = 1  # non-negative after import


@dataclass(frozen=True)
class ReshapeAttrs:
    shape: tuple[int, ...]  # fully resolved at import: no 0 and no -1


@dataclass(frozen=True)
class ConcatAttrs:
    axis: int  # non-negative after import


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
               lambda a, x: [x.reshape(int(np.prod(x.shape[:a.axis])), -1).copy()]))
register(OpDef(OpKind.RESHAPE, ReshapeAttrs, reshape_infer, lambda a, x: [x.reshape(a.shape).copy()]))
register(OpDef(OpKind.CONCAT, ConcatAttrs, concat_infer, lambda a, *xs: [np.concatenate(xs, axis=a.axis)],
               n_inputs=(1, -1)))
