"""Expand, Gather and Where on run-time tensors, with a constant shape, constant indices and a constant
condition (their all-constant forms fold in folding.py):

- Expand: the Expand op, a broadcasting copy (the input read with stride 0 along the axes that grow);
- Gather along an axis: a permutation that is a transpose of the axis seen as a x b (ShuffleNet's channel
  shuffle written as a Gather) is that Reshape, Transpose and Reshape, one copy kernel; other indices, in
  order, cut into runs of consecutive positions, one Slice per run (a run covering the whole axis reads
  the input itself), joined by a Concat along the axis and viewed with the indices' shape (a scalar index
  drops the axis);
- Where: the Where op, a broadcasting select over the condition as a 0/1 mask.
"""
from __future__ import annotations

import math

import numpy as np

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.shape import normalize_axis
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise_grad import SliceAttrs
from convc.ops.shape import ConcatAttrs, ExpandAttrs, ReshapeAttrs, TransposeAttrs

# Gather's indices are copied as at most this many runs (the Concat's inputs)
MAX_GATHER_RUNS = 4096


@converter("Expand", since=8)
def expand(ctx: NodeContext) -> None:
    shape = ctx.input_shape(0)
    dims = np.asarray(ctx.constant(1))
    if dims.ndim != 1 or dims.dtype.kind not in "iu":
        raise ctx.error(f"the shape input must be a 1-D integer tensor, got {dims.dtype} of shape {dims.shape}")
    target = tuple(int(d) for d in dims)
    try:
        out = tuple(int(d) for d in np.broadcast_shapes(shape, target))
    except ValueError:
        raise ctx.error(f"cannot expand shape {shape} to shape={list(target)}") from None
    ctx.require_float(0)
    if 0 in out:
        raise Unsupported(f"shape={list(target)} makes an empty tensor; convc does not compile zero-size tensors")
    if out == tuple(shape):
        ctx.add_op(OpKind.IDENTITY, NoAttrs(), ctx.inputs[:1])
    else:
        ctx.add_op(OpKind.EXPAND, ExpandAttrs(out), ctx.inputs[:1])


def _transposed_factors(positions: np.ndarray, n: int) -> tuple[int, int] | None:
    """(a, b) when ``positions`` list every position of an axis of size n = a b in the order of the axis seen
    as (a, b) and transposed: positions[j a + i] = i b + j (ShuffleNet's channel shuffle with a groups)."""
    if positions.size != n or n < 4:
        return None
    k = np.arange(n)
    for a in range(2, n // 2 + 1):
        if n % a == 0 and np.array_equal(positions, (k % a) * (n // a) + k // a):
            return a, n // a
    return None


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """[start, stop) runs of consecutive positions, in order: [4, 5, 6, 0, 0] -> [(4, 7), (0, 1), (0, 1)]."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


@converter("Gather", since=1)
def gather(ctx: NodeContext) -> None:
    if not ctx.is_constant(1):
        raise Unsupported("Gather with indices computed at run time; convc gathers with constant indices")
    ctx.require_float(0)
    shape = ctx.input_shape(0)
    indices = np.asarray(ctx.constant(1))
    if indices.dtype.kind not in "iu":
        raise ctx.error(f"indices must be integers, got {indices.dtype}")
    axis = normalize_axis(ctx, int(ctx.attr("axis", 0)), len(shape))
    n = shape[axis]
    if indices.size and (indices.min() < -n or indices.max() >= n):
        raise ctx.error(f"indices {indices.reshape(-1).tolist()} are out of range for axis {axis} of size {n}")
    if indices.size == 0:
        raise Unsupported("Gather with no indices makes an empty tensor; convc does not compile zero-size tensors")
    out_shape = tuple(shape[:axis]) + tuple(indices.shape) + tuple(shape[axis + 1:])
    positions = indices.reshape(-1).astype(np.int64) % n
    factors = _transposed_factors(positions, n)
    if factors is not None:
        a, b = factors
        grid = ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(tuple(shape[:axis]) + (a, b) + tuple(shape[axis + 1:])),
                          ctx.inputs[:1], [ctx.fresh_tensor("grid_out")], name=f"{ctx.name}/grid")[0]
        perm = list(range(len(shape) + 1))
        perm[axis], perm[axis + 1] = axis + 1, axis
        swapped = ctx.add_op(OpKind.TRANSPOSE, TransposeAttrs(tuple(perm)), [grid], [ctx.fresh_tensor("swap_out")],
                             name=f"{ctx.name}/transpose")[0]
        ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(out_shape), [swapped], name=f"{ctx.name}/view")
        return
    runs = _runs([int(i) for i in positions])
    if len(runs) > MAX_GATHER_RUNS:
        raise Unsupported(f"Gather's indices make {len(runs)} runs of consecutive positions, more than "
                          f"{MAX_GATHER_RUNS} copies")
    joined_shape = tuple(shape[:axis]) + (indices.size,) + tuple(shape[axis + 1:])
    final = joined_shape == out_shape
    pieces = []
    for k, (start, stop) in enumerate(runs):
        if (start, stop) == (0, n):
            pieces.append(ctx.inputs[0])
            continue
        last = final and len(runs) == 1
        out = None if last else [ctx.fresh_tensor(f"run{k}_out")]
        pieces.append(ctx.add_op(OpKind.SLICE, SliceAttrs(axis, start, stop), ctx.inputs[:1], out,
                                 name=f"{ctx.name}/run{k}")[0])
    if len(pieces) > 1:
        out = None if final else [ctx.fresh_tensor("joined_out")]
        value = ctx.add_op(OpKind.CONCAT, ConcatAttrs(axis), pieces, out, name=f"{ctx.name}/joined")[0]
    elif pieces[0] == ctx.inputs[0] and final:  # every index once, in order
        ctx.add_op(OpKind.IDENTITY, NoAttrs(), pieces)
        return
    else:
        value = pieces[0]
    if not final:
        ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(out_shape), [value], name=f"{ctx.name}/view")
    assert math.prod(out_shape) == math.prod(joined_shape)


@converter("Where", since=9)
def where(ctx: NodeContext) -> None:
    """Where with a constant condition and run-time x or y: the select kernel reads the condition as a 0/1 mask
    of x's dtype (a constant of the condition's own shape, broadcast like the other two operands)."""
    if not ctx.is_constant(0):
        raise Unsupported("Where with a condition computed at run time; convc compiles Where with a constant "
                          "condition")
    ctx.require_float(1, 2)
    dtype = ctx.input_type(1).dtype
    if ctx.input_type(2).dtype != dtype:
        raise ctx.error(f"X and Y have different dtypes: {dtype} and {ctx.input_type(2).dtype}")
    mask = ctx.state.fresh_name(f"{ctx.name}/mask")
    ctx.state.values[mask] = (np.asarray(ctx.constant(0)) != 0).astype(dtype)
    ctx.add_op(OpKind.WHERE, NoAttrs(), [mask, ctx.inputs[1], ctx.inputs[2]])
