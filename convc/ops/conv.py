"""Convolution (1-D, 2-D and N-D), channels-first (ONNX) or channels-last layout, explicit pads."""
from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from convc.errors import GraphError
from convc.limits import check_window
from convc.ops.attrs import onnx_attr
from convc.ops.base import OpDef, OpKind, TensorType, check_arity, check_float, register
from convc.ops.epilogue import NO_EPILOGUE, Epilogue, epilogue_flops
from convc.ops.layout import CHANNELS_FIRST, CHANNELS_LAST, first, last, to_channels_first, to_channels_last
from convc.ops.window import WindowAttrs


class ConvAlgorithm(enum.Enum):
    """How a conv is computed: chosen once by passes/kernel_selection.py, dispatched on by
    codegen/kernels/conv.py (each value names the emitter that runs it)."""
    UNSELECTED = "unselected"              # not chosen yet: the codegen refuses it
    POINTWISE = "pointwise"                # channels first, 1x1 stride 1 unpadded, constant W: Y = W @ X per panel
    IM2COL_FUSED = "im2col_fused"          # channels first, 2-D, constant W: im2col gathered block by block in the
                                           # conv (chosen by passes/im2col.py for the compile's threads)
    IM2COL_GEMM = "im2col_gemm"            # channels first, 2-D: im2col into scratch in the kernel, then a GEMM
    DEPTHWISE = "depthwise"                # channels first, 2-D, group == C == M: one filter per plane
    IMPLICIT_GEMM_NHWC = "implicit_gemm_nhwc"  # channels last, 2-D, one group, constant W (conv_nhwc.py)
    DEPTHWISE_NHWC = "depthwise_nhwc"      # channels last, group == C == M (depthwise_nhwc.py)
    WINOGRAD_2X2 = "winograd_2x2"          # channels last, 3x3 stride 1 dilation 1, one group, constant W:
    WINOGRAD_4X4 = "winograd_4x4"          # Winograd F(2x2,3x3) or F(4x4,3x3) (winograd.py)
    DIRECT_FEW_CHANNELS = "direct_few_channels"  # channels last, 2-D, one group, 1-4 input channels, constant W:
                                           # taps unrolled, vectors of output channels (conv_direct.py)
    DIRECT_ND = "direct_nd"                # spatial rank 3 or more: direct loops (conv3d.py)
    RUNTIME_WEIGHTS = "runtime_weights"    # training: W read at run time (conv_grad.py emit_conv_runtime)


# the algorithms that multiply less than the conv's MACs say (a rate in GFLOP/s of them is an equivalent)
WINOGRAD_ALGORITHMS = frozenset({ConvAlgorithm.WINOGRAD_2X2, ConvAlgorithm.WINOGRAD_4X4})

@dataclass(frozen=True)
class ConvAttrs(WindowAttrs):
    group: int = onnx_attr(1)
    epilogue: Epilogue = NO_EPILOGUE
    layout: str = CHANNELS_FIRST  # of X, Y and the residual; W stays [M, C/group, k...]
    algorithm: ConvAlgorithm = ConvAlgorithm.UNSELECTED  # set by passes/kernel_selection.py
    # X times a per-(image, channel) scale S, the last input: (N, C, 1, 1), channels last (N, 1, 1, C);
    # a squeeze-and-excitation Mul fused into the conv that reads it (passes/fusion.py)
    input_scale: bool = False

    @property
    def channels_last(self) -> bool:
        return self.layout == CHANNELS_LAST


def is_pointwise(a: ConvAttrs) -> bool:
    """A 1x1 (any rank), stride-1, unpadded conv: its input already is the GEMM operand."""
    return all(k == 1 for k in a.kernel_shape) and all(s == 1 for s in a.strides) and not any(a.pads)


def is_depthwise(a: ConvAttrs, in_channels: int, out_channels: int) -> bool:
    """One input and one output channel per group."""
    return a.group == in_channels == out_channels


def channels(a: ConvAttrs, x_shape: Sequence[int], y_shape: Sequence[int]) -> tuple[int, int]:
    """(input channels, output channels) of a conv with these X and Y shapes, in its layout."""
    axis = -1 if a.channels_last else 1
    return x_shape[axis], y_shape[axis]


def conv_output_size(size: int, k: int, stride: int, dilation: int, pad_begin: int, pad_end: int) -> int:
    return (size + pad_begin + pad_end - dilation * (k - 1) - 1) // stride + 1


def split_inputs(a, items: Sequence):
    """(X, W, bias or None, residual or None) of a Conv/Gemm whose epilogue may add a residual (a
    conv's input scale, when it has one, is last: ``input_scale_of``)."""
    k = len(items) - int(getattr(a, "input_scale", False))
    n = k - int(a.epilogue.residual)
    return items[0], items[1], items[2] if n == 3 else None, items[k - 1] if a.epilogue.residual else None


def input_scale_of(a, items: Sequence):
    """The per-(image, channel) scale of X of a conv that has one (``ConvAttrs.input_scale``), else None."""
    return items[-1] if getattr(a, "input_scale", False) else None


def infer(a: ConvAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    if a.channels_last:
        x, w, bias, residual = split_inputs(a, types)
        scale = input_scale_of(a, types)
        moved = [TensorType(to_channels_first(t.shape), t.dtype) if t is x or t is residual or t is scale else t
                 for t in types]
        (y,) = infer(replace(a, layout=CHANNELS_FIRST), moved)
        return [TensorType(to_channels_last(y.shape), y.dtype)]
    extra = a.epilogue.residual + a.input_scale
    check_arity(OpKind.CONV, types, 2 + extra, 3 + extra)
    check_float(OpKind.CONV, types)
    x, w, bias, residual = split_inputs(a, types)
    r = a.spatial_rank
    if x.rank != r + 2 or w.rank != r + 2:
        raise GraphError(f"Conv with a {r}-D kernel needs rank-{r + 2} X and W, got X.shape={x.shape}, W.shape={w.shape}")
    if tuple(w.shape[2:]) != a.kernel_shape:
        raise GraphError(f"W.shape={w.shape} does not match kernel_shape={a.kernel_shape}")
    check_window("Conv", strides=a.strides, dilations=a.dilations, pads=a.pads)
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    if c != cg * a.group or m % a.group:
        raise GraphError(f"X.shape={x.shape}, W.shape={w.shape}, group={a.group}: input channels {c} must equal "
                         f"W.shape[1] * group = {cg * a.group} and output channels {m} must divide by group")
    if bias is not None and bias.shape != (m,):
        raise GraphError(f"bias B.shape={bias.shape}, expected ({m},)")
    out = tuple(conv_output_size(x.shape[2 + i], a.kernel_shape[i], a.strides[i], a.dilations[i],
                                 a.pads_begin[i], a.pads_end[i]) for i in range(r))
    if any(o < 1 for o in out):
        raise GraphError(f"output spatial shape {out} is empty: X.shape={x.shape}, kernel_shape={a.kernel_shape}, "
                         f"strides={a.strides}, pads={a.pads}, dilations={a.dilations}")
    if residual is not None and residual.shape != (n, m) + out:
        raise GraphError(f"fused residual shape {residual.shape} differs from the output shape {(n, m) + out}")
    scale = input_scale_of(a, types)
    if scale is not None and scale.shape != (n, c) + (1,) * r:
        raise GraphError(f"input scale S.shape={scale.shape} of X.shape={x.shape}: expected {(n, c) + (1,) * r}")
    return [TensorType((n, m) + out, x.dtype)]


def reference(a: ConvAttrs, *inputs: np.ndarray) -> list[np.ndarray]:
    x, w, b, residual = split_inputs(a, inputs)
    scale = input_scale_of(a, inputs)
    if a.channels_last:
        moved = [first(t) if t is x or t is residual or t is scale else t for t in inputs]
        return [last(reference(replace(a, layout=CHANNELS_FIRST), *moved)[0])]
    if scale is not None:
        x = x * scale
    r = a.spatial_rank
    xp = np.pad(x, [(0, 0), (0, 0)] + [(a.pads_begin[i], a.pads_end[i]) for i in range(r)])
    n, c = x.shape[:2]
    m = w.shape[0]
    g = a.group
    cg, mg = c // g, m // g
    out_sp = infer(a, [TensorType(t.shape, t.dtype) for t in inputs])[0].shape[2:]
    y = np.zeros((n, m) + out_sp, dtype=np.float64)
    for k in itertools.product(*[range(kk) for kk in a.kernel_shape]):
        sl = tuple(slice(k[i] * a.dilations[i], k[i] * a.dilations[i] + (out_sp[i] - 1) * a.strides[i] + 1, a.strides[i])
                   for i in range(r))
        patch = xp[(slice(None), slice(None)) + sl]  # (n, c, *out)
        for gi in range(g):
            wk = w[(slice(gi * mg, (gi + 1) * mg), slice(None)) + k]  # (mg, cg)
            y[:, gi * mg:(gi + 1) * mg] += np.einsum("mc,nc...->nm...", wk, patch[:, gi * cg:(gi + 1) * cg])
    if b is not None:
        y += b.reshape((1, m) + (1,) * r)
    return [a.epilogue.reference(y.astype(x.dtype), residual)]


def macs(a: ConvAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    w = ins[1].shape
    return int(np.prod(outs[0].shape, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))


register(OpDef(OpKind.CONV, ConvAttrs, infer, reference, macs, n_inputs=(2, 5), flops=epilogue_flops))
