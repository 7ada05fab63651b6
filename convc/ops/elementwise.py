"""Unary activations and broadcasting binary/variadic arithmetic."""
from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.base import (NoAttrs, OpDef, OpKind, TensorType, broadcast_shapes, check_arity, check_float, register,
                            same_type)


@dataclass(frozen=True)
class LeakyReluAttrs:
    alpha: float = 0.01


@dataclass(frozen=True)
class DropoutAttrs:
    ratio: float = 0.5  # identity at inference; the training step applies it


def _unary(kind: OpKind):
    def infer(a, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, 1, 1)
        check_float(kind, types)
        return same_type(types[0])
    return infer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


_UNARY_REFS = {
    OpKind.RELU: (NoAttrs, lambda a, x: np.maximum(x, 0)),
    OpKind.LEAKY_RELU: (LeakyReluAttrs, lambda a, x: np.where(x >= 0, x, a.alpha * x)),
    OpKind.SIGMOID: (NoAttrs, lambda a, x: _sigmoid(x.astype(np.float64))),
    OpKind.TANH: (NoAttrs, lambda a, x: np.tanh(x)),
    OpKind.IDENTITY: (NoAttrs, lambda a, x: x.copy()),
    OpKind.DROPOUT: (DropoutAttrs, lambda a, x: x.copy()),
}

for _kind, (_attrs, _fn) in _UNARY_REFS.items():
    register(OpDef(_kind, _attrs, _unary(_kind),
                   (lambda fn: lambda a, x: [np.asarray(fn(a, x)).astype(x.dtype)])(_fn)))


def _broadcast(kind: OpKind, lo: int, hi: int):
    def infer(a, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, lo, hi)
        check_float(kind, types)
        if len({t.dtype for t in types}) != 1:
            raise GraphError(f"{kind.value} inputs have different dtypes: {[str(t.dtype) for t in types]}")
        return [TensorType(broadcast_shapes(kind, *[t.shape for t in types]), types[0].dtype)]
    return infer


register(OpDef(OpKind.ADD, NoAttrs, _broadcast(OpKind.ADD, 2, 2), lambda a, x, y: [(x + y).astype(x.dtype)],
               n_inputs=(2, 2)))
register(OpDef(OpKind.MUL, NoAttrs, _broadcast(OpKind.MUL, 2, 2), lambda a, x, y: [(x * y).astype(x.dtype)],
               n_inputs=(2, 2)))
register(OpDef(OpKind.SUM, NoAttrs, _broadcast(OpKind.SUM, 1, -1),
               lambda a, *xs: [reduce(np.add, xs).astype(xs[0].dtype)], n_inputs=(1, -1)))
