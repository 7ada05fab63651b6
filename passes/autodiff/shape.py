"""Data movement: Flatten and Reshape take dY back to the input's shape, Concat slices it, Split
concatenates, Transpose transposes back, constant Pad crops, Slice pads; the ops that copy or blend
positions along an axis (reflect/edge/wrap Pad, strided Slice, Resize) multiply dY by the transposed
matrix of that axis."""
from __future__ import annotations

import numpy as np
from convc.passes.autodiff.core import GradContext, gradient

from convc.ir import Op
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise_grad import SliceAttrs
from convc.ops.resize import axis_taps
from convc.ops.shape import ConcatAttrs, PadAttrs, ReshapeAttrs, TransposeAttrs, pad_source_index


@gradient(OpKind.FLATTEN, OpKind.RESHAPE)
def reshape_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(OpKind.RESHAPE, ReshapeAttrs(ctx.shape(op.inputs[0])), [dys[0]])]


@gradient(OpKind.CONCAT)
def concat_grad(ctx: GradContext, op: Op, dys: list) -> list:
    out, start = [], 0
    for i, t in enumerate(op.inputs):
        stop = start + ctx.shape(t)[op.attrs.axis]
        out.append(ctx.emit1(OpKind.SLICE, SliceAttrs(op.attrs.axis, start, stop), [dys[0]])
                   if ctx.needs(op, i) else None)
        start = stop
    return out


@gradient(OpKind.TRANSPOSE)
def transpose_grad(ctx: GradContext, op: Op, dys: list) -> list:
    inverse = tuple(int(i) for i in np.argsort(op.attrs.perm))
    return [ctx.emit1(OpKind.TRANSPOSE, TransposeAttrs(inverse), [dys[0]])]


@gradient(OpKind.SPLIT)
def split_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """Concat of the parts' gradients (zeros for a part nothing downstream used)."""
    parts = []
    for t, d in zip(op.outputs, dys):
        if d is None:
            shape = ctx.shape(t)
            d = ctx.g.add_constant(ctx.g.fresh_name(f"{t}.zero_grad"), np.zeros(shape, ctx.g.tensor(t).dtype)).name
        parts.append(d)
    return [ctx.emit1(OpKind.CONCAT, ConcatAttrs(op.attrs.axis), parts)]


@gradient(OpKind.PAD)
def pad_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """Constant padding: dY with the padding cut off again (and zeros where the forward cropped),
    i.e. a Pad by the negated pads. Reflect, edge and wrap copy some inputs to several outputs:
    along each padded axis the gradient is dY times the 0/1 matrix S[out, in] of which input each
    output copies."""
    a = op.attrs
    if a.mode == "constant":
        return [ctx.emit1(OpKind.PAD, PadAttrs(tuple(-p for p in a.pads), "constant", 0.0), [dys[0]])]
    x_shape = ctx.shape(op.inputs[0])
    rank = len(x_shape)
    g = dys[0]
    for axis in range(rank):
        if not (a.pads[axis] or a.pads[rank + axis]):
            continue
        source = pad_source_index(a, x_shape[axis], axis, rank)
        g = along_axis(ctx, g, axis, copy_matrix(source, x_shape[axis]), f"{op.name}.pad_grad{axis}")
    return [g]


def copy_matrix(source: np.ndarray, in_size: int) -> np.ndarray:
    """S[out, in] = 1 where output position ``out`` copies input ``source[out]`` (-1: copies nothing)."""
    s = np.zeros((len(source), in_size))
    s[np.arange(len(source))[source >= 0], source[source >= 0]] = 1.0
    return s


def along_axis(ctx: GradContext, g: str, axis: int, matrix: np.ndarray, name: str) -> str:
    """``g`` contracted with ``matrix`` (out, in) along ``axis``: the transposed action of a forward that
    is linear along that axis (y = S x there). A MatMul, with the axis moved last by a Transpose and back."""
    rank = len(ctx.shape(g))
    m = ctx.g.add_constant(ctx.g.fresh_name(name), matrix.astype(ctx.g.tensor(g).dtype)).name
    if axis == rank - 1:
        return ctx.emit1(OpKind.MATMUL, NoAttrs(), [g, m])
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = ctx.emit1(OpKind.TRANSPOSE, TransposeAttrs(tuple(perm)), [g])
    return ctx.emit1(OpKind.TRANSPOSE, TransposeAttrs(tuple(perm)), [ctx.emit1(OpKind.MATMUL, NoAttrs(), [moved, m])])


@gradient(OpKind.SLICE)
def slice_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """dY padded with zeros back to the input's extent along the axis."""
    a, x_shape = op.attrs, ctx.shape(op.inputs[0])
    rank = len(x_shape)
    pads = [0] * (2 * rank)
    pads[a.axis], pads[rank + a.axis] = a.start, x_shape[a.axis] - a.stop
    return [ctx.emit1(OpKind.PAD, PadAttrs(tuple(pads)), [dys[0]])]


@gradient(OpKind.STRIDED_SLICE)
def strided_slice_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """Unit steps: dY padded with zeros (one Pad). Otherwise, along each axis the slice changes, dY times
    the 0/1 matrix of which input position each output position reads."""
    a, x_shape = op.attrs, ctx.shape(op.inputs[0])
    rank = len(x_shape)
    if all(s == 1 for s in a.steps):
        pads = tuple(a.starts) + tuple(d - b - n for d, b, n in zip(x_shape, a.starts, a.shape))
        return [ctx.emit1(OpKind.PAD, PadAttrs(pads), [dys[0]])]
    g = dys[0]
    for axis in range(rank):
        source = a.starts[axis] + a.steps[axis] * np.arange(a.shape[axis])
        if a.shape[axis] == x_shape[axis] and np.array_equal(source, np.arange(x_shape[axis])):
            continue
        g = along_axis(ctx, g, axis, copy_matrix(source, x_shape[axis]), f"{op.name}.slice_grad{axis}")
    return [g]


@gradient(OpKind.RESIZE)
def resize_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """Resize is linear and separable: along each resized axis y = R x with R[out, in] the taps' weights
    (zero rows where tf_crop_and_resize extrapolates: those outputs are constants), so dX = R^T dY there."""
    x_shape = ctx.shape(op.inputs[0])
    g = dys[0]
    for axis, n in enumerate(x_shape):
        taps = axis_taps(op.attrs, axis, n)
        if taps.is_identity:
            continue
        r = np.zeros((taps.index.shape[0], n))
        rows = np.repeat(np.arange(taps.index.shape[0]), taps.index.shape[1])
        np.add.at(r, (rows, taps.index.reshape(-1)), taps.weight.reshape(-1))
        r[taps.extrapolated] = 0.0
        g = along_axis(ctx, g, axis, r, f"{op.name}.resize_grad{axis}")
    return [g]
