"""Gradients of the activations and Softmax, training-mode Dropout, and Slice, the data movement Concat's
backward pass needs (the ReduceSum autodiff sums broadcast gradients with is in reduce.py).

Dropout draws its mask from a counter-based generator: the keep decision for element ``i`` at step
``t`` is a pure function of (seed, salt, t, i), so the generated code, the numpy reference and the
gradient (which recomputes the mask instead of storing it) all agree, and a run is reproducible::

    key = fmix64(seed * A + salt * B + t)          (mod 2**64, A and B odd constants)
    z   = fmix64(key + (i + 1) * GOLDEN)           (the splitmix64 finalizer)
    keep element i  <=>  z >> 40  >=  floor(ratio * 2**24)

and a kept element is scaled by 1 / (1 - ratio) (inverted dropout: nothing to do at inference).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from convc.errors import GraphError
from convc.ops.base import (NoAttrs, OpDef, OpKind, TensorType, check_arity, check_float, no_flops, op_def,
                            register)
from convc.ops.elementwise import LeakyReluAttrs
from convc.ops.softmax import SoftmaxAttrs

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
SEED_MUL = 0xD1B54A32D192ED03
SALT_MUL = 0xABC98388FB8FAC03
FMIX1 = 0xBF58476D1CE4E5B9
FMIX2 = 0x94D049BB133111EB
UNIFORM_BITS = 24


@dataclass(frozen=True)
class DropoutTrainAttrs:
    ratio: float
    seed: int   # the Trainer's seed
    salt: int   # distinguishes the model's dropout layers

    @property
    def threshold(self) -> int:
        return int(self.ratio * (1 << UNIFORM_BITS))

    @property
    def scale(self) -> float:
        return 1.0 / (1.0 - self.ratio)


@dataclass(frozen=True)
class SliceAttrs:
    axis: int
    start: int
    stop: int


def fmix64(z):
    """The splitmix64 finalizer on Python ints or uint64 arrays (wrapping arithmetic)."""
    if isinstance(z, int):
        z = ((z ^ (z >> 30)) * FMIX1) & MASK64
        z = ((z ^ (z >> 27)) * FMIX2) & MASK64
        return z ^ (z >> 31)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(FMIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(FMIX2)
    return z ^ (z >> np.uint64(31))


def dropout_key(seed: int, salt: int, step: int) -> int:
    return fmix64((seed * SEED_MUL + salt * SALT_MUL + step) & MASK64)


def dropout_keep(a: DropoutTrainAttrs, step: int, n: int) -> np.ndarray:
    """The keep mask (bool, flat) of ``n`` elements at ``step``."""
    key = np.uint64(dropout_key(a.seed, a.salt, int(step)))
    with np.errstate(over="ignore"):
        z = fmix64(key + (np.arange(1, n + 1, dtype=np.uint64) * np.uint64(GOLDEN)))
    return (z >> np.uint64(64 - UNIFORM_BITS)) >= np.uint64(a.threshold)


# --- activation gradients: (saved tensor, dY) -> dX --------------------------------------------
def _pair_infer(kind: OpKind):
    def infer(a, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, 2, 2)
        check_float(kind, types)
        if types[0].shape != types[1].shape:
            raise GraphError(f"{kind.value}: saved tensor shape {types[0].shape} differs from dY.shape={types[1].shape}")
        return [TensorType(types[1].shape, types[1].dtype)]
    return infer


def _softmax_grad(a: SoftmaxAttrs, y, dy):
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    return y64 * (dy64 - (dy64 * y64).sum(axis=a.axis, keepdims=True))


_PAIR_GRADS = {
    # ReLU and Sigmoid/Tanh read their output Y, LeakyRelu its input X (a negative alpha flips signs)
    OpKind.RELU_GRAD: (NoAttrs, lambda a, y, dy: np.where(y > 0, dy, 0)),
    OpKind.LEAKY_RELU_GRAD: (LeakyReluAttrs, lambda a, x, dy: np.where(x >= 0, dy, a.alpha * dy.astype(np.float64))),
    OpKind.SIGMOID_GRAD: (NoAttrs, lambda a, y, dy: dy * (y.astype(np.float64) * (1.0 - y))),
    OpKind.TANH_GRAD: (NoAttrs, lambda a, y, dy: dy * (1.0 - np.square(y.astype(np.float64)))),
    OpKind.SOFTMAX_GRAD: (SoftmaxAttrs, _softmax_grad),
}


@dataclass(frozen=True)
class UnaryGradAttrs:
    """UnaryGrad(X, dY) = dY * f'(X) for the unary op ``kind`` with attributes ``attrs``."""
    kind: OpKind
    attrs: Any


def _unary_grad(a: UnaryGradAttrs, x: np.ndarray, dy: np.ndarray) -> np.ndarray:
    derivative = op_def(a.kind).derivative
    if derivative is None:
        raise GraphError(f"UnaryGrad of {a.kind.value}, which declares no derivative")
    return dy.astype(np.float64) * derivative(a.attrs, x.astype(np.float64))


_PAIR_GRADS[OpKind.UNARY_GRAD] = (UnaryGradAttrs, _unary_grad)


def _dtype_preserving(fn):
    return lambda a, s, dy: [np.asarray(fn(a, s, dy)).astype(dy.dtype)]


for _kind, (_attrs, _fn) in _PAIR_GRADS.items():
    register(OpDef(_kind, _attrs, _pair_infer(_kind), _dtype_preserving(_fn), n_inputs=(2, 2)))


# --- dropout ------------------------------------------------------------------------------------
def _dropout_infer(kind: OpKind):
    def infer(a: DropoutTrainAttrs, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, 2, 2)
        check_float(kind, types[:1])
        if types[1].shape != (1,) or types[1].dtype != np.int64:
            raise GraphError(f"{kind.value}: the step counter must be int64 (1,), got {types[1].dtype} {types[1].shape}")
        if not 0.0 <= a.ratio < 1.0:
            raise GraphError(f"{kind.value}: ratio={a.ratio} must be in [0, 1)")
        return [TensorType(types[0].shape, types[0].dtype)]
    return infer


def dropout_reference(a: DropoutTrainAttrs, x: np.ndarray, step: np.ndarray) -> list[np.ndarray]:
    keep = dropout_keep(a, int(step[0]), x.size).reshape(x.shape)
    return [np.where(keep, x * x.dtype.type(a.scale), 0).astype(x.dtype)]


register(OpDef(OpKind.DROPOUT_TRAIN, DropoutTrainAttrs, _dropout_infer(OpKind.DROPOUT_TRAIN), dropout_reference,
               n_inputs=(2, 2)))
register(OpDef(OpKind.DROPOUT_GRAD, DropoutTrainAttrs, _dropout_infer(OpKind.DROPOUT_GRAD), dropout_reference,
               n_inputs=(2, 2)))


# --- Slice -------------------------------------------------------------------------
def slice_infer(a: SliceAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.SLICE, types, 1, 1)
    s = types[0].shape
    if not 0 <= a.axis < len(s) or not 0 <= a.start < a.stop <= s[a.axis]:
        raise GraphError(f"Slice [{a.start}:{a.stop}] on axis {a.axis} is out of range for shape {s}")
    out = list(s)
    out[a.axis] = a.stop - a.start
    return [TensorType(tuple(out), types[0].dtype)]


def slice_reference(a: SliceAttrs, x: np.ndarray) -> list[np.ndarray]:
    sl = (slice(None),) * a.axis + (slice(a.start, a.stop),)
    return [np.ascontiguousarray(x[sl])]


register(OpDef(OpKind.SLICE, SliceAttrs, slice_infer, slice_reference, flops=no_flops))
