"""Data movement: Flatten and Reshape take dY back to the input's shape, Concat slices it, Split
concatenates, Transpose transposes back, constant Pad crops."""
from __future__ import annotations

import numpy as np

from convc.errors import GraphError
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.elementwise_grad import SliceAttrs
from convc.ops.shape import ConcatAttrs, PadAttrs, ReshapeAttrs, TransposeAttrs
from convc.passes.autodiff.core import GradContext, gradient


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
    """Constant padding: the gradient is dY with the padding cut off again (and zeros where the
    forward cropped), i.e. a Pad by the negated pads."""
    a = op.attrs
    if a.mode != "constant":
        raise GraphError(f"node {op.name!r}: convc differentiates constant-mode Pad only, not mode={a.mode!r}")
    return [ctx.emit1(OpKind.PAD, PadAttrs(tuple(-p for p in a.pads), "constant", 0.0), [dys[0]])]
