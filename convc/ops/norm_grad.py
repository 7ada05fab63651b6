"""Batch normalization in training mode, its gradient and the running-statistics update.

BatchNormTrain(X, scale, B) -> (Y, mean, invstd) normalizes with the statistics of the batch (over
every axis but 1) and saves them for the gradient. The running statistics are updated at the end of
the step by BatchNormRunningUpdate, with ONNX's convention ``running = momentum * running +
(1 - momentum) * batch`` (momentum 0.9 is PyTorch's 0.1) and, like PyTorch, the unbiased batch
variance; the update is skipped when the step's ``ok`` flag is 0 (a non-finite loss or gradient).

Each op takes an optional last input ``rows`` ((1,) int64, clamped to [1, N]): only the first
``rows`` samples are the batch (a smaller last batch padded to the compiled one). The statistics,
the gradient sums and the unbiased factor count N = rows; the padded samples are normalized with
the same statistics (finite, read by nothing that counts) and get a zero gradient.

BatchNormApply(X, scale, B, mean, invstd) -> Y recomputes BatchNormTrain's Y (optionally clamped, a
fused ReLU or ReLU6) from the saved statistics: the backward reads it instead of keeping the forward's
normalized and activated tensors alive through the whole step (passes/autodiff/recompute.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, register
from convc.ops.norm import BatchNormAttrs


@dataclass(frozen=True)
class RunningUpdateAttrs:
    momentum: float  # weight of the old running value (ONNX convention)
    epsilon: float   # the forward's epsilon, to recover the variance from invstd
    count: int       # elements per channel in the batch (for the unbiased variance)
    unbiased: bool = True  # PyTorch's running variance; False: the batch variance (ONNX training_mode=1)
    per_sample: int = 0    # elements per channel of one sample: with a rows input, count = rows * per_sample

    @property
    def variance_factor(self) -> float:
        return self.factor(self.count)

    def factor(self, count: int) -> float:
        """PyTorch's n / (n - 1) for a batch of ``count`` elements per channel (1 when not unbiased)."""
        return count / max(count - 1, 1) if self.unbiased else 1.0


def _channels(kind: OpKind, x: TensorType, others: Sequence[TensorType], names: Sequence[str]) -> int:
    if x.rank < 2:
        raise GraphError(f"{kind.value} needs an input of rank >= 2, got X.shape={x.shape}")
    c = x.shape[1]
    for name, t in zip(names, others):
        if t.shape != (c,):
            raise GraphError(f"{kind.value} {name}.shape={t.shape}, expected ({c},) for X.shape={x.shape}")
    return c


def _rows_input(kind: OpKind, types: Sequence[TensorType], at: int) -> None:
    if len(types) > at and (types[at].shape != (1,) or types[at].dtype != np.int64):
        raise GraphError(f"{kind.value} rows is {types[at].dtype} {types[at].shape}, expected int64 (1,)")


def _counted(rows, n: int) -> int:
    return n if rows is None else int(min(max(int(np.asarray(rows).reshape(-1)[0]), 1), n))


def train_infer(a: BatchNormAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.BATCH_NORM_TRAIN, types, 3, 4)
    _rows_input(OpKind.BATCH_NORM_TRAIN, types, 3)
    check_float(OpKind.BATCH_NORM_TRAIN, types[:3])
    x = types[0]
    c = _channels(OpKind.BATCH_NORM_TRAIN, x, types[1:], ("scale", "B"))
    return [TensorType(x.shape, x.dtype), TensorType((c,), x.dtype), TensorType((c,), x.dtype)]


def _axes(x: np.ndarray) -> tuple[int, ...]:
    return (0,) + tuple(range(2, x.ndim))


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def train_reference(a: BatchNormAttrs, x, scale, bias, rows=None) -> list[np.ndarray]:
    x64 = x.astype(np.float64)
    counted = x64[:_counted(rows, x.shape[0])]
    mean = counted.mean(axis=_axes(x))
    var = ((counted - _per_channel(mean, x.ndim)) ** 2).mean(axis=_axes(x))
    invstd = 1.0 / np.sqrt(var + a.epsilon)
    y = (x64 - _per_channel(mean, x.ndim)) * _per_channel(invstd * scale, x.ndim) + _per_channel(bias, x.ndim)
    return [y.astype(x.dtype), mean.astype(x.dtype), invstd.astype(x.dtype)]


def grad_infer(a: BatchNormAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.BATCH_NORM_GRAD, types, 5, 6)
    _rows_input(OpKind.BATCH_NORM_GRAD, types, 5)
    check_float(OpKind.BATCH_NORM_GRAD, types[:5])
    x, dy = types[0], types[4]
    c = _channels(OpKind.BATCH_NORM_GRAD, x, types[1:4], ("scale", "mean", "invstd"))
    if dy.shape != x.shape:
        raise GraphError(f"BatchNormGrad dY.shape={dy.shape} differs from X.shape={x.shape}")
    return [TensorType(x.shape, x.dtype), TensorType((c,), x.dtype), TensorType((c,), x.dtype)]


def grad_reference(a: BatchNormAttrs, x, scale, mean, invstd, dy, rows=None) -> list[np.ndarray]:
    """(dX, dscale, dB): with x^ = (x - mean) * invstd over the m elements of a channel,
    dB = sum dY, dscale = sum dY x^, dX = scale * invstd / m * (m dY - dB - x^ dscale); the
    samples past ``rows`` count for nothing and get dX = 0."""
    d = x.ndim
    r = _counted(rows, x.shape[0])
    m = r * (x.size // (x.shape[0] * x.shape[1]))
    dy64 = dy.astype(np.float64)[:r]
    xhat = (x.astype(np.float64)[:r] - _per_channel(mean, d)) * _per_channel(invstd, d)
    dbias = dy64.sum(axis=_axes(x))
    dscale = (dy64 * xhat).sum(axis=_axes(x))
    dx = np.zeros(x.shape, np.float64)
    dx[:r] = _per_channel(scale * invstd / m, d) * (m * dy64 - _per_channel(dbias, d) - xhat * _per_channel(dscale, d))
    return [dx.astype(x.dtype), dscale.astype(x.dtype), dbias.astype(x.dtype)]


def running_infer(a: RunningUpdateAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.BATCH_NORM_RUNNING_UPDATE, types, 5, 6)
    _rows_input(OpKind.BATCH_NORM_RUNNING_UPDATE, types, 5)
    check_float(OpKind.BATCH_NORM_RUNNING_UPDATE, types[:5])
    c = types[0].shape
    for name, t in zip(("running_var", "mean", "invstd"), types[1:4]):
        if t.shape != c:
            raise GraphError(f"BatchNormRunningUpdate {name}.shape={t.shape} differs from running_mean {c}")
    if types[4].shape != (1,):
        raise GraphError(f"BatchNormRunningUpdate ok.shape={types[4].shape}, expected (1,)")
    return [TensorType(c, types[0].dtype), TensorType(c, types[1].dtype)]


def running_reference(a: RunningUpdateAttrs, running_mean, running_var, mean, invstd, ok,
                      rows=None) -> list[np.ndarray]:
    if not ok[0]:
        return [running_mean.copy(), running_var.copy()]
    var = 1.0 / np.square(invstd.astype(np.float64)) - a.epsilon
    count = a.count if rows is None else _counted(rows, a.count // a.per_sample) * a.per_sample
    unbiased = var * a.factor(count)
    new_mean = a.momentum * running_mean + (1 - a.momentum) * mean.astype(np.float64)
    new_var = a.momentum * running_var + (1 - a.momentum) * unbiased
    return [new_mean.astype(running_mean.dtype), new_var.astype(running_var.dtype)]


@dataclass(frozen=True)
class BatchNormApplyAttrs:
    """The activation clamped into [min, max] after the normalization (ReLU: [0, inf]; none: [-inf, inf])."""
    min: float = float("-inf")
    max: float = float("inf")


def apply_infer(a: BatchNormApplyAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.BATCH_NORM_APPLY, types, 5, 5)
    check_float(OpKind.BATCH_NORM_APPLY, types)
    _channels(OpKind.BATCH_NORM_APPLY, types[0], types[1:], ("scale", "B", "mean", "invstd"))
    return [TensorType(types[0].shape, types[0].dtype)]


def apply_reference(a: BatchNormApplyAttrs, x, scale, bias, mean, invstd) -> list[np.ndarray]:
    """BatchNormTrain's Y from its saved statistics, in its float32 arithmetic (s = scale invstd,
    Y = X s + (B - mean s)), so the recomputed tensor is the forward's bit for bit; then clamped."""
    s = scale * invstd
    y = x * _per_channel(s, x.ndim) + _per_channel(bias - mean * s, x.ndim)
    return [np.minimum(np.maximum(y, x.dtype.type(a.min)), x.dtype.type(a.max)).astype(x.dtype)]


register(OpDef(OpKind.BATCH_NORM_TRAIN, BatchNormAttrs, train_infer, train_reference, n_inputs=(3, 4)))
register(OpDef(OpKind.BATCH_NORM_GRAD, BatchNormAttrs, grad_infer, grad_reference, n_inputs=(5, 6)))
register(OpDef(OpKind.BATCH_NORM_RUNNING_UPDATE, RunningUpdateAttrs, running_infer, running_reference,
               n_inputs=(5, 6)))
register(OpDef(OpKind.BATCH_NORM_APPLY, BatchNormApplyAttrs, apply_infer, apply_reference, n_inputs=(5, 5)))
