"""Reductions over a set of axes: ReduceSum (also what autodiff sums broadcast gradients and biases with),
ReduceMax, ReduceMin and ReduceProd. The ONNX frontend builds ReduceMean, ReduceL1, ReduceL2,
ReduceSumSquare, ReduceLogSum and ReduceLogSumExp from them (frontend/onnx/reduce.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, numel, register


@dataclass(frozen=True)
class ReduceAttrs:
    axes: tuple[int, ...]   # the axes reduced, non-negative
    shape: tuple[int, ...]  # the result's shape (the kept axes' element count; keepdims or not, as the model says)


# kind -> the numpy reduction, in float64 (a float32 sum of many elements would not be a reference)
REDUCTIONS = {OpKind.REDUCE_SUM: np.sum, OpKind.REDUCE_MAX: np.max, OpKind.REDUCE_MIN: np.min,
              OpKind.REDUCE_PROD: np.prod}


def _infer(kind: OpKind):
    def infer(a: ReduceAttrs, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, 1, 1)
        check_float(kind, types)
        s = types[0].shape
        if any(not 0 <= ax < len(s) for ax in a.axes) or len(set(a.axes)) != len(a.axes):
            raise GraphError(f"{kind.value} axes={a.axes} are invalid for shape {s}")
        kept = int(np.prod([d for i, d in enumerate(s) if i not in a.axes], dtype=np.int64))
        if kept != int(np.prod(a.shape, dtype=np.int64)):
            raise GraphError(f"{kind.value} of shape {s} over axes {a.axes} cannot have shape {a.shape}")
        return [TensorType(a.shape, types[0].dtype)]
    return infer


def _reference(kind: OpKind):
    fn = REDUCTIONS[kind]

    def reference(a: ReduceAttrs, x: np.ndarray) -> list[np.ndarray]:
        with np.errstate(over="ignore"):  # a product may overflow to inf, as the kernel's does
            return [np.asarray(fn(x.astype(np.float64), axis=a.axes)).reshape(a.shape).astype(x.dtype)]
    return reference


def reduce_flops(a: ReduceAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """One add (max, min, multiply) per input element beyond the first of each output element."""
    return numel(ins[0]) - numel(outs[0])


for _kind in REDUCTIONS:
    register(OpDef(_kind, ReduceAttrs, _infer(_kind), _reference(_kind), flops=reduce_flops))
