"""Convolution gradients: dX (a transposed convolution of dY by W) and dW (dY correlated with X).

Both carry the forward conv's geometry plus the shape of what they produce, since a strided
forward conv maps several input sizes to one output size. The bias gradient is a ReduceSum.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, register
from convc.ops.conv import ConvAttrs, conv_output_size


@dataclass(frozen=True)
class ConvGradAttrs:
    conv: ConvAttrs               # the forward conv (its epilogue is ignored: autodiff splits it off)
    shape: tuple[int, ...]        # X.shape for the input gradient, W.shape for the weight gradient


def _out_spatial(a: ConvAttrs, x_shape: tuple[int, ...]) -> tuple[int, ...]:
    r = a.spatial_rank
    return tuple(conv_output_size(x_shape[2 + i], a.kernel_shape[i], a.strides[i], a.dilations[i],
                                  a.pads_begin[i], a.pads_end[i]) for i in range(r))


def _check_dy(kind: OpKind, a: ConvAttrs, x_shape, w_shape, dy: TensorType) -> None:
    want = (x_shape[0], w_shape[0]) + _out_spatial(a, x_shape)
    if dy.shape != want:
        raise GraphError(f"{kind.value}: dY.shape={dy.shape}, expected {want} for X.shape={x_shape}, "
                         f"W.shape={w_shape}, strides={a.strides}, pads={a.pads}, dilations={a.dilations}")


def grad_input_infer(a: ConvGradAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.CONV_GRAD_INPUT, types, 2, 2)
    check_float(OpKind.CONV_GRAD_INPUT, types)
    w, dy = types
    c = a.shape[1]
    if w.shape[1] * a.conv.group != c or tuple(w.shape[2:]) != a.conv.kernel_shape:
        raise GraphError(f"ConvGradInput: W.shape={w.shape} does not fit X.shape={a.shape}, group={a.conv.group}, "
                         f"kernel_shape={a.conv.kernel_shape}")
    _check_dy(OpKind.CONV_GRAD_INPUT, a.conv, a.shape, w.shape, dy)
    return [TensorType(a.shape, dy.dtype)]


def grad_weight_infer(a: ConvGradAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.CONV_GRAD_WEIGHT, types, 2, 2)
    check_float(OpKind.CONV_GRAD_WEIGHT, types)
    x, dy = types
    if a.shape[1] * a.conv.group != x.shape[1] or tuple(a.shape[2:]) != a.conv.kernel_shape:
        raise GraphError(f"ConvGradWeight: W.shape={a.shape} does not fit X.shape={x.shape}, group={a.conv.group}, "
                         f"kernel_shape={a.conv.kernel_shape}")
    _check_dy(OpKind.CONV_GRAD_WEIGHT, a.conv, x.shape, a.shape, dy)
    return [TensorType(a.shape, dy.dtype)]


def _tap_slices(a: ConvAttrs, out: tuple[int, ...]):
    r = a.spatial_rank
    for k in itertools.product(*[range(kk) for kk in a.kernel_shape]):
        yield k, tuple(slice(k[i] * a.dilations[i], k[i] * a.dilations[i] + (out[i] - 1) * a.strides[i] + 1,
                             a.strides[i]) for i in range(r))


def grad_input_reference(a: ConvGradAttrs, w: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    c, r, g = a.shape[1], a.conv.spatial_rank, a.conv.group
    m = w.shape[0]
    cg, mg = c // g, m // g
    padded = tuple(a.shape[2 + i] + a.conv.pads_begin[i] + a.conv.pads_end[i] for i in range(r))
    dxp = np.zeros(a.shape[:2] + padded, dtype=np.float64)
    for k, sl in _tap_slices(a.conv, dy.shape[2:]):
        for gi in range(g):
            wk = w[(slice(gi * mg, (gi + 1) * mg), slice(None)) + k].astype(np.float64)  # (mg, cg)
            dxp[(slice(None), slice(gi * cg, (gi + 1) * cg)) + sl] += np.einsum(
                "mc,nm...->nc...", wk, dy[:, gi * mg:(gi + 1) * mg])
    crop = tuple(slice(a.conv.pads_begin[i], a.conv.pads_begin[i] + a.shape[2 + i]) for i in range(r))
    return [np.ascontiguousarray(dxp[(slice(None), slice(None)) + crop]).astype(dy.dtype)]


def grad_weight_reference(a: ConvGradAttrs, x: np.ndarray, dy: np.ndarray) -> list[np.ndarray]:
    r, g = a.conv.spatial_rank, a.conv.group
    m, cg = a.shape[:2]
    mg = m // g
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(a.conv.pads_begin[i], a.conv.pads_end[i])
                                                          for i in range(r)])
    dw = np.zeros(a.shape, dtype=np.float64)
    dy2 = dy.reshape(dy.shape[0], dy.shape[1], -1).astype(np.float64)
    for k, sl in _tap_slices(a.conv, dy.shape[2:]):
        patch = xp[(slice(None), slice(None)) + sl].reshape(x.shape[0], x.shape[1], -1)
        for gi in range(g):
            dw[(slice(gi * mg, (gi + 1) * mg), slice(None)) + k] = np.einsum(
                "nmp,ncp->mc", dy2[:, gi * mg:(gi + 1) * mg], patch[:, gi * cg:(gi + 1) * cg])
    return [dw.astype(dy.dtype)]


def grad_input_macs(a: ConvGradAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    return int(np.prod(ins[1].shape, dtype=np.int64)) * int(np.prod(ins[0].shape[1:], dtype=np.int64))


def grad_weight_macs(a: ConvGradAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    return int(np.prod(ins[1].shape, dtype=np.int64)) * int(np.prod(a.shape[1:], dtype=np.int64))


register(OpDef(OpKind.CONV_GRAD_INPUT, ConvGradAttrs, grad_input_infer, grad_input_reference, grad_input_macs,
               n_inputs=(2, 2)))
register(OpDef(OpKind.CONV_GRAD_WEIGHT, ConvGradAttrs, grad_weight_infer, grad_weight_reference, grad_weight_macs,
               n_inputs=(2, 2)))
