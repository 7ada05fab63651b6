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
from convc.ops.pool import PoolAttrs, max_pool_reference, window_flops
from convc.ops.pool import _pool_infer as pool_infer

QUANTIZED = {"uint8": (0, 255), "int8": (-128, 127)}  # the activation/weight types convc computes with

# Graph.metadata key: folded tensor name -> (integers, scale, zero point, axis) of a constant DequantizeLinear
# the importer evaluated (int8 weights, int32 biases); passes/quantize.py multiplies with the integers and
# removes the entry
QUANTIZED_CONSTANTS = "quantized_constants"


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


# --- the integer conv (placed by passes/quantize.py) -----------------------------------------------
@dataclass(frozen=True)
class Int8ConvAttrs:
    """A 2-D channels-last conv over a quantized input with its requantization fused in.

    y[n, h, w, m] = saturate(round_half_to_even(float32(acc) * multiplier[m] + offset[m]) + y_zero_point),
    clamped to [lo, hi] (a fused ReLU or Clip narrows the type's range), where
    acc = bias[m] + sum over taps and channels of (x - x_zero_point) * w (int32, exact; padding reads
    x_zero_point, a real 0). multiplier = x_scale * w_scale[m] / y_scale (float32, as onnxruntime's
    requantization computes it), offset = a float bias / y_scale (zero when the bias is int32).
    Inputs: x (N, H, W, C) uint8/int8, w (M, C/group, KH, KW) int8 constant, bias (M,) int32 constant."""
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    pads: tuple[int, ...]  # (top, left, bottom, right)
    dilations: tuple[int, ...]
    group: int
    x_zero_point: int
    multiplier: tuple[float, ...]
    offset: tuple[float, ...]
    y_zero_point: int
    to: str
    lo: int
    hi: int
    residual: Int8Residual | None = None


@dataclass(frozen=True)
class Int8Residual:
    """A residual add folded into Int8Conv's epilogue: DequantizeLinear(conv) + DequantizeLinear(r) ->
    QuantizeLinear, computed as onnxruntime's QLinearAdd (MLAS) does. The conv's output is first quantized
    as the model has it (``zero_point``, clamped to [lo, hi]: the Int8ConvAttrs' y_zero_point, lo and hi
    then describe the sum's quantization), then
    y = round_half_to_even(fma(b, ratio_b, fma(a, ratio_a, fixed))) clamped, where a and b are the add's
    first and second integers (``conv_first``: the conv's is a), ratio = input scale / sum's scale and
    fixed = sum's zero point - (ratio_a * zero_point_a + ratio_b * zero_point_b), all float32."""
    zero_point: int
    lo: int
    hi: int
    input_zero_point: int  # r's
    conv_ratio: float
    input_ratio: float
    fixed: float
    conv_first: bool


def int8_conv_output_shape(a: Int8ConvAttrs, x: tuple[int, ...], m: int) -> tuple[int, ...]:
    n, h, w, _ = x
    (kh, kw), (sh, sw), (dh, dw) = a.kernel_shape, a.strides, a.dilations
    oh = (h + a.pads[0] + a.pads[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (w + a.pads[1] + a.pads[3] - dw * (kw - 1) - 1) // sw + 1
    return (n, oh, ow, m)


def _infer_int8_conv(a: Int8ConvAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.INT8_CONV, types, 3 + (a.residual is not None), 3 + (a.residual is not None))
    x, w, b = types[:3]
    if x.dtype.name not in QUANTIZED or w.dtype != np.int8 or b.dtype != np.int32:
        raise GraphError(f"Int8Conv takes uint8/int8 x, int8 w and int32 bias, got {x.dtype}, {w.dtype}, {b.dtype}")
    if len(x.shape) != 4 or len(w.shape) != 4 or w.shape[1] * a.group != x.shape[3] or b.shape != (w.shape[0],):
        raise GraphError(f"Int8Conv shapes do not fit: x {x.shape} (NHWC), w {w.shape}, bias {b.shape}, "
                         f"group {a.group}")
    if len(a.multiplier) != w.shape[0] or len(a.offset) != w.shape[0]:
        raise GraphError(f"Int8Conv has {len(a.multiplier)} multipliers for {w.shape[0]} output channels")
    y = TensorType(int8_conv_output_shape(a, x.shape, w.shape[0]), np.dtype(a.to))
    if a.residual is not None and (types[3].shape != y.shape or types[3].dtype.name not in QUANTIZED):
        raise GraphError(f"Int8Conv's residual input {types[3].dtype} {types[3].shape} does not match its "
                         f"output {y.shape}")
    return [y]


def int8_accumulate(a: Int8ConvAttrs, x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The int32 accumulator of Int8Conv (exact integer arithmetic in int64, checked to fit int32)."""
    n, h, wd, c = x.shape
    m, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), g = a.strides, a.dilations, a.group
    xp = np.zeros((n, h + a.pads[0] + a.pads[2], wd + a.pads[1] + a.pads[3], c), np.int64)
    xp[:, a.pads[0]:a.pads[0] + h, a.pads[1]:a.pads[1] + wd] = x.astype(np.int64) - a.x_zero_point
    _, oh, ow, _ = int8_conv_output_shape(a, x.shape, m)
    acc = np.zeros((n, oh, ow, m), np.int64) + bias.astype(np.int64)
    mg = m // g
    for i in range(kh):
        for j in range(kw):
            win = xp[:, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
            for gi in range(g):
                acc[..., gi * mg:(gi + 1) * mg] += win[..., gi * cg:(gi + 1) * cg] @ \
                    w[gi * mg:(gi + 1) * mg, :, i, j].astype(np.int64).T
    if np.abs(acc).max(initial=0) >= 2**31:
        raise GraphError("Int8Conv accumulator overflows int32")
    return acc


def requantize(a: Int8ConvAttrs, acc: np.ndarray, residual: np.ndarray | None = None) -> np.ndarray:
    """The fused epilogue, in float32 in the kernel's order (with the residual add when ``a.residual``)."""
    y = acc.astype(np.float32) * np.asarray(a.multiplier, np.float32) + np.asarray(a.offset, np.float32)
    r = a.residual
    if r is None:
        q = np.rint(y) + np.float32(a.y_zero_point)
        return np.clip(q, a.lo, a.hi).astype(a.to)
    q = np.clip(np.rint(y) + np.float32(r.zero_point), r.lo, r.hi)
    c, other = q.astype(np.float32), residual.astype(np.float32)
    (first, ra), (second, rb) = ((c, r.conv_ratio), (other, r.input_ratio))[::1 if r.conv_first else -1]
    s = _fma(second, rb, _fma(first, ra, np.float32(r.fixed)))
    return np.clip(np.rint(s), a.lo, a.hi).astype(a.to)


def _fma(x: np.ndarray, y: float, z) -> np.ndarray:
    """float32 x * y + z with one rounding (the product is exact in float64)."""
    return (x.astype(np.float64) * np.float64(np.float32(y)) + np.float64(z)).astype(np.float32)


def _int8_conv(a: Int8ConvAttrs, x: np.ndarray, w: np.ndarray, bias: np.ndarray,
               residual: np.ndarray | None = None) -> list[np.ndarray]:
    return [requantize(a, int8_accumulate(a, x, w, bias), residual)]


def _int8_conv_macs(a: Int8ConvAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    w = ins[1].shape
    return numel(outs[0]) * w[1] * w[2] * w[3]


register(OpDef(OpKind.INT8_CONV, Int8ConvAttrs, _infer_int8_conv, _int8_conv, macs=_int8_conv_macs, n_inputs=(3, 4),
               flops=_per_element(6)))  # the requantization: convert, multiply, add, round, add, clamp


# --- the integer max pool (placed by passes/quantize.py) ------------------------------------------
def _infer_int8_max_pool(a: PoolAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    """MaxPool's shapes on a uint8/int8 input (channels last), of the same type."""
    check_arity(OpKind.INT8_MAX_POOL, types, 1, 1)
    x = types[0]
    if x.dtype.name not in QUANTIZED or not a.channels_last or a.spatial_rank != 2:
        raise GraphError(f"Int8MaxPool takes a channels-last 2-D uint8/int8 input, got {x.dtype} {x.shape} "
                         f"({a.layout})")
    (y,) = pool_infer(OpKind.MAX_POOL)(a, [TensorType(x.shape, np.dtype(np.float32))])
    return [TensorType(y.shape, x.dtype)]


def int8_max_pool_reference(a: PoolAttrs, x: np.ndarray) -> list[np.ndarray]:
    """MaxPool's reference on the integers as floats (exact), in x's type."""
    return [max_pool_reference(a, x.astype(np.float32))[0].astype(x.dtype)]


register(OpDef(OpKind.INT8_MAX_POOL, PoolAttrs, _infer_int8_max_pool, int8_max_pool_reference, n_inputs=(1, 1),
               flops=window_flops))


# --- the integer global average pool (placed by passes/quantize.py) -------------------------------
@dataclass(frozen=True)
class Int8GlobalPoolAttrs:
    """GlobalAveragePool of a channels-last uint8/int8 tensor requantized as onnxruntime's
    QLinearGlobalAveragePool (MLAS) does: y = saturate(round_half_to_even(float32(sum - x_zero_point * count)
    * scale) + y_zero_point), sum the int32 sum over the count = H * W pixels, scale = x_scale / (y_scale *
    count) in float32."""
    x_zero_point: int
    scale: float
    y_zero_point: int
    to: str


def _infer_int8_global_pool(a: Int8GlobalPoolAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.INT8_GLOBAL_AVERAGE_POOL, types, 1, 1)
    x = types[0]
    if x.dtype.name not in QUANTIZED or x.rank != 4:
        raise GraphError(f"Int8GlobalAveragePool takes a channels-last (N, H, W, C) uint8/int8 input, got "
                         f"{x.dtype} {x.shape}")
    return [TensorType((x.shape[0], 1, 1, x.shape[3]), np.dtype(a.to))]


def int8_global_average_pool_reference(a: Int8GlobalPoolAttrs, x: np.ndarray) -> list[np.ndarray]:
    count = x.shape[1] * x.shape[2]
    acc = x.astype(np.int64).sum(axis=(1, 2), keepdims=True) - a.x_zero_point * count
    q = np.rint(acc.astype(np.float32) * np.float32(a.scale)) + np.float32(a.y_zero_point)
    return [np.clip(q, *QUANTIZED[a.to]).astype(a.to)]


register(OpDef(OpKind.INT8_GLOBAL_AVERAGE_POOL, Int8GlobalPoolAttrs, _infer_int8_global_pool,
               int8_global_average_pool_reference, n_inputs=(1, 1),
               flops=lambda a, ins, outs: numel(ins[0])))  # one add per input value
