"""Pooling gradients.

MaxPool routes each output's gradient to the first maximum of its window in scan order (kernel
rows, then columns), a NaN counting as the maximum, as PyTorch and onnxruntime pick their indices;
overlapping windows add up. AveragePool spreads it evenly over the taps its forward divided by.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, register
from convc.ops.pool import PoolAttrs, _pool_infer


@dataclass(frozen=True)
class PoolGradAttrs:
    pool: PoolAttrs | None   # None for the global pools
    shape: tuple[int, ...]   # X.shape


def _check(kind: OpKind, forward: OpKind, a: PoolGradAttrs, dy: TensorType) -> None:
    if a.pool is None:
        want = a.shape[:2] + (1,) * (len(a.shape) - 2)
    else:
        want = _pool_infer(forward)(a.pool, [TensorType(a.shape, dy.dtype)])[0].shape
    if dy.shape != want:
        raise GraphError(f"{kind.value}: dY.shape={dy.shape}, expected {want} for X.shape={a.shape}")


def _infer(kind: OpKind, forward: OpKind, with_x: bool):
    def infer(a: PoolGradAttrs, types: Sequence[TensorType]) -> list[TensorType]:
        n = 2 if with_x else 1
        check_arity(kind, types, n, n)
        check_float(kind, types)
        if with_x and types[0].shape != a.shape:
            raise GraphError(f"{kind.value}: X.shape={types[0].shape} differs from the recorded {a.shape}")
        _check(kind, forward, a, types[-1])
        return [TensorType(a.shape, types[-1].dtype)]
    return infer


def _geometry(a: PoolAttrs, x_shape: tuple[int, ...]):
    """(output spatial shape, padding widths per axis, tap slices) exactly as the forward pads."""
    r = a.spatial_rank
    out = _pool_infer(OpKind.MAX_POOL)(a, [TensorType(x_shape, np.float32)])[0].shape[2:]
    extra = [max(0, (out[i] - 1) * a.strides[i] + a.dilations[i] * (a.kernel_shape[i] - 1) + 1
                 - (x_shape[2 + i] + a.pads[i] + a.pads[r + i])) for i in range(r)]
    widths = [(a.pads[i], a.pads[r + i] + extra[i]) for i in range(r)]
    slices = [tuple(slice(k[i] * a.dilations[i], k[i] * a.dilations[i] + (out[i] - 1) * a.strides[i] + 1,
                          a.strides[i]) for i in range(r))
              for k in itertools.product(*[range(kk) for kk in a.kernel_shape])]
    return out, widths, slices


def _crop(dxp: np.ndarray, widths, x_shape) -> np.ndarray:
    sl = tuple(slice(w[0], w[0] + x_shape[2 + i]) for i, w in enumerate(widths))
    return np.ascontiguousarray(dxp[(slice(None), slice(None)) + sl])


def max_pool_grad_reference(a: PoolGradAttrs, x: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    p = a.pool
    _, widths, slices = _geometry(p, x.shape)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + widths, constant_values=-np.inf)
    inside = np.pad(np.ones(x.shape[2:], dtype=bool), widths, constant_values=False)
    best = np.full(dy.shape, -np.inf)
    which = np.full(dy.shape, -1)
    for t, sl in enumerate(slices):
        win = xp[(slice(None), slice(None)) + sl]
        take = inside[sl] & ((win > best) | (np.isnan(win) & ~np.isnan(best)))
        best = np.where(take, win, best)
        which = np.where(take, t, which)
    dxp = np.zeros(xp.shape)
    for t, sl in enumerate(slices):
        dxp[(slice(None), slice(None)) + sl] += np.where(which == t, dy, 0.0)
    return [_crop(dxp, widths, x.shape).astype(dy.dtype)]


def average_pool_grad_reference(a: PoolGradAttrs, dy: np.ndarray) -> list[np.ndarray]:
    p, r = a.pool, a.pool.spatial_rank
    _, widths, slices = _geometry(p, a.shape)
    inside = np.pad(np.ones(a.shape[2:], dtype=bool), widths, constant_values=False)
    # the padded taps count for count_include_pad, the ceil_mode overhang beyond them never does
    in_pads = np.zeros(inside.shape, dtype=bool)
    in_pads[tuple(slice(0, a.shape[2 + i] + p.pads[i] + p.pads[r + i]) for i in range(r))] = True
    counted = in_pads if p.count_include_pad else inside
    count = sum(counted[sl].astype(np.float64) for sl in slices)
    share = dy.astype(np.float64) / count
    dxp = np.zeros(a.shape[:2] + inside.shape)
    for sl in slices:
        dxp[(slice(None), slice(None)) + sl] += share
    return [_crop(dxp, widths, a.shape).astype(dy.dtype)]


def global_average_pool_grad_reference(a: PoolGradAttrs, dy: np.ndarray) -> list[np.ndarray]:
    size = int(np.prod(a.shape[2:]))
    return [np.broadcast_to(dy.astype(np.float64) / size, a.shape).astype(dy.dtype)]


def global_max_pool_grad_reference(a: PoolGradAttrs, x: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    n, c = x.shape[:2]
    flat = x.reshape(n, c, -1)
    dx = np.zeros(flat.shape, dtype=dy.dtype)
    idx = np.argmax(flat, axis=2)  # the first maximum; np.argmax also stops at the first NaN
    np.put_along_axis(dx, idx[:, :, None], dy.reshape(n, c, 1), axis=2)
    return [dx.reshape(x.shape)]


register(OpDef(OpKind.MAX_POOL_GRAD, PoolGradAttrs, _infer(OpKind.MAX_POOL_GRAD, OpKind.MAX_POOL, True),
               max_pool_grad_reference, n_inputs=(2, 2)))
register(OpDef(OpKind.AVERAGE_POOL_GRAD, PoolGradAttrs, _infer(OpKind.AVERAGE_POOL_GRAD, OpKind.AVERAGE_POOL, False),
               average_pool_grad_reference))
register(OpDef(OpKind.GLOBAL_AVERAGE_POOL_GRAD, PoolGradAttrs,
               _infer(OpKind.GLOBAL_AVERAGE_POOL_GRAD, OpKind.GLOBAL_AVERAGE_POOL, False),
               global_average_pool_grad_reference))
register(OpDef(OpKind.GLOBAL_MAX_POOL_GRAD, PoolGradAttrs,
               _infer(OpKind.GLOBAL_MAX_POOL_GRAD, OpKind.GLOBAL_MAX_POOL, True),
               global_max_pool_grad_reference, n_inputs=(2, 2)))
