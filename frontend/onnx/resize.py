"""Resize (opsets 10-19+) and Upsample (7-9): the output shape and per-axis scales resolved at import.

Upsample and Resize-10 have no coordinate modes: they map output x to input x / scale
(``asymmetric``) and round nearest neighbours down when upsampling (``simple``). Scales, sizes,
roi and axes must be constants.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.shape import normalize_axis
from convc.ops import OpKind
from convc.ops.resize import COORDINATE_MODES, MODES, NEAREST_MODES, ResizeAttrs


def _floats(ctx: NodeContext, i: int) -> list[float] | None:
    """Optional float input ``i`` (an empty tensor counts as omitted)."""
    if not ctx.has_input(i):
        return None
    v = np.asarray(ctx.constant(i)).reshape(-1)
    return [float(e) for e in v] if v.size else None


# Upsample and Resize-10: x / scale, nearest neighbours rounded down when upsampling
LEGACY_MODES = {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "simple"}


def _resize(ctx: NodeContext, scales: list[float] | None, sizes: list[int] | None, *, roi: list[float] | None = None,
            axes: list[int] | None = None, policy: str = "stretch", **modes) -> None:
    """Resolve the output shape and per-axis scales; the node's other attributes are read with
    ``NodeContext.parse`` (``modes`` overrides them)."""
    ctx.require_float(0)
    declared = ctx.parse(ResizeAttrs, shape=(), scales=(), **modes)
    mode, coordinate_mode = declared.mode, declared.coordinate_transformation_mode
    shape = ctx.input_shape(0)
    r = len(shape)
    if mode not in MODES:
        raise Unsupported(f"mode={mode!r}; convc resizes in modes {', '.join(MODES)}")
    if coordinate_mode not in COORDINATE_MODES:
        raise Unsupported(f"coordinate_transformation_mode={coordinate_mode!r} is not one of {COORDINATE_MODES}")
    if declared.nearest_mode not in NEAREST_MODES:
        raise Unsupported(f"nearest_mode={declared.nearest_mode!r} is not one of {NEAREST_MODES}")
    if declared.antialias and mode == "nearest":
        raise ctx.error("antialias=1 applies to linear and cubic modes only")
    axes = list(range(r)) if axes is None else [normalize_axis(ctx, a, r, "axes") for a in axes]
    if (scales is None) == (sizes is None):
        raise ctx.error("exactly one of scales and sizes must be given")
    given = scales if scales is not None else sizes
    assert given is not None
    if len(given) != len(axes):
        raise ctx.error(f"{'scales' if scales is not None else 'sizes'}={given} has {len(given)} values for "
                        f"{len(axes)} axes (input shape {shape})")
    full_scales = [1.0] * r
    out = list(shape)
    if scales is not None:
        for a, s in zip(axes, scales):
            if s <= 0:
                raise ctx.error(f"scales={scales} must be positive")
            full_scales[a], out[a] = s, int(s * shape[a])
    else:
        for a, n in zip(axes, sizes):
            full_scales[a], out[a] = n / shape[a], int(n)
        if policy != "stretch":
            if policy not in ("not_larger", "not_smaller"):
                raise ctx.error(f"keep_aspect_ratio_policy={policy!r} is not stretch, not_larger or not_smaller")
            pick = min if policy == "not_larger" else max
            s = pick(full_scales[a] for a in axes)
            for a in axes:
                full_scales[a], out[a] = s, int(s * shape[a] + 0.5)
    full_roi: tuple[float, ...] = ()
    if coordinate_mode == "tf_crop_and_resize" and roi is not None:
        if len(roi) != 2 * len(axes):
            raise ctx.error(f"roi={roi} needs {2 * len(axes)} values for {len(axes)} axes")
        starts, ends = [0.0] * r, [1.0] * r
        for k, a in enumerate(axes):
            starts[a], ends[a] = roi[k], roi[len(axes) + k]
        full_roi = tuple(starts + ends)
    if any(d < 1 for d in out):
        raise Unsupported(f"the resized shape {tuple(out)} is empty; convc does not compile zero-size tensors")
    attrs = dataclasses.replace(declared, shape=tuple(out), scales=tuple(full_scales), roi=full_roi)
    ctx.add_op(OpKind.RESIZE, attrs, ctx.inputs[:1])


@converter("Upsample", since=7, until=8)
def upsample_scales_attribute(ctx: NodeContext) -> None:
    _resize(ctx, [float(s) for s in ctx.attr("scales")], None, **LEGACY_MODES)


@converter("Upsample", since=9)
def upsample_scales_input(ctx: NodeContext) -> None:
    _resize(ctx, _floats(ctx, 1), None, **LEGACY_MODES)


@converter("Resize", until=10)
def resize_10(ctx: NodeContext) -> None:
    _resize(ctx, _floats(ctx, 1), None, **LEGACY_MODES)


@converter("Resize", since=11)
def resize(ctx: NodeContext) -> None:
    sizes = None
    if ctx.has_input(3):
        v = np.asarray(ctx.constant(3)).reshape(-1)
        sizes = [int(e) for e in v] if v.size else None
    axes = ctx.ints("axes")
    _resize(ctx, _floats(ctx, 2), sizes, roi=_floats(ctx, 1), axes=list(axes) if axes is not None else None,
            policy=str(ctx.attr("keep_aspect_ratio_policy", "stretch")))
