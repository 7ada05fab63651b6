"""Losses and their gradients, averaged like PyTorch's default ``reduction='mean'``.

Every loss op takes ``(prediction, target[, rows])``; ``rows`` (an int64 of shape (1,), read at run
time) is how many leading samples count: the rest of the batch adds nothing to the loss or the
gradient and is left out of the mean. It lets a step compiled for a batch train on a smaller last
batch padded to it (convc.Trainer) with the small batch's result. Options are ``LossAttrs``;
``NoAttrs()`` means the defaults.

- SoftmaxCrossEntropy(x[N, C], y) -> (loss[1], probs[N, C]), PyTorch's CrossEntropyLoss and (``form=
  "log_probs"``, x already log-probabilities) NLLLoss. ``y`` is int class indices [N] or float
  class probabilities [N, C] (soft targets). With class weights ``w`` (default 1) and label
  smoothing ``eps`` each row's target distribution is ``t = (1 - eps) onehot(y) + eps / C`` (soft:
  ``(1 - eps) y + eps / C``) and its loss ``-sum_j w_j t_j logp_j``; the mean divides by the sum
  of ``w[y]`` over the counted rows (soft targets: by the number of rows). A class index outside
  [0, C) (convc.Trainer maps ``ignore_index`` there) ignores its row. The saved softmax is what
  the gradient reads: ``(sum_j w_j t_j) p - w t`` per row (log-probs: ``-w t``), over the divisor.
- MseLoss(p, t), by ``form``: "mse" ``(p - t)^2``; "l1" ``|p - t|``; "huber" (``delta``)
  ``0.5 d^2`` if ``|d| < delta`` else ``delta (|d| - 0.5 delta)``; "smooth_l1" (``delta`` is
  PyTorch's beta) huber / beta. Mean over the counted rows' elements.
- BceLoss(p, t): ``form="probs"`` (BCELoss) on probabilities, each log clamped at -100 and the
  gradient's denominator at 1e-12 as PyTorch does; ``form="logits"`` (BCEWithLogitsLoss)
  ``max(x, 0) - x t + log(1 + exp(-|x|))``, gradient ``sigmoid(x) - t``.

The gradient ops are the roots of the backward pass: they take no incoming gradient (it is 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, register

LOG_CLAMP = -100.0
BCE_EPS = 1e-12
FORMS = {OpKind.SOFTMAX_CROSS_ENTROPY: ("logits", "log_probs"), OpKind.MSE_LOSS: ("mse", "l1", "huber", "smooth_l1"),
         OpKind.BCE_LOSS: ("probs", "logits")}


@dataclass(frozen=True)
class LossAttrs:
    form: str = ""                   # "" = the kind's first form (FORMS)
    label_smoothing: float = 0.0     # SoftmaxCrossEntropy
    weights: tuple[float, ...] = ()  # SoftmaxCrossEntropy: one weight per class, () = all 1
    delta: float = 1.0               # MseLoss "huber" (delta) and "smooth_l1" (beta)


def options(kind: OpKind, attrs) -> LossAttrs:
    """The op's LossAttrs with its form filled in (NoAttrs: the defaults)."""
    a = attrs if isinstance(attrs, LossAttrs) else LossAttrs()
    base = _FORWARD.get(kind, kind)
    return a if a.form else LossAttrs(FORMS[base][0], a.label_smoothing, a.weights, a.delta)


_FORWARD = {OpKind.SOFTMAX_CROSS_ENTROPY_GRAD: OpKind.SOFTMAX_CROSS_ENTROPY, OpKind.MSE_LOSS_GRAD: OpKind.MSE_LOSS,
            OpKind.BCE_LOSS_GRAD: OpKind.BCE_LOSS}


def _check(kind: OpKind, attrs, types: Sequence[TensorType]) -> LossAttrs:
    check_arity(kind, types, 2, 3)
    check_float(kind, types[:1])
    a = options(kind, attrs)
    base = _FORWARD.get(kind, kind)
    if a.form not in FORMS[base]:
        raise GraphError(f"{kind.value}: form {a.form!r}, expected one of {FORMS[base]}")
    if len(types) == 3 and (types[2].shape != (1,) or types[2].dtype != np.int64):
        raise GraphError(f"{kind.value}: rows must be int64 of shape (1,), got {types[2].dtype} {types[2].shape}")
    if base is OpKind.SOFTMAX_CROSS_ENTROPY:
        x, y = types[0], types[1]
        if x.rank != 2:
            raise GraphError(f"{kind.value} takes x of shape (N, C), got {x.shape}")
        hard = y.shape == x.shape[:1] and y.dtype.kind in "iu"
        soft = y.shape == x.shape and y.dtype.kind == "f"
        if not (hard or soft):
            raise GraphError(f"{kind.value}: targets must be integer class indices of shape ({x.shape[0]},) or "
                             f"float probabilities of shape {x.shape}, got {y.dtype} {y.shape}")
        if a.weights and len(a.weights) != x.shape[1]:
            raise GraphError(f"{kind.value}: {len(a.weights)} class weights for {x.shape[1]} classes")
        if not 0.0 <= a.label_smoothing <= 1.0:
            raise GraphError(f"{kind.value}: label_smoothing {a.label_smoothing} is not in [0, 1]")
    else:
        check_float(kind, types[1:2])
        if types[0].shape != types[1].shape:
            raise GraphError(f"{kind.value}: prediction shape {types[0].shape} differs from target shape "
                             f"{types[1].shape}")
        if not a.delta > 0:
            raise GraphError(f"{kind.value}: delta {a.delta} must be positive")
    return a


def _rows(n: int, rows: np.ndarray | None) -> int:
    return n if rows is None else int(np.clip(rows.reshape(-1)[0], 0, n))


# --- cross-entropy ----------------------------------------------------------------------------------
def sce_infer(a, types: Sequence[TensorType]) -> list[TensorType]:
    _check(OpKind.SOFTMAX_CROSS_ENTROPY, a, types)
    return [TensorType((1,), types[0].dtype), TensorType(types[0].shape, types[0].dtype)]


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x64 = x.astype(np.float64)
    shifted = x64 - x64.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def ce_targets(a: LossAttrs, y: np.ndarray, n: int, c: int, rows: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(t [N, C] weighted by class: w_j t_j, with 0 on rows that do not count; the row mask; the divisor)."""
    w = np.asarray(a.weights, np.float64) if a.weights else np.ones(c)
    counted = np.arange(n) < rows
    if y.ndim == 1:
        valid = counted & (y >= 0) & (y < c)
        t = np.zeros((n, c))
        t[np.flatnonzero(valid), y[valid]] = 1.0
        divisor = float(w[y[valid]].sum())
    else:
        valid = counted
        t = y.astype(np.float64)
        divisor = float(rows)
    t = (1.0 - a.label_smoothing) * t + a.label_smoothing / c
    t[~valid] = 0.0
    return t * w, valid, divisor


def sce_reference(a, x: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> list[np.ndarray]:
    a = options(OpKind.SOFTMAX_CROSS_ENTROPY, a)
    n, c = x.shape
    logp = x.astype(np.float64) if a.form == "log_probs" else _log_softmax(x)
    wt, _, divisor = ce_targets(a, y, n, c, _rows(n, rows))
    loss = -(wt * logp).sum() / divisor if divisor else 0.0
    probs = np.exp(_log_softmax(x))
    return [np.array([loss], dtype=x.dtype), probs.astype(x.dtype)]


def sce_grad_infer(a, types: Sequence[TensorType]) -> list[TensorType]:
    _check(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, a, types)
    return [TensorType(types[0].shape, types[0].dtype)]


def sce_grad_reference(a, probs: np.ndarray, y: np.ndarray, rows: np.ndarray | None = None) -> list[np.ndarray]:
    a = options(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, a)
    n, c = probs.shape
    wt, _, divisor = ce_targets(a, y, n, c, _rows(n, rows))
    if not divisor:
        return [np.zeros_like(probs)]
    g = -wt if a.form == "log_probs" else wt.sum(1, keepdims=True) * probs.astype(np.float64) - wt
    return [(g / divisor).astype(probs.dtype)]


# --- elementwise losses -----------------------------------------------------------------------------
def _pair_infer(kind: OpKind, grad: bool):
    def infer(a, types: Sequence[TensorType]) -> list[TensorType]:
        _check(kind, a, types)
        return [TensorType(types[0].shape if grad else (1,), types[0].dtype)]
    return infer


def _elementwise(kind: OpKind, a: LossAttrs, p: np.ndarray, t: np.ndarray, grad: bool) -> np.ndarray:
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    d = p64 - t64
    if kind is OpKind.BCE_LOSS and a.form == "logits":
        return 1.0 / (1.0 + np.exp(-p64)) - t64 if grad else \
            np.maximum(p64, 0) - p64 * t64 + np.log1p(np.exp(-np.abs(p64)))
    if kind is OpKind.BCE_LOSS:
        if grad:
            return d / np.maximum(p64 * (1.0 - p64), BCE_EPS)
        with np.errstate(divide="ignore"):
            return -(t64 * np.maximum(np.log(p64), LOG_CLAMP) + (1.0 - t64) * np.maximum(np.log(1.0 - p64), LOG_CLAMP))
    if a.form == "mse":
        return 2.0 * d if grad else d * d
    if a.form == "l1":
        return np.sign(d) if grad else np.abs(d)
    small = np.abs(d) < a.delta
    scale = 1.0 if a.form == "huber" else 1.0 / a.delta  # smooth_l1 = huber / beta
    if grad:
        return scale * np.where(small, d, a.delta * np.sign(d))
    return scale * np.where(small, 0.5 * d * d, a.delta * (np.abs(d) - 0.5 * a.delta))


def _pair_reference(kind: OpKind, grad: bool):
    def reference(a, p: np.ndarray, t: np.ndarray, rows: np.ndarray | None = None) -> list[np.ndarray]:
        a = options(kind, a)
        n = p.shape[0]
        r = _rows(n, rows)
        v = _elementwise(kind, a, p, t, grad)
        count = r * (p.size // n if n else 0)
        v[r:] = 0.0
        if grad:
            return [(v / count if count else v).astype(p.dtype)]
        return [np.array([v.sum() / count if count else 0.0], dtype=p.dtype)]
    return reference


register(OpDef(OpKind.SOFTMAX_CROSS_ENTROPY, LossAttrs, sce_infer, sce_reference, n_inputs=(2, 3)))
register(OpDef(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD, LossAttrs, sce_grad_infer, sce_grad_reference, n_inputs=(2, 3)))
for _kind, _grad in ((OpKind.MSE_LOSS, OpKind.MSE_LOSS_GRAD), (OpKind.BCE_LOSS, OpKind.BCE_LOSS_GRAD)):
    register(OpDef(_kind, LossAttrs, _pair_infer(_kind, False), _pair_reference(_kind, False), n_inputs=(2, 3)))
    register(OpDef(_grad, LossAttrs, _pair_infer(_grad, True), _pair_reference(_kind, True), n_inputs=(2, 3)))
