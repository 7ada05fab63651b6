"""Optimizer updates, one op per parameter tensor, written in place by the training step.

Every update takes ``(lr[1], step[1] int64, ok[1], X, G, *state)`` and returns ``(X_new,
*state_new)``; the memory plan gives each output the bytes of the input it replaces. ``step`` counts
the updates already applied (ONNX's ``T``); when ``ok`` is 0 (the step's loss or a gradient is not
finite) the op leaves everything as it was.

The gradient is first regularized, ``g = G + l2 * X + l1 * sign(X)`` (the Trainer sets l1/l2 on
weights only). The formulas are ONNX's training ops (ai.onnx.preview.training Momentum, Adagrad,
Adam), which are also PyTorch's SGD (momentum, nesterov) and Adagrad; PyTorch's Adam, AdamW and
RMSprop are selected by attributes:

- Momentum: ``v = alpha v + beta' g`` with ``beta' = beta`` after the first step and 1 on it;
  standard ``x -= lr v``, Nesterov ``x -= lr (g + alpha v)``. Plain SGD: ``x -= lr g``.
- Adagrad: ``lr' = lr / (1 + t decay)``, ``h += g^2``, ``x -= lr' g / (sqrt(h) + eps)``.
- RMSprop (PyTorch): ``v = alpha v + (1 - alpha) g^2``; centered subtracts the squared running mean
  of g; ``d = g / (sqrt(v') + eps)``; with momentum ``b = mu b + d``, ``x -= lr b``, else ``x -= lr d``.
- Adam, ONNX form: ``m = alpha m + (1 - alpha) g``, ``v = beta v + (1 - beta) g^2``,
  ``x -= lr sqrt(1 - beta^t) / (1 - alpha^t) m / (sqrt(v) + eps)`` (no correction at t = 0), then
  ``x *= 1 - norm_coefficient_post``. PyTorch form (``torch=True``): bias correction with t + 1 and
  ``x -= lr / (1 - alpha^(t+1)) m / (sqrt(v) / sqrt(1 - beta^(t+1)) + eps)``; AdamW's decoupled
  ``weight_decay`` multiplies x by ``1 - lr weight_decay`` first.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.base import NoAttrs, OpDef, OpKind, TensorType, check_arity, register


@dataclass(frozen=True)
class SgdAttrs:
    l1: float = 0.0
    l2: float = 0.0

    n_states = 0


@dataclass(frozen=True)
class MomentumAttrs:
    alpha: float = 0.9   # momentum
    beta: float = 1.0    # coefficient of the gradient (1 - PyTorch's dampening)
    nesterov: bool = False
    l1: float = 0.0
    l2: float = 0.0

    n_states = 1


@dataclass(frozen=True)
class AdagradAttrs:
    decay_factor: float = 0.0
    epsilon: float = 1e-10
    l1: float = 0.0
    l2: float = 0.0

    n_states = 1


@dataclass(frozen=True)
class RmsPropAttrs:
    alpha: float = 0.99
    epsilon: float = 1e-8
    momentum: float = 0.0
    centered: bool = False
    l1: float = 0.0
    l2: float = 0.0

    @property
    def n_states(self) -> int:
        return 1 + int(self.centered) + int(self.momentum != 0.0)


@dataclass(frozen=True)
class AdamAttrs:
    alpha: float = 0.9     # beta1
    beta: float = 0.999    # beta2
    epsilon: float = 1e-8
    l1: float = 0.0
    l2: float = 0.0        # ONNX norm_coefficient: coupled L2 (PyTorch Adam's weight_decay)
    norm_coefficient_post: float = 0.0
    weight_decay: float = 0.0  # decoupled, scaled by lr (AdamW)
    torch: bool = False

    n_states = 2


UPDATE_ATTRS: dict[OpKind, type] = {
    OpKind.SGD_UPDATE: SgdAttrs,
    OpKind.MOMENTUM_UPDATE: MomentumAttrs,
    OpKind.ADAGRAD_UPDATE: AdagradAttrs,
    OpKind.RMSPROP_UPDATE: RmsPropAttrs,
    OpKind.ADAM_UPDATE: AdamAttrs,
}


def _update_infer(kind: OpKind):
    def infer(a, types: Sequence[TensorType]) -> list[TensorType]:
        n = 5 + a.n_states
        check_arity(kind, types, n, n)
        lr, step, ok, x = types[:4]
        if lr.shape != (1,) or ok.shape != (1,) or lr.dtype != np.float32 or ok.dtype != np.float32:
            raise GraphError(f"{kind.value}: lr and ok must be float32 (1,), got {lr.dtype} {lr.shape} and "
                             f"{ok.dtype} {ok.shape}")
        if step.shape != (1,) or step.dtype != np.int64:
            raise GraphError(f"{kind.value}: step must be int64 (1,), got {step.dtype} {step.shape}")
        for i, t in enumerate(types[4:]):
            if t.shape != x.shape or t.dtype != x.dtype:
                raise GraphError(f"{kind.value}: input {5 + i} is {t.dtype} {t.shape}, expected X's {x.dtype} {x.shape}")
        return [TensorType(x.shape, x.dtype)] * (1 + a.n_states)
    return infer


def regularized(a, x: np.ndarray, g: np.ndarray) -> np.ndarray:
    return g + a.l2 * x + a.l1 * np.sign(x)


def sgd_step(a: SgdAttrs, lr: float, t: int, x, g) -> tuple:
    return (x - lr * regularized(a, x, g),)


def momentum_step(a: MomentumAttrs, lr: float, t: int, x, g, v) -> tuple:
    g = regularized(a, x, g)
    v = a.alpha * v + (a.beta if t > 0 else 1.0) * g
    return (x - lr * (g + a.alpha * v) if a.nesterov else x - lr * v), v


def adagrad_step(a: AdagradAttrs, lr: float, t: int, x, g, h) -> tuple:
    g = regularized(a, x, g)
    h = h + g * g
    return x - lr / (1.0 + t * a.decay_factor) * g / (np.sqrt(h) + a.epsilon), h


def rmsprop_step(a: RmsPropAttrs, lr: float, t: int, x, g, v, *rest) -> tuple:
    g = regularized(a, x, g)
    v = a.alpha * v + (1.0 - a.alpha) * g * g
    rest = list(rest)
    out = [v]
    denom_sq = v
    if a.centered:
        gavg = a.alpha * rest.pop(0) + (1.0 - a.alpha) * g
        out.append(gavg)
        denom_sq = v - gavg * gavg
    d = g / (np.sqrt(denom_sq) + a.epsilon)
    if a.momentum != 0.0:
        buf = a.momentum * rest.pop(0) + d
        out.append(buf)
        d = buf
    return (x - lr * d, *out)


def adam_step(a: AdamAttrs, lr: float, t: int, x, g, m, v) -> tuple:
    g = regularized(a, x, g)
    x = x * (1.0 - lr * a.weight_decay)
    m = a.alpha * m + (1.0 - a.alpha) * g
    v = a.beta * v + (1.0 - a.beta) * g * g
    if a.torch:
        k = t + 1
        x = x - lr / (1.0 - a.alpha ** k) * m / (np.sqrt(v) / np.sqrt(1.0 - a.beta ** k) + a.epsilon)
    else:
        r = lr * np.sqrt(1.0 - a.beta ** t) / (1.0 - a.alpha ** t) if t > 0 else lr
        x = x - r * (m / (np.sqrt(v) + a.epsilon))
    return (1.0 - a.norm_coefficient_post) * x, m, v


STEPS = {
    OpKind.SGD_UPDATE: sgd_step,
    OpKind.MOMENTUM_UPDATE: momentum_step,
    OpKind.ADAGRAD_UPDATE: adagrad_step,
    OpKind.RMSPROP_UPDATE: rmsprop_step,
    OpKind.ADAM_UPDATE: adam_step,
}


def _update_reference(kind: OpKind):
    def reference(a, lr, step, ok, x, g, *state) -> list[np.ndarray]:
        if not ok[0]:
            return [x.copy()] + [s.copy() for s in state]
        f64 = [v.astype(np.float64) for v in (x, g) + state]
        return [np.asarray(v).astype(x.dtype) for v in STEPS[kind](a, float(lr[0]), int(step[0]), *f64)]
    return reference


for _kind, _attrs in UPDATE_ATTRS.items():
    register(OpDef(_kind, _attrs, _update_infer(_kind), _update_reference(_kind), n_inputs=(5, 8)))


# --- the step's bookkeeping ---------------------------------------------------------------------
def all_finite_infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.ALL_FINITE, types, 1, -1)
    for t in types:
        if t.dtype != np.float32:
            raise GraphError(f"AllFinite checks float32 tensors, got {t.dtype} {t.shape}")
    return [TensorType((1,), np.float32)]


def all_finite_reference(a: NoAttrs, *xs: np.ndarray) -> list[np.ndarray]:
    return [np.array([float(all(np.isfinite(x).all() for x in xs))], dtype=np.float32)]


def step_infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.STEP_INCREMENT, types, 2, 2)
    if types[0].shape != (1,) or types[0].dtype != np.int64 or types[1].shape != (1,):
        raise GraphError(f"StepIncrement takes step int64 (1,) and ok (1,), got {types[0]} and {types[1]}")
    return [TensorType((1,), np.int64)]


register(OpDef(OpKind.ALL_FINITE, NoAttrs, all_finite_infer, all_finite_reference, n_inputs=(1, -1)))
register(OpDef(OpKind.STEP_INCREMENT, NoAttrs, step_infer,
               lambda a, step, ok: [step + np.int64(ok[0] != 0)], n_inputs=(2, 2)))
