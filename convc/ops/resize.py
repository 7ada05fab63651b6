"""Resize (and Upsample, which imports as Resize): nearest, linear and cubic, separable along the axes.

Every output position along an axis reads a few input positions (its *taps*) with fixed weights;
``axis_taps`` computes them at compile time from the ONNX coordinate transformation, exactly as the
ONNX reference does (``onnx/reference/ops/op_resize.py``: coordinate mode, nearest rounding, cubic
coefficient ``a``, ``exclude_outside``, antialiasing, and the edge clamping of the neighbours).
An output element is then the sum over the taps of every axis of the product of their weights
times the input element they address. With ``tf_crop_and_resize``, an output position whose
source lies outside the input on any axis takes ``extrapolation_value`` instead.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, numel, register

MODES = ("nearest", "linear", "cubic")
COORDINATE_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                    "tf_crop_and_resize")
# "simple" is Upsample's and Resize-10's rounding (onnxruntime): floor when upsampling, ceil when downsampling
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


@dataclass(frozen=True)
class ResizeAttrs:
    """The ONNX attributes of Resize (opset 11 on; antialias from 18) with their defaults. ``shape``,
    ``scales`` and ``roi`` come from the node's inputs (sizes or scales, roi) and are resolved at
    import; Upsample and Resize-10 set their own coordinate and rounding modes."""
    shape: tuple[int, ...]            # the output shape, resolved at import
    scales: tuple[float, ...]         # per axis, as the coordinate transformation uses them (out/in for sizes)
    mode: str = onnx_attr("nearest")
    coordinate_transformation_mode: str = onnx_attr("half_pixel")
    nearest_mode: str = onnx_attr("round_prefer_floor")
    cubic_coeff_a: float = onnx_attr(-0.75)
    exclude_outside: bool = onnx_attr(False)
    extrapolation_value: float = onnx_attr(0.0)
    antialias: bool = onnx_attr(False)
    roi: tuple[float, ...] = ()       # tf_crop_and_resize: all starts, then all ends (normalized); () = whole


@dataclass(frozen=True)
class Taps:
    """Along one axis: output position i reads input ``index[i, t]`` with weight ``weight[i, t]``."""
    index: np.ndarray          # (out, taps) int64, inside [0, in)
    weight: np.ndarray         # (out, taps) float64
    extrapolated: np.ndarray   # (out,) bool: the position takes extrapolation_value
    in_size: int

    @property
    def is_identity(self) -> bool:
        n = self.index.shape[0]
        return (n == self.in_size and self.index.shape[1] == 1 and np.array_equal(self.index[:, 0], np.arange(n))
                and np.all(self.weight == 1.0) and not self.extrapolated.any())


def _nearest(ratio: float, mode: str, downsampling: bool) -> np.ndarray:
    if ratio == 1.0:  # an integer source coordinate: the right neighbour is that pixel
        return np.array([0.0, 1.0])
    if mode == "simple":
        mode = "ceil" if downsampling else "floor"
    if mode == "round_prefer_floor":
        return np.array([float(ratio <= 0.5), float(ratio > 0.5)])
    if mode == "round_prefer_ceil":
        return np.array([float(ratio < 0.5), float(ratio >= 0.5)])
    return np.array([1.0, 0.0]) if mode == "floor" else np.array([0.0, 1.0])


def _linear(ratio: float, scale: float, antialias: bool) -> np.ndarray:
    if not antialias:
        return np.array([1.0 - ratio, ratio])
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    coeffs = np.clip(1 - np.abs(args), 0, 1)
    return coeffs / coeffs.sum()


def _cubic(ratio: float, scale: float, a: float, antialias: bool) -> np.ndarray:
    if not antialias:
        r = ratio
        return np.array([((a * (r + 1) - 5 * a) * (r + 1) + 8 * a) * (r + 1) - 4 * a,
                         ((a + 2) * r - (a + 3)) * r * r + 1,
                         ((a + 2) * (1 - r) - (a + 3)) * (1 - r) * (1 - r) + 1,
                         ((a * ((1 - r) + 1) - 5 * a) * ((1 - r) + 1) + 8 * a) * ((1 - r) + 1) - 4 * a])
    scale = min(scale, 1.0)

    def coeff(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0
    start = int(np.floor(-2 / scale) + 1)
    coeffs = np.array([coeff(scale * (i - ratio)) for i in range(start, 2 - start)])
    return coeffs / coeffs.sum()


def source_coordinates(a: ResizeAttrs, axis: int, in_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(source coordinate of every output position, extrapolated flags) along ``axis``."""
    out_size, scale = a.shape[axis], a.scales[axis]
    y = np.arange(out_size, dtype=np.float64)
    # the fractional output length, as the ONNX reference and its conformance data use it (align_corners and
    # tf_crop_and_resize divide by width - 1; onnxruntime uses the integer length, which differs only when a
    # scale gives a fractional one)
    width = scale * in_size
    mode = a.coordinate_transformation_mode
    extrapolated = np.zeros(out_size, dtype=bool)
    if mode == "align_corners":
        x = np.zeros(out_size) if width == 1 else y * (in_size - 1) / (width - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        r = len(a.shape)
        lo, hi = (a.roi[axis], a.roi[r + axis]) if a.roi else (0.0, 1.0)
        x = (np.full(out_size, (hi - lo) * (in_size - 1) / 2) if width == 1
             else y * (hi - lo) * (in_size - 1) / (width - 1))
        x = x + lo * (in_size - 1)
        extrapolated = (x < 0) | (x > in_size - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_size, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_size / 2 * (1 - out_size / width)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise GraphError(f"Resize coordinate_transformation_mode={mode!r} is not one of {COORDINATE_MODES}")
    return x, extrapolated


def axis_taps(a: ResizeAttrs, axis: int, in_size: int) -> Taps:
    out_size, scale = a.shape[axis], a.scales[axis]
    if out_size == in_size and math.isclose(scale, 1.0) and (
            not a.roi or (math.isclose(a.roi[axis], 0.0) and math.isclose(a.roi[len(a.shape) + axis], 1.0))):
        return Taps(np.arange(out_size)[:, None], np.ones((out_size, 1)), np.zeros(out_size, dtype=bool), in_size)
    x, extrapolated = source_coordinates(a, axis, in_size)
    x_int = np.floor(x)
    ratios = np.where(x == x_int, 1.0, x - x_int)  # (0, 1]: the left neighbour is preferred
    if a.mode == "nearest":
        coeffs = np.stack([_nearest(float(r), a.nearest_mode, scale < 1) for r in ratios])
    elif a.mode == "linear":
        coeffs = np.stack([_linear(float(r), scale, a.antialias) for r in ratios])
    else:
        coeffs = np.stack([_cubic(float(r), scale, a.cubic_coeff_a, a.antialias) for r in ratios])
    n = coeffs.shape[1]
    # the n neighbours closest to x (ties to the smaller index), in the edge-padded input
    pad = int(np.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    index = (p + offset)[:, None] + np.arange(n)[None, :] - pad
    if a.exclude_outside:
        coeffs = np.where((index < 0) | (index >= in_size), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    index = np.clip(index, 0, in_size - 1)
    # keep only the taps that weigh something (nearest: one), padded to the widest row
    keep = [np.flatnonzero(row) for row in coeffs]
    width_kept = max(1, max(len(k) for k in keep))
    out_index = np.zeros((out_size, width_kept), dtype=np.int64)
    out_weight = np.zeros((out_size, width_kept))
    for i, k in enumerate(keep):
        out_index[i, :len(k)] = index[i, k]
        out_index[i, len(k):] = index[i, 0]
        out_weight[i, :len(k)] = coeffs[i, k]
    return Taps(out_index, out_weight, extrapolated, in_size)


def infer(a: ResizeAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.RESIZE, types, 1, 1)
    check_float(OpKind.RESIZE, types)
    x = types[0]
    if len(a.shape) != x.rank or len(a.scales) != x.rank or (a.roi and len(a.roi) != 2 * x.rank):
        raise GraphError(f"Resize of X.shape={x.shape}: output shape {a.shape}, scales {a.scales} and roi {a.roi} "
                         "need one value per axis (roi two)")
    if any(d < 1 for d in a.shape) or any(s <= 0 for s in a.scales):
        raise GraphError(f"Resize of X.shape={x.shape} to {a.shape} (scales {a.scales}) is empty or negative")
    if a.mode not in MODES or a.coordinate_transformation_mode not in COORDINATE_MODES \
            or a.nearest_mode not in NEAREST_MODES:
        raise GraphError(f"Resize mode={a.mode!r}, coordinate_transformation_mode="
                         f"{a.coordinate_transformation_mode!r}, nearest_mode={a.nearest_mode!r}: expected one of "
                         f"{MODES}, {COORDINATE_MODES} and {NEAREST_MODES}")
    return [TensorType(a.shape, x.dtype)]


def reference(a: ResizeAttrs, x: np.ndarray) -> list[np.ndarray]:
    """One axis at a time (the taps are separable), in float64."""
    y = x.astype(np.float64)
    extrapolated = np.zeros(a.shape, dtype=bool)
    for axis in range(x.ndim):
        taps = axis_taps(a, axis, x.shape[axis])
        if taps.is_identity:
            continue
        shape = (1,) * axis + taps.weight.shape + (1,) * (x.ndim - axis - 1)
        y = (np.take(y, taps.index, axis=axis) * taps.weight.reshape(shape)).sum(axis=axis + 1)
        extrapolated |= taps.extrapolated.reshape((1,) * axis + (-1,) + (1,) * (x.ndim - axis - 1))
    y = np.where(extrapolated, a.extrapolation_value, y)
    return [y.astype(x.dtype)]


def flops(a: ResizeAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """Per output element: nearest 0; a multiply and an add per tap of the other modes, linear 2^r and
    cubic 4^r taps over the r resized axes."""
    resized = sum(1 for a_, b_ in zip(ins[0].shape, outs[0].shape) if a_ != b_)
    taps = {"nearest": 0, "linear": 2 ** resized, "cubic": 4 ** resized}.get(a.mode)
    return 2 * taps * numel(outs[0]) if taps is not None else 0


register(OpDef(OpKind.RESIZE, ResizeAttrs, infer, reference, flops=flops))
