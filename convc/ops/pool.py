"""Max, average and Lp pooling (windowed, any spatial rank) and the global pools."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.limits import MAX_POOL_TAPS, check_window
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, numel, register
from convc.ops.layout import CHANNELS_FIRST, CHANNELS_LAST, first, last, to_channels_first, to_channels_last
from convc.ops.window import WindowAttrs


@dataclass(frozen=True)
class PoolAttrs(WindowAttrs):
    """MaxPool and AveragePool. ONNX has no ``count_include_pad`` on MaxPool and no ``dilations`` on
    AveragePool before opset 19: the exporter leaves out what the op type lacks at its opset."""
    ceil_mode: bool = onnx_attr(False)
    count_include_pad: bool = onnx_attr(False)  # AveragePool only
    layout: str = CHANNELS_FIRST

    @property
    def channels_last(self) -> bool:
        return self.layout == CHANNELS_LAST


@dataclass(frozen=True)
class LpPoolAttrs(WindowAttrs):
    """LpPool: (sum over the window of |x|^p)^(1/p); padded positions add nothing. (ONNX: dilations
    and ceil_mode from opset 18 on.)"""
    ceil_mode: bool = onnx_attr(False)
    p: int = onnx_attr(2)


def pool_output_size(size: int, k: int, s: int, d: int, pb: int, pe: int, ceil_mode: bool) -> int:
    span = size + pb + pe - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    # a window that would start inside the end padding is dropped (PyTorch and onnxruntime agree)
    if ceil_mode and (out - 1) * s >= size + pb:
        out -= 1
    return out


def _pool_infer(kind: OpKind):
    def infer(a: PoolAttrs, types: Sequence[TensorType]) -> list[TensorType]:
        if getattr(a, "channels_last", False):
            (y,) = infer(replace(a, layout=CHANNELS_FIRST), [TensorType(to_channels_first(t.shape), t.dtype)
                                                             for t in types])
            return [TensorType(to_channels_last(y.shape), y.dtype)]
        check_arity(kind, types, 1, 1)
        check_float(kind, types)
        x = types[0]
        r = a.spatial_rank
        if x.rank != r + 2:
            raise GraphError(f"{kind.value} with a {r}-D kernel needs a rank-{r + 2} input, got X.shape={x.shape}")
        check_window(kind.value, kernel_shape=a.kernel_shape, strides=a.strides, dilations=a.dilations, pads=a.pads)
        if math.prod(a.kernel_shape) > MAX_POOL_TAPS:
            raise GraphError(f"{kind.value} kernel_shape={a.kernel_shape} has {math.prod(a.kernel_shape)} taps per "
                             f"window; convc pools windows of at most {MAX_POOL_TAPS} taps (a pool over the whole "
                             "input is GlobalAveragePool or GlobalMaxPool)")
        out = tuple(pool_output_size(x.shape[2 + i], a.kernel_shape[i], a.strides[i], a.dilations[i], a.pads[i],
                                     a.pads[r + i], a.ceil_mode) for i in range(r))
        if any(o < 1 for o in out):
            raise GraphError(f"{kind.value} output shape {out} is empty: X.shape={x.shape}, "
                             f"kernel_shape={a.kernel_shape}, strides={a.strides}, pads={a.pads}")
        return [TensorType(x.shape[:2] + out, x.dtype)]
    return infer


def _windows(a: PoolAttrs | LpPoolAttrs, x: np.ndarray, fill: float):
    """Yield (kernel offset, window slice of the padded input, in-bounds mask) for every tap."""
    r = a.spatial_rank
    out = _pool_infer(OpKind.MAX_POOL)(a, [TensorType(x.shape, x.dtype)])[0].shape[2:]
    extra = [max(0, (out[i] - 1) * a.strides[i] + a.dilations[i] * (a.kernel_shape[i] - 1) + 1
                 - (x.shape[2 + i] + a.pads[i] + a.pads[r + i])) for i in range(r)]
    widths = [(a.pads[i], a.pads[r + i] + extra[i]) for i in range(r)]
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + widths, constant_values=fill)
    inside = np.pad(np.ones(x.shape[2:], dtype=bool), widths, constant_values=False)
    in_pads = np.pad(np.ones(x.shape[2:], dtype=bool), [(p, 0) for p, _ in widths], constant_values=True)
    in_pads = np.pad(in_pads, [(0, a.pads[r + i]) for i in range(r)], constant_values=True)
    in_pads = np.pad(in_pads, [(0, e) for e in extra], constant_values=False)
    for k in itertools.product(*[range(kk) for kk in a.kernel_shape]):
        sl = tuple(slice(k[i] * a.dilations[i], k[i] * a.dilations[i] + (out[i] - 1) * a.strides[i] + 1, a.strides[i])
                   for i in range(r))
        yield xp[(slice(None), slice(None)) + sl], inside[sl], in_pads[sl]


def channels_last_reference(fn):
    """A channels-first reference run on a channels-last op: transpose in, run, transpose out."""
    def run(a: PoolAttrs, x: np.ndarray) -> list[np.ndarray]:
        if a.channels_last:
            return [last(fn(replace(a, layout=CHANNELS_FIRST), first(x))[0])]
        return fn(a, x)
    return run


@channels_last_reference
def max_pool_reference(a: PoolAttrs, x: np.ndarray) -> list[np.ndarray]:
    y = None
    for win, _, _ in _windows(a, x, -np.inf):
        y = win if y is None else np.maximum(y, win)
    return [y.astype(x.dtype)]


@channels_last_reference
def average_pool_reference(a: PoolAttrs, x: np.ndarray) -> list[np.ndarray]:
    total, count = 0.0, 0
    for win, inside, in_pads in _windows(a, x, 0.0):
        total = total + win
        count = count + (in_pads if a.count_include_pad else inside)
    return [(total / count).astype(x.dtype)]


def lp_pool_reference(a: LpPoolAttrs, x: np.ndarray) -> list[np.ndarray]:
    total = 0.0
    for win, inside, _ in _windows(a, x, 0.0):
        total = total + np.where(inside, np.abs(win) ** a.p, 0.0)
    return [(total ** (1.0 / a.p)).astype(x.dtype)]


@dataclass(frozen=True)
class GlobalPoolAttrs:
    layout: str = CHANNELS_FIRST

    @property
    def channels_last(self) -> bool:
        return self.layout == CHANNELS_LAST


def _global_infer(kind: OpKind):
    def infer(a: GlobalPoolAttrs, types: Sequence[TensorType]) -> list[TensorType]:
        if not isinstance(a, GlobalPoolAttrs):
            raise GraphError(f"attributes must be GlobalPoolAttrs (its layout), got {type(a).__name__}")
        check_arity(kind, types, 1, 1)
        check_float(kind, types)
        x = types[0]
        if x.rank < 3:
            raise GraphError(f"{kind.value} needs an input of rank >= 3 (N, C, spatial...), got X.shape={x.shape}")
        if a.channels_last:
            return [TensorType((x.shape[0],) + (1,) * (x.rank - 2) + (x.shape[-1],), x.dtype)]
        return [TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)]
    return infer


def _global_reference(fn):
    def run(a: GlobalPoolAttrs, x: np.ndarray) -> list[np.ndarray]:
        spatial = tuple(range(1, x.ndim - 1)) if a.channels_last else tuple(range(2, x.ndim))
        return [fn(x.astype(np.float64), axis=spatial, keepdims=True).astype(x.dtype)]
    return run


def window_flops(a: PoolAttrs | LpPoolAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """Kernel taps per output element."""
    return numel(outs[0]) * int(np.prod(a.kernel_shape, dtype=np.int64))


def global_flops(a: GlobalPoolAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """One per input element."""
    return numel(ins[0])


register(OpDef(OpKind.MAX_POOL, PoolAttrs, _pool_infer(OpKind.MAX_POOL), max_pool_reference, flops=window_flops))
register(OpDef(OpKind.AVERAGE_POOL, PoolAttrs, _pool_infer(OpKind.AVERAGE_POOL), average_pool_reference,
               flops=window_flops))
register(OpDef(OpKind.LP_POOL, LpPoolAttrs, _pool_infer(OpKind.LP_POOL), lp_pool_reference, flops=window_flops))
register(OpDef(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs, _global_infer(OpKind.GLOBAL_AVERAGE_POOL),
               _global_reference(np.mean), flops=global_flops))
register(OpDef(OpKind.GLOBAL_MAX_POOL, GlobalPoolAttrs, _global_infer(OpKind.GLOBAL_MAX_POOL),
               _global_reference(np.max), flops=global_flops))
