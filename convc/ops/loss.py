"""Losses and their gradients, all averaged over the batch like PyTorch's default ``reduction='mean'``.

- SoftmaxCrossEntropy(logits[N, C], labels[N] int64) -> (loss[1], probs[N, C]): the softmax is
  computed once and saved for the gradient ``(probs - onehot(labels)) / N``.
- MseLoss(pred, target) -> loss[1] = mean((pred - target)^2); gradient 2 (pred - target) / size.
- BceLoss(p, target) -> loss[1] = -mean(t log p + (1 - t) log(1 - p)) on probabilities, each log
  clamped at -100 and the gradient's denominator at 1e-12, as PyTorch's BCELoss does.

The gradient ops are the roots of the backward pass: they take no incoming gradient (it is 1).
Labels out of range are rejected before the native code runs (convc.train); the kernels only make
sure such a label reads nothing out of bounds.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.base import NoAttrs, OpDef, OpKind, TensorType, check_arity, check_float, register

LOG_CLAMP = -100.0
BCE_EPS = 1e-12


def _labels(kind: OpKind, logits: TensorType, labels: TensorType) -> None:
    if logits.rank != 2:
        raise GraphError(f"{kind.value} takes logits of shape (N, C), got {logits.shape}")
    if labels.shape != logits.shape[:1] or labels.dtype.kind not in "iu":
        raise GraphError(f"{kind.value}: labels must be integers of shape ({logits.shape[0]},), "
                         f"got {labels.dtype} {labels.shape}")


def sce_infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.SOFTMAX_CROSS_ENTROPY, types, 2, 2)
    check_float(OpKind.SOFTMAX_CROSS_ENTROPY, types[:1])
    _labels(OpKind.SOFTMAX_CROSS_ENTROPY, *types)
    return [TensorType((1,), types[0].dtype), TensorType(types[0].shape, types[0].dtype)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    shifted = x64 - x64.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def sce_reference(a: NoAttrs, logits: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    logp = _log_softmax(logits)
    loss = -logp[np.arange(len(labels)), labels].mean()
    return [np.array([loss], dtype=logits.dtype), np.exp(logp).astype(logits.dtype)]


def sce_grad_infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, types, 2, 2)
    check_float(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, types[:1])
    _labels(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, *types)
    return [TensorType(types[0].shape, types[0].dtype)]


def sce_grad_reference(a: NoAttrs, probs: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    g = probs.astype(np.float64).copy()
    g[np.arange(len(labels)), labels] -= 1.0
    return [(g / len(labels)).astype(probs.dtype)]


def _pair_loss_infer(kind: OpKind, grad: bool):
    def infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, 2, 2)
        check_float(kind, types)
        if types[0].shape != types[1].shape:
            raise GraphError(f"{kind.value}: prediction shape {types[0].shape} differs from target shape "
                             f"{types[1].shape}")
        return [TensorType(types[0].shape if grad else (1,), types[0].dtype)]
    return infer


def mse_reference(a: NoAttrs, p: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    return [np.array([np.mean(np.square(p.astype(np.float64) - t))], dtype=p.dtype)]


def mse_grad_reference(a: NoAttrs, p: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    return [(2.0 * (p.astype(np.float64) - t) / p.size).astype(p.dtype)]


def bce_reference(a: NoAttrs, p: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    p64 = p.astype(np.float64)
    with np.errstate(divide="ignore"):
        lp = np.maximum(np.log(p64), LOG_CLAMP)
        lq = np.maximum(np.log(1.0 - p64), LOG_CLAMP)
    return [np.array([-np.mean(t * lp + (1.0 - t) * lq)], dtype=p.dtype)]


def bce_grad_reference(a: NoAttrs, p: np.ndarray, t: np.ndarray) -> list[np.ndarray]:
    p64 = p.astype(np.float64)
    return [((p64 - t) / np.maximum(p64 * (1.0 - p64), BCE_EPS) / p.size).astype(p.dtype)]


register(OpDef(OpKind.SOFTMAX_CROSS_ENTROPY, NoAttrs, sce_infer, sce_reference, n_inputs=(2, 2)))
register(OpDef(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, NoAttrs, sce_grad_infer, sce_grad_reference, n_inputs=(2, 2)))
register(OpDef(OpKind.MSE_LOSS, NoAttrs, _pair_loss_infer(OpKind.MSE_LOSS, False), mse_reference, n_inputs=(2, 2)))
register(OpDef(OpKind.MSE_LOSS_GRAD, NoAttrs, _pair_loss_infer(OpKind.MSE_LOSS_GRAD, True), mse_grad_reference,
               n_inputs=(2, 2)))
register(OpDef(OpKind.BCE_LOSS, NoAttrs, _pair_loss_infer(OpKind.BCE_LOSS, False), bce_reference, n_inputs=(2, 2)))
register(OpDef(OpKind.BCE_LOSS_GRAD, NoAttrs, _pair_loss_infer(OpKind.BCE_LOSS_GRAD, True), bce_grad_reference,
               n_inputs=(2, 2)))
