"""Im2Col: the patches a convolution multiplies, laid out as the rows of a matrix.

For an input (N, C, *in) and a conv geometry with kernel (k1, ..., kr), the output is
(N, C * k1 * ... * kr, *out): channel ``(c * k1 + i1) * k2 + i2 ...`` holds input channel ``c`` at
kernel tap ``(i1, i2, ...)`` for every output position, zero where the tap falls in the padding.
Grouping needs nothing special: with C = group * Cg the channel order is (group, c, taps), so a
grouped 1x1 convolution over this tensor, with the weight reshaped to (M, Cg * prod(k), 1, ...),
computes the original grouped convolution (passes/im2col.py).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, no_flops, register
from convc.ops.conv import ConvAttrs, conv_output_size
from convc.ops.window import WindowAttrs


@dataclass(frozen=True)
class Im2ColAttrs(WindowAttrs):
    """The geometry of the convolution being lowered."""

    @property
    def taps(self) -> int:
        return int(np.prod(self.kernel_shape, dtype=np.int64))

    @staticmethod
    def of(conv: ConvAttrs) -> Im2ColAttrs:
        return Im2ColAttrs(conv.kernel_shape, conv.strides, conv.pads, conv.dilations)

    def as_conv(self) -> ConvAttrs:
        return ConvAttrs(self.kernel_shape, self.strides, self.pads, self.dilations)


BLOCK_COLUMNS = 256  # output pixels per im2col block: K x 256 floats stays in L2 for K <= 1024


def block_rows(oh: int, ow: int) -> int:
    """Output rows per block of an im2col gathered inside its conv (ConvAlgorithm.IM2COL_FUSED):
    about BLOCK_COLUMNS pixels, a multiple of 32 where possible."""
    rows = max(1, min(oh, BLOCK_COLUMNS // ow))
    for r in range(rows, 0, -1):
        if r * ow % 32 == 0:
            return r
    return rows


def output_spatial(a: Im2ColAttrs, shape: tuple[int, ...]) -> tuple[int, ...]:
    r = a.spatial_rank
    return tuple(conv_output_size(shape[2 + i], a.kernel_shape[i], a.strides[i], a.dilations[i], a.pads[i],
                                  a.pads[r + i]) for i in range(r))


def infer(a: Im2ColAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.IM2COL, types, 1, 1)
    check_float(OpKind.IM2COL, types)
    x = types[0]
    r = a.spatial_rank
    if x.rank != r + 2:
        raise GraphError(f"Im2Col with a {r}-D kernel needs a rank-{r + 2} input, got X.shape={x.shape}")
    out = output_spatial(a, x.shape)
    if any(o < 1 for o in out):
        raise GraphError(f"Im2Col output spatial shape {out} is empty: X.shape={x.shape}, "
                         f"kernel_shape={a.kernel_shape}, strides={a.strides}, pads={a.pads}, dilations={a.dilations}")
    return [TensorType((x.shape[0], x.shape[1] * a.taps) + out, x.dtype)]


def reference(a: Im2ColAttrs, x: np.ndarray) -> list[np.ndarray]:
    r = a.spatial_rank
    out = output_spatial(a, x.shape)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(a.pads[i], a.pads[r + i]) for i in range(r)])
    n, c = x.shape[:2]
    col = np.empty((n, c, a.taps) + out, dtype=x.dtype)
    for t, k in enumerate(itertools.product(*[range(kk) for kk in a.kernel_shape])):
        sl = tuple(slice(k[i] * a.dilations[i], k[i] * a.dilations[i] + (out[i] - 1) * a.strides[i] + 1, a.strides[i])
                   for i in range(r))
        col[:, :, t] = xp[(slice(None), slice(None)) + sl]
    return [col.reshape((n, c * a.taps) + out)]


register(OpDef(OpKind.IM2COL, Im2ColAttrs, infer, reference, flops=no_flops))
