"""Flatten, Reshape and Concat on run-time tensors (their constant forms fold in folding.py)."""
from __future__ import annotations

import numpy as np

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter
from convc.ops import OpKind
from convc.ops.shape import ConcatAttrs, FlattenAttrs, ReshapeAttrs


def normalize_axis(ctx: NodeContext, axis: int, rank: int, name: str = "axis", inclusive: bool = False) -> int:
    """``axis`` in [-rank, rank) (or [-rank, rank] with ``inclusive``) mapped to a non-negative index."""
    hi = rank + 1 if inclusive else rank
    if not -rank <= axis < hi:
        raise ctx.error(f"{name}={axis} is out of range for rank {rank} (input shape {ctx.input_shape(0)})")
    return axis + rank if axis < 0 else axis


def reshape_target(ctx: NodeContext, data_shape: tuple[int, ...], shape: np.ndarray, allowzero: bool) -> tuple[int, ...]:
    """Resolve the 0 (copy a dimension, unless allowzero) and -1 (infer) entries of a Reshape's shape."""
    if shape.ndim != 1 or shape.dtype.kind not in "iu":
        raise ctx.error(f"the shape input must be a 1-D integer tensor, got {shape.dtype} of shape {shape.shape}")
    requested = tuple(int(d) for d in shape)
    if allowzero and 0 in requested and -1 in requested:
        raise ctx.error(f"shape={requested} with allowzero=1 cannot hold both 0 and -1")
    if requested.count(-1) > 1 or any(d < -1 for d in requested):
        raise ctx.error(f"shape={requested} may hold at most one -1 and no other negative value")
    out = []
    for i, d in enumerate(requested):
        if d == 0 and not allowzero:
            if i >= len(data_shape):
                raise ctx.error(f"shape={requested}: the 0 at index {i} copies a dimension the input "
                                f"of shape {data_shape} does not have")
            d = data_shape[i]
        out.append(d)
    total = int(np.prod(data_shape, dtype=np.int64))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        if known == 0 or total % known:
            raise ctx.error(f"cannot reshape input of shape {data_shape} ({total} elements) into shape={requested}")
        out[out.index(-1)] = total // known
    if int(np.prod(out, dtype=np.int64)) != total:
        raise ctx.error(f"cannot reshape input of shape {data_shape} ({total} elements) into shape={requested} "
                        f"(resolved to {tuple(out)})")
    return tuple(out)


@converter("Flatten")
def flatten(ctx: NodeContext) -> None:
    rank = len(ctx.input_shape(0))
    axis = normalize_axis(ctx, int(ctx.attr("axis", 1)), rank, inclusive=True)
    ctx.add_op(OpKind.FLATTEN, FlattenAttrs(axis), ctx.inputs[:1])


@converter("Reshape")
def reshape(ctx: NodeContext) -> None:
    target = reshape_target(ctx, ctx.input_shape(0), ctx.constant(1), bool(ctx.attr("allowzero", 0)))
    ctx.add_op(OpKind.RESHAPE, ReshapeAttrs(target), ctx.inputs[:1])


@converter("Concat")
def concat(ctx: NodeContext) -> None:
    ctx.require_float()
    axis = normalize_axis(ctx, int(ctx.attr("axis")), len(ctx.input_shape(0)))
    ctx.add_op(OpKind.CONCAT, ConcatAttrs(axis), ctx.present_inputs())
