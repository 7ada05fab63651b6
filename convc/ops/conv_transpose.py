"""Transposed convolution (N-D, grouped): the adjoint of Conv, as used by upsampling generators.

X is (N, C, in...), W is (C, M/group, k...) and Y is (N, M, out...). Input position ``i`` and kernel
tap ``k`` add into output position ``o = i * stride + k * dilation - pad_begin`` along each axis, and

    out = (in - 1) * stride + (k - 1) * dilation + 1 + output_padding - pad_begin - pad_end.

The importer resolves ``auto_pad`` and ``output_shape`` into explicit pads. Those pads may be
negative: an ``output_shape`` larger than the natural size adds output positions no tap reaches,
which hold only the bias.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from convc.errors import GraphError
from convc.limits import check_window
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, register
from convc.ops.conv import split_inputs
from convc.ops.epilogue import NO_EPILOGUE, Epilogue, epilogue_flops
from convc.ops.window import WindowAttrs


@dataclass(frozen=True)
class ConvTransposeAttrs(WindowAttrs):  # pads: auto_pad and output_shape resolved
    group: int = onnx_attr(1)
    output_padding: tuple[int, ...] = ()  # extra positions at the end of each axis; () means none
    epilogue: Epilogue = NO_EPILOGUE

    @property
    def extra(self) -> tuple[int, ...]:
        return self.output_padding or (0,) * self.spatial_rank


def natural_size(size: int, k: int, stride: int, dilation: int) -> int:
    """Output positions the taps reach before padding: (size - 1) * stride + (k - 1) * dilation + 1."""
    return (size - 1) * stride + (k - 1) * dilation + 1


def output_spatial(a: ConvTransposeAttrs, x_spatial: Sequence[int]) -> tuple[int, ...]:
    return tuple(natural_size(x_spatial[i], a.kernel_shape[i], a.strides[i], a.dilations[i]) + a.extra[i]
                 - a.pads_begin[i] - a.pads_end[i] for i in range(a.spatial_rank))


def infer(a: ConvTransposeAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    kind = OpKind.CONV_TRANSPOSE
    check_arity(kind, types, 2 + a.epilogue.residual, 3 + a.epilogue.residual)
    check_float(kind, types)
    x, w, bias, residual = split_inputs(a, types)
    r = a.spatial_rank
    if not (len(a.strides) == len(a.dilations) == r and len(a.pads) == 2 * r and len(a.extra) == r):
        raise GraphError(f"ConvTranspose kernel_shape={a.kernel_shape}, strides={a.strides}, pads={a.pads}, "
                         f"dilations={a.dilations}, output_padding={a.output_padding} disagree on the rank")
    if x.rank != r + 2 or w.rank != r + 2:
        raise GraphError(f"ConvTranspose with a {r}-D kernel needs rank-{r + 2} X and W, got X.shape={x.shape}, "
                         f"W.shape={w.shape}")
    if tuple(w.shape[2:]) != a.kernel_shape:
        raise GraphError(f"W.shape={w.shape} does not match kernel_shape={a.kernel_shape}")
    check_window("ConvTranspose", strides=a.strides, dilations=a.dilations, pads=a.pads, output_padding=a.extra)
    n, c = x.shape[:2]
    if w.shape[0] != c or c % a.group:
        raise GraphError(f"X.shape={x.shape}, W.shape={w.shape}, group={a.group}: W.shape[0] must equal the input "
                         f"channels {c}, which must divide by group")
    m = w.shape[1] * a.group
    if bias is not None and bias.shape != (m,):
        raise GraphError(f"bias B.shape={bias.shape}, expected ({m},)")
    out = output_spatial(a, x.shape[2:])
    if any(o < 1 for o in out):
        raise GraphError(f"output spatial shape {out} is empty: X.shape={x.shape}, kernel_shape={a.kernel_shape}, "
                         f"strides={a.strides}, pads={a.pads}, dilations={a.dilations}")
    if residual is not None and residual.shape != (n, m) + out:
        raise GraphError(f"fused residual shape {residual.shape} differs from the output shape {(n, m) + out}")
    return [TensorType((n, m) + out, x.dtype)]


def reference(a: ConvTransposeAttrs, *inputs: np.ndarray) -> list[np.ndarray]:
    """Scatter every tap into a buffer indexed by the unpadded position, then cut the output window."""
    x, w, b, residual = split_inputs(a, inputs)
    r = a.spatial_rank
    n, c = x.shape[:2]
    g = a.group
    cg, mg = c // g, w.shape[1]
    out = output_spatial(a, x.shape[2:])
    natural = [natural_size(x.shape[2 + i], a.kernel_shape[i], a.strides[i], a.dilations[i]) for i in range(r)]
    lo = [min(0, a.pads_begin[i]) for i in range(r)]
    hi = [max(natural[i], a.pads_begin[i] + out[i]) for i in range(r)]
    buf = np.zeros((n, mg * g) + tuple(hi[i] - lo[i] for i in range(r)), dtype=np.float64)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for k in itertools.product(*[range(kk) for kk in a.kernel_shape]):
        sl = tuple(slice(k[i] * a.dilations[i] - lo[i], k[i] * a.dilations[i] - lo[i]
                         + (x.shape[2 + i] - 1) * a.strides[i] + 1, a.strides[i]) for i in range(r))
        for gi in range(g):
            wk = w64[(slice(gi * cg, (gi + 1) * cg), slice(None)) + k]  # (cg, mg)
            buf[(slice(None), slice(gi * mg, (gi + 1) * mg)) + sl] += np.einsum(
                "cm,nc...->nm...", wk, x64[:, gi * cg:(gi + 1) * cg])
    window = tuple(slice(a.pads_begin[i] - lo[i], a.pads_begin[i] - lo[i] + out[i]) for i in range(r))
    y = buf[(slice(None), slice(None)) + window]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * r)
    return [a.epilogue.reference(y.astype(x.dtype), residual)]


def macs(a: ConvTransposeAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """Every input element times every weight of its group: N * C * prod(in) * (M / group) * prod(k)."""
    w = ins[1].shape
    return int(np.prod(ins[0].shape, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))


register(OpDef(OpKind.CONV_TRANSPOSE, ConvTransposeAttrs, infer, reference, macs, n_inputs=(2, 4),
               flops=epilogue_flops))
