"""Softmax and LogSoftmax along one axis (opset 13 semantics; older opsets are rewritten by the importer)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, per_output, register, same_type


@dataclass(frozen=True)
class SoftmaxAttrs:
    axis: int = onnx_attr()  # non-negative after import; required, as ONNX's default changed in opset 13


def _infer(kind: OpKind):
    def infer(a: SoftmaxAttrs, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, 1, 1)
        check_float(kind, types)
        if not 0 <= a.axis < types[0].rank:
            raise GraphError(f"{kind.value} axis={a.axis} is out of range for shape {types[0].shape}")
        return same_type(types[0])
    return infer


infer = _infer(OpKind.SOFTMAX)


def reference(a: SoftmaxAttrs, x: np.ndarray) -> list[np.ndarray]:
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=a.axis, keepdims=True))
    return [(e / e.sum(axis=a.axis, keepdims=True)).astype(x.dtype)]


def log_reference(a: SoftmaxAttrs, x: np.ndarray) -> list[np.ndarray]:
    x64 = x.astype(np.float64)
    shifted = x64 - x64.max(axis=a.axis, keepdims=True)
    return [(shifted - np.log(np.exp(shifted).sum(axis=a.axis, keepdims=True))).astype(x.dtype)]


# max, exp, sum, then divide (Softmax) or log (LogSoftmax)
register(OpDef(OpKind.SOFTMAX, SoftmaxAttrs, infer, reference, flops=per_output(4)))
register(OpDef(OpKind.LOG_SOFTMAX, SoftmaxAttrs, _infer(OpKind.LOG_SOFTMAX), log_reference,
               flops=per_output(4)))
