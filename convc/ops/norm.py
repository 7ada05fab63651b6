"""Batch normalization (inference form: running statistics) and local response normalization (LRN)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, numel, per_output, register


@dataclass(frozen=True)
class BatchNormAttrs:
    epsilon: float = onnx_attr(1e-5)
    momentum: float = onnx_attr(0.9)  # used by training to update the running statistics


def infer(a: BatchNormAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.BATCH_NORM, types, 5, 5)
    check_float(OpKind.BATCH_NORM, types)
    x = types[0]
    if x.rank < 2:
        raise GraphError(f"BatchNormalization needs an input of rank >= 2, got X.shape={x.shape}")
    c = x.shape[1]
    for name, t in zip(("scale", "B", "mean", "var"), types[1:]):
        if t.shape != (c,):
            raise GraphError(f"BatchNormalization {name}.shape={t.shape}, expected ({c},) for X.shape={x.shape}")
    return [TensorType(x.shape, x.dtype)]


def reference(a: BatchNormAttrs, x, scale, bias, mean, var) -> list[np.ndarray]:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + a.epsilon)
    y = (x - mean.reshape(shape)) * inv.reshape(shape) + bias.reshape(shape)
    return [y.astype(x.dtype)]


register(OpDef(OpKind.BATCH_NORM, BatchNormAttrs, infer, reference, n_inputs=(5, 5),
               flops=per_output(2)))  # x * s + t, s and t precomputed


@dataclass(frozen=True)
class LrnAttrs:
    """Local response normalization across channels (AlexNet, GoogLeNet):
    y = x / (bias + alpha / size * sum of x^2 over channels c - (size-1)//2 ... c + size//2) ** beta."""
    size: int = onnx_attr()
    alpha: float = onnx_attr(1e-4)
    beta: float = onnx_attr(0.75)
    bias: float = onnx_attr(1.0)


def lrn_infer(a: LrnAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.LRN, types, 1, 1)
    check_float(OpKind.LRN, types)
    if types[0].rank < 2:
        raise GraphError(f"LRN needs an input of rank >= 2 (N, C, ...), got X.shape={types[0].shape}")
    if a.size < 1:
        raise GraphError(f"LRN size={a.size} must be positive")
    return [TensorType(types[0].shape, types[0].dtype)]


def lrn_reference(a: LrnAttrs, x: np.ndarray) -> list[np.ndarray]:
    sq = np.square(x.astype(np.float64))
    c = x.shape[1]
    total = np.zeros_like(sq)
    for ci in range(c):
        lo, hi = max(0, ci - (a.size - 1) // 2), min(c, ci + a.size // 2 + 1)
        total[:, ci] = sq[:, lo:hi].sum(axis=1)
    return [(x / (a.bias + a.alpha / a.size * total) ** a.beta).astype(x.dtype)]


def lrn_flops(a: LrnAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """Square and add per window channel; then scale, power and divide."""
    return (2 * a.size + 3) * numel(outs[0])


register(OpDef(OpKind.LRN, LrnAttrs, lrn_infer, lrn_reference, flops=lrn_flops))


@dataclass(frozen=True)
class LayerNormAttrs:
    """Layer normalization (opset 17): each row -- the elements of axes ``axis``.. -- normalized to zero mean
    and unit variance, then scaled and shifted elementwise: y = (x - mean) / sqrt(var + epsilon) * Scale + B.
    Scale and B have the normalized shape (the importer broadcasts constant ones to it)."""
    axis: int = onnx_attr(-1)  # non-negative after import
    epsilon: float = onnx_attr(1e-5)
    statistics: bool = False   # also output each row's Mean and InvStdDev (shape X.shape[:axis] + ones)


def layer_norm_infer(a: LayerNormAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.LAYER_NORM, types, 2, 3)
    check_float(OpKind.LAYER_NORM, types)
    x = types[0]
    if not 0 <= a.axis < x.rank:
        raise GraphError(f"LayerNormalization axis={a.axis} is out of range for X.shape={x.shape}")
    row = x.shape[a.axis:]
    for name, t in zip(("Scale", "B"), types[1:]):
        if t.shape != row:
            raise GraphError(f"LayerNormalization {name}.shape={t.shape}, expected {row} for X.shape={x.shape} "
                             f"and axis={a.axis}")
    stats = TensorType(tuple(x.shape[:a.axis]) + (1,) * (x.rank - a.axis), x.dtype)
    return [TensorType(x.shape, x.dtype)] + [stats, stats] * a.statistics


def layer_norm_reference(a: LayerNormAttrs, x: np.ndarray, scale: np.ndarray,
                         bias: np.ndarray | None = None) -> list[np.ndarray]:
    axes = tuple(range(a.axis, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = np.square(x64 - mean).mean(axis=axes, keepdims=True)
    inv = 1.0 / np.sqrt(var + a.epsilon)
    y = (x64 - mean) * inv * scale
    if bias is not None:
        y = y + bias
    return [y.astype(x.dtype)] + [mean.astype(x.dtype), inv.astype(x.dtype)] * a.statistics


register(OpDef(OpKind.LAYER_NORM, LayerNormAttrs, layer_norm_infer, layer_norm_reference, n_inputs=(2, 3),
               flops=per_output(8)))  # sum, subtract, square, sum; subtract, scale, multiply, add
