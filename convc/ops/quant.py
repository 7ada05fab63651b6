"""Quantized tensors: QuantizeLinear and DequantizeLinear, as the ONNX spec defines them.

convc holds a quantized activation as a uint8 or int8 tensor and its scale and zero point as
constant inputs of the ops that convert it (one value, or one per channel along ``axis``):

- ``QuantizeLinear``: y = saturate(round_half_to_even(x / scale) + zero_point), x float32, y uint8
  or int8 (``to``). The division is a float32 division (not a multiplication by 1/scale), as in the
  ONNX reference and onnxruntime's MLAS, so both give the same integers;
- ``DequantizeLinear``: y = (x - zero_point) * scale in float32; x uint8, int8 or int32 (a bias).

The importer (frontend/onnx/quant.py) always gives both ops three inputs: x, scale and zero point
(a zero of the quantized type when the model omits it). QOperator nodes (QLinearConv,
QLinearMatMul) import as DequantizeLinear -> float op -> QuantizeLinear, which computes what
onnxruntime computes up to the float rounding of the requantization scale.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, numel, register

QUANTIZED = {"uint8": (0, 255), "int8": (-128, 127)}  # the activation/weight types convc computes with


@dataclass(frozen=True)
class QuantAttrs:
    """``axis``: the channel axis of a per-channel scale (non-negative after import); ignored for a
    per-tensor scale. ``to``: QuantizeLinear's output type (DequantizeLinear reads its input's type)."""
    axis: int = onnx_attr(1)
    to: str = "uint8"


def channel_shape(a: QuantAttrs, x_shape: tuple[int, ...], scale: np.ndarray | TensorType) -> tuple[int, ...]:
    """The shape a scale or zero point broadcasts as against x: all ones but the axis for a per-channel one."""
    size = scale.size if isinstance(scale, np.ndarray) else numel(scale)
    if size == 1:
        return (1,) * len(x_shape)
    return tuple(x_shape[i] if i == a.axis else 1 for i in range(len(x_shape)))


def _check_params(kind: OpKind, a: QuantAttrs, types: Sequence[TensorType]) -> None:
    check_arity(kind, types, 3, 3)
    x, scale, zp = types
    if kind is OpKind.QUANTIZE_LINEAR and a.to not in QUANTIZED:
        raise GraphError(f"{kind.value}: quantized type {a.to} is not one of {sorted(QUANTIZED)}")
    if scale.dtype != np.float32:
        raise GraphError(f"{kind.value}: scale has dtype {scale.dtype}, expected float32")
    if numel(scale) != numel(zp):
        raise GraphError(f"{kind.value}: scale has shape {scale.shape} but zero point {zp.shape}")
    if numel(scale) != 1:
        if len(scale.shape) != 1 or not 0 <= a.axis < len(x.shape) or x.shape[a.axis] != scale.shape[0]:
            raise GraphError(f"{kind.value}: a per-channel scale of shape {scale.shape} does not match axis "
                             f"{a.axis} of input shape {x.shape}")


def quantize(a: QuantAttrs, x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> list[np.ndarray]:
    lo, hi = QUANTIZED[a.to]
    shape = channel_shape(a, x.shape, scale)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32).reshape(shape))
    with np.errstate(invalid="ignore"):
        q = np.clip(q + zero_point.astype(np.float32).reshape(shape), lo, hi)
    return [np.nan_to_num(q, nan=lo).astype(a.to)]


def dequantize(a: QuantAttrs, x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> list[np.ndarray]:
    shape = channel_shape(a, x.shape, scale)
    diff = x.astype(np.int64) - zero_point.astype(np.int64).reshape(shape)
    return [(diff.astype(np.float32) * scale.astype(np.float32).reshape(shape)).astype(np.float32)]


def _infer_quantize(a: QuantAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    _check_params(OpKind.QUANTIZE_LINEAR, a, types)
    if types[0].dtype != np.float32:
        raise GraphError(f"QuantizeLinear input has dtype {types[0].dtype}, expected float32")
    if types[2].dtype != np.dtype(a.to):
        raise GraphError(f"QuantizeLinear zero point has dtype {types[2].dtype}, expected {a.to}")
    return [TensorType(types[0].shape, np.dtype(a.to))]


def _infer_dequantize(a: QuantAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    _check_params(OpKind.DEQUANTIZE_LINEAR, a, types)
    if types[0].dtype.name not in (*QUANTIZED, "int32") or types[2].dtype != types[0].dtype:
        raise GraphError(f"DequantizeLinear input has dtype {types[0].dtype} and zero point {types[2].dtype}, "
                         f"expected one of {sorted(QUANTIZED)} or int32 for both")
    return [TensorType(types[0].shape, np.float32)]


def _per_element(n: int):
    return lambda a, ins, outs: n * numel(outs[0])


register(OpDef(OpKind.QUANTIZE_LINEAR, QuantAttrs, _infer_quantize, quantize, n_inputs=(3, 3),
               flops=_per_element(3)))  # divide, round, add (the clamp counted free)
register(OpDef(OpKind.DEQUANTIZE_LINEAR, QuantAttrs, _infer_dequantize, dequantize, n_inputs=(3, 3),
               flops=_per_element(2)))  # subtract, multiply
