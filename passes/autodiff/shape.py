"""Data movement: Flatten and Reshape take dY back to the input's shape, Concat slices it, Split
concatenates, Transpose transposes back, constant Pad crops."""
from __future__ import annotations

import numpy as np
from convc.passes.autodiff.core import GradContext, gradient

from convc.ir import Op
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise_grad import SliceAttrs
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
    output copies (a MatMul, with the axis moved last by a Transpose and back)."""
    a = op.attrs
    if a.mode == "constant":
        return [ctx.emit1(OpKind.PAD, PadAttrs(tuple(-p for p in a.pads), "constant", 0.0), [dys[0]])]
    x_shape = ctx.shape(op.inputs[0])
    rank = len(x_shape)
    g = dys[0]
    for axis in range(rank):
        if not (a.pads[axis] or a.pads[rank + axis]):
            continue
        out_size = ctx.shape(g)[axis]
        source = pad_source_index(a, x_shape[axis], axis, rank)
        s = np.zeros((out_size, x_shape[axis]), dtype=ctx.g.tensor(g).dtype)
        s[np.arange(out_size)[source >= 0], source[source >= 0]] = 1.0
        matrix = ctx.g.add_constant(ctx.g.fresh_name(f"{op.name}.pad_grad{axis}"), s).name
        if axis == rank - 1:
            g = ctx.emit1(OpKind.MATMUL, NoAttrs(), [g, matrix])
        else:
            perm = list(range(rank))
            perm[axis], perm[-1] = perm[-1], perm[axis]
            moved = ctx.emit1(OpKind.TRANSPOSE, TransposeAttrs(tuple(perm)), [g])
            g = ctx.emit1(OpKind.TRANSPOSE, TransposeAttrs(tuple(perm)),
                          [ctx.emit1(OpKind.MATMUL, NoAttrs(), [moved, matrix])])
    return [g]
