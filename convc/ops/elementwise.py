"""Unary activations and broadcasting binary/variadic arithmetic.

References compute in float64 and cast back, so they are the accurate side of every comparison.
Softplus uses the overflow-free form max(x, 0) + log1p(exp(-|x|)) (log(exp(x) + 1) is inf beyond
x ~ 88 in float32, where the true value is x)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from convc.errors import GraphError
from convc.ops.attrs import onnx_attr
from convc.ops.base import (NoAttrs, OpDef, OpGroup, OpKind, TensorType, broadcast_shapes, check_arity, check_float,
                            no_flops, numel, per_output, register, same_type)


@dataclass(frozen=True)
class LeakyReluAttrs:
    alpha: float = onnx_attr(0.01)


@dataclass(frozen=True)
class DropoutAttrs:
    ratio: float = onnx_attr(0.5, input=1, input_since=12)  # identity at inference; the training step applies it


@dataclass(frozen=True)
class ClipAttrs:
    """min(max(x, min), max); ReLU6 is ClipAttrs(0, 6). NaN stays NaN; min > max gives max everywhere."""
    min: float = onnx_attr(-np.inf, input=1, input_since=11)
    max: float = onnx_attr(np.inf, input=2, input_since=11)


@dataclass(frozen=True)
class EluAttrs:
    alpha: float = onnx_attr(1.0)


@dataclass(frozen=True)
class SeluAttrs:
    alpha: float = onnx_attr(1.67326319217681884765625)
    gamma: float = onnx_attr(1.05070102214813232421875)


@dataclass(frozen=True)
class SwishAttrs:
    """x * sigmoid(alpha x) (ONNX Swish, opset 24); alpha = 1 is SiLU."""
    alpha: float = onnx_attr(1.0)


@dataclass(frozen=True)
class GeluAttrs:
    """x Phi(x) with Phi the normal CDF ("none"), or its tanh approximation ("tanh") (ONNX Gelu, opset 20)."""
    approximate: str = onnx_attr("none")


@dataclass(frozen=True)
class HardSigmoidAttrs:
    alpha: float = onnx_attr(0.2)
    beta: float = onnx_attr(0.5)


def _unary(kind: OpKind):
    def infer(a, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, 1, 1)
        check_float(kind, types)
        return same_type(types[0])
    return infer


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _swish_derivative(x: np.ndarray, alpha: float) -> np.ndarray:
    s = _sigmoid(alpha * x)
    return s + alpha * x * s * (1.0 - s)


_erf = np.frompyfunc(math.erf, 1, 1)
_erfc = np.frompyfunc(math.erfc, 1, 1)
GELU_TANH_K = math.sqrt(2.0 / math.pi)


def _phi(x: np.ndarray) -> np.ndarray:
    """The normal CDF, from erfc so that it keeps its relative accuracy for negative x."""
    return 0.5 * _erfc(-x / math.sqrt(2.0)).astype(np.float64)


def _gelu(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(GELU_TANH_K * (x + 0.044715 * x ** 3)))
    return x * _phi(x)


def _gelu_derivative(x: np.ndarray, approximate: str) -> np.ndarray:
    if approximate == "tanh":
        t = np.tanh(GELU_TANH_K * (x + 0.044715 * x ** 3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_TANH_K * (1.0 + 3 * 0.044715 * x * x)
    return _phi(x) + x * np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _mish_derivative(x: np.ndarray) -> np.ndarray:
    t = np.tanh(np.logaddexp(x, 0.0))
    return t + x * (1.0 - t * t) * _sigmoid(x)


def _gelu_infer(a: "GeluAttrs", types: Sequence[TensorType]) -> list[TensorType]:
    if a.approximate not in ("none", "tanh"):
        raise GraphError(f"Gelu approximate={a.approximate!r}: expected 'none' or 'tanh'")
    return _unary(OpKind.GELU)(a, types)


def _quiet(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """``fn(x)`` without numpy's warnings for log(0), 1/0 or sqrt(-1): inf and NaN are the answers."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return fn(x)


def _f64(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64)


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0)))


def _hard_sigmoid(x: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    return np.clip(alpha * x + beta, 0.0, 1.0)


Fn = Callable[[Any, np.ndarray], np.ndarray]


def unary_op(kind: OpKind, attrs: type, fn: Fn, *, fusible: bool = False, derivative: Fn | None = None,
             infer=None) -> None:
    """Register unary op ``kind`` (a member of ``OpGroup.UNARY``): ``fn(attrs, x)`` is its reference, in any
    precision (the result is cast back to x's dtype); ``fusible``: passes/fusion.py may fold it into a
    Conv/ConvTranspose/Gemm epilogue, where codegen applies its kernel (codegen/kernels/activations.UNARY);
    ``derivative(attrs, x)``: dy/dx, which makes the op trainable (its kernel is
    codegen/kernels/activations.DERIVATIVE[kind]); ``infer``: shape inference that also checks attributes."""
    register(OpDef(kind, attrs, infer or _unary(kind), lambda a, x: [np.asarray(fn(a, x)).astype(x.dtype)],
                   flops=no_flops if kind in OpGroup.VIEW else per_output(1), fusible=fusible, derivative=derivative))


unary_op(OpKind.RELU, NoAttrs, lambda a, x: np.maximum(x, 0), fusible=True)
unary_op(OpKind.LEAKY_RELU, LeakyReluAttrs, lambda a, x: np.where(x >= 0, x, a.alpha * x), fusible=True)
unary_op(OpKind.SIGMOID, NoAttrs, lambda a, x: _sigmoid(x.astype(np.float64)), fusible=True)
unary_op(OpKind.SWISH, SwishAttrs, lambda a, x: _f64(x) * _sigmoid(a.alpha * _f64(x)), fusible=True,
         derivative=lambda a, x: _swish_derivative(_f64(x), a.alpha))
unary_op(OpKind.TANH, NoAttrs, lambda a, x: np.tanh(x), fusible=True)
unary_op(OpKind.IDENTITY, NoAttrs, lambda a, x: x.copy())
unary_op(OpKind.DROPOUT, DropoutAttrs, lambda a, x: x.copy())
unary_op(OpKind.CLIP, ClipAttrs, lambda a, x: np.minimum(np.maximum(x, a.min), a.max), fusible=True,
         derivative=lambda a, x: ((x > a.min) & (x < a.max)).astype(np.float64))
unary_op(OpKind.ELU, EluAttrs, lambda a, x: _elu(_f64(x), a.alpha),
         derivative=lambda a, x: np.where(x > 0, 1.0, a.alpha * np.exp(np.minimum(_f64(x), 0))))
unary_op(OpKind.SELU, SeluAttrs, lambda a, x: a.gamma * _elu(_f64(x), a.alpha),
         derivative=lambda a, x: a.gamma * np.where(x > 0, 1.0, a.alpha * np.exp(np.minimum(_f64(x), 0))))
# Clip, HardSigmoid and HardSwish differentiate as PyTorch's hardtanh (ReLU6), hardsigmoid and hardswish:
# zero outside the open interval where the output is not flat
unary_op(OpKind.HARD_SIGMOID, HardSigmoidAttrs, lambda a, x: _hard_sigmoid(_f64(x), a.alpha, a.beta),
         derivative=lambda a, x: np.where(np.abs(a.alpha * _f64(x) + a.beta - 0.5) < 0.5, a.alpha, 0.0))
unary_op(OpKind.HARD_SWISH, NoAttrs, lambda a, x: _f64(x) * _hard_sigmoid(_f64(x), 1.0 / 6.0, 0.5), fusible=True,
         derivative=lambda a, x: np.where(x < -3, 0.0, np.where(x <= 3, _f64(x) / 3 + 0.5, 1.0)))
unary_op(OpKind.SOFTPLUS, NoAttrs, lambda a, x: np.maximum(_f64(x), 0) + np.log1p(np.exp(-np.abs(_f64(x)))),
         derivative=lambda a, x: _sigmoid(_f64(x)))
unary_op(OpKind.SOFTSIGN, NoAttrs, lambda a, x: _f64(x) / (1.0 + np.abs(_f64(x))),
         derivative=lambda a, x: 1.0 / np.square(1.0 + np.abs(_f64(x))))
unary_op(OpKind.ERF, NoAttrs, lambda a, x: _erf(_f64(x)).astype(np.float64),
         derivative=lambda a, x: 2.0 / math.sqrt(math.pi) * np.exp(-np.square(_f64(x))))
unary_op(OpKind.GELU, GeluAttrs, lambda a, x: _gelu(_f64(x), a.approximate), fusible=True,
         derivative=lambda a, x: _gelu_derivative(_f64(x), a.approximate), infer=_gelu_infer)
unary_op(OpKind.NEG, NoAttrs, lambda a, x: -_f64(x), derivative=lambda a, x: np.full(x.shape, -1.0))
unary_op(OpKind.ABS, NoAttrs, lambda a, x: np.abs(_f64(x)), derivative=lambda a, x: np.sign(_f64(x)))
unary_op(OpKind.EXP, NoAttrs, lambda a, x: np.exp(_f64(x)), derivative=lambda a, x: np.exp(_f64(x)))
# outside the domain (log of a negative, sqrt of a negative) the reference gives NaN, as the kernels do
unary_op(OpKind.LOG, NoAttrs, lambda a, x: _quiet(np.log, _f64(x)), derivative=lambda a, x: _quiet(np.reciprocal, _f64(x)))
unary_op(OpKind.SQRT, NoAttrs, lambda a, x: _quiet(np.sqrt, _f64(x)),
         derivative=lambda a, x: _quiet(lambda v: 0.5 / np.sqrt(v), _f64(x)))
unary_op(OpKind.RECIPROCAL, NoAttrs, lambda a, x: _quiet(np.reciprocal, _f64(x)),
         derivative=lambda a, x: _quiet(lambda v: -1.0 / (v * v), _f64(x)))
unary_op(OpKind.MISH, NoAttrs, lambda a, x: _f64(x) * np.tanh(np.logaddexp(_f64(x), 0.0)), fusible=True,
         derivative=lambda a, x: _mish_derivative(_f64(x)))
# piecewise constant: the derivative is 0 wherever it exists (PyTorch's floor, ceil and round backward give
# zeros too), so a path through them trains nothing before them rather than being refused
unary_op(OpKind.FLOOR, NoAttrs, lambda a, x: np.floor(x), derivative=lambda a, x: np.zeros(x.shape))
unary_op(OpKind.CEIL, NoAttrs, lambda a, x: np.ceil(x), derivative=lambda a, x: np.zeros(x.shape))
unary_op(OpKind.ROUND, NoAttrs, lambda a, x: np.round(x), derivative=lambda a, x: np.zeros(x.shape))  # half to even


def _broadcast(kind: OpKind, lo: int, hi: int):
    def infer(a, types: Sequence[TensorType]) -> list[TensorType]:
        check_arity(kind, types, lo, hi)
        check_float(kind, types)
        if len({t.dtype for t in types}) != 1:
            raise GraphError(f"{kind.value} inputs have different dtypes: {[str(t.dtype) for t in types]}")
        return [TensorType(broadcast_shapes(kind, *[t.shape for t in types]), types[0].dtype)]
    return infer


def _n_ary_flops(a: NoAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """k inputs combine with k - 1 operations per output element."""
    return (len(ins) - 1) * numel(outs[0])


register(OpDef(OpKind.ADD, NoAttrs, _broadcast(OpKind.ADD, 2, 2), lambda a, x, y: [(x + y).astype(x.dtype)],
               n_inputs=(2, 2), flops=_n_ary_flops))
register(OpDef(OpKind.MUL, NoAttrs, _broadcast(OpKind.MUL, 2, 2), lambda a, x, y: [(x * y).astype(x.dtype)],
               n_inputs=(2, 2), flops=_n_ary_flops))
register(OpDef(OpKind.SUM, NoAttrs, _broadcast(OpKind.SUM, 1, -1),
               lambda a, *xs: [reduce(np.add, xs).astype(xs[0].dtype)], n_inputs=(1, -1), flops=_n_ary_flops))
register(OpDef(OpKind.SUB, NoAttrs, _broadcast(OpKind.SUB, 2, 2), lambda a, x, y: [(x - y).astype(x.dtype)],
               n_inputs=(2, 2), flops=_n_ary_flops))
register(OpDef(OpKind.DIV, NoAttrs, _broadcast(OpKind.DIV, 2, 2),
               lambda a, x, y: [(_f64(x) / _f64(y)).astype(x.dtype)], n_inputs=(2, 2), flops=_n_ary_flops))
# x ** y as C's powf: a negative base to an integer power is real, to another power NaN
register(OpDef(OpKind.POW, NoAttrs, _broadcast(OpKind.POW, 2, 2),
               lambda a, x, y: [_quiet(lambda v: np.power(v, _f64(y)), _f64(x)).astype(x.dtype)], n_inputs=(2, 2),
               flops=per_output(1)))
# np.maximum/np.minimum propagate NaN, as ONNX Max/Min (and the kernels' llvm.maximum/minimum) do; Max and
# Min of k inputs count 1 per output element, as they always have (not k - 1)
register(OpDef(OpKind.MAX, NoAttrs, _broadcast(OpKind.MAX, 1, -1),
               lambda a, *xs: [reduce(np.maximum, xs).astype(xs[0].dtype)], n_inputs=(1, -1), flops=per_output(1)))
register(OpDef(OpKind.MIN, NoAttrs, _broadcast(OpKind.MIN, 1, -1),
               lambda a, *xs: [reduce(np.minimum, xs).astype(xs[0].dtype)], n_inputs=(1, -1), flops=per_output(1)))


def prelu_infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    """PRelu(X, slope): slope broadcasts to X's shape (unidirectionally: the output is X's shape)."""
    out = _broadcast(OpKind.PRELU, 2, 2)(a, types)
    if out[0].shape != types[0].shape:
        raise GraphError(f"PRelu slope.shape={types[1].shape} does not broadcast to X.shape={types[0].shape}")
    return out


register(OpDef(OpKind.PRELU, NoAttrs, prelu_infer,
               lambda a, x, slope: [np.where(x < 0, _f64(x) * slope, x).astype(x.dtype)], n_inputs=(2, 2),
               flops=per_output(1)))


def where_infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    """Where(mask, x, y): three float tensors of one dtype broadcast together (the importer turns ONNX's boolean
    condition, a constant, into a 0/1 mask of x's dtype)."""
    return _broadcast(OpKind.WHERE, 3, 3)(a, types)


register(OpDef(OpKind.WHERE, NoAttrs, where_infer,
               lambda a, mask, x, y: [np.where(mask != 0, x, y).astype(x.dtype)], n_inputs=(3, 3),
               flops=per_output(1)))
