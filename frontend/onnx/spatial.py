"""Window attributes shared by Conv and the pools (convc/ops/window.py): kernel, strides, dilations and
explicit pads, ``auto_pad`` resolved. Their defaults depend on the kernel's rank, so they are read
here rather than by ``NodeContext.parse``, which the converters give them to."""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from convc.frontend.onnx.context import NodeContext
from convc.ops.window import WindowAttrs


def fields(win: WindowAttrs) -> dict[str, Any]:
    """The window's fields by name, for ``NodeContext.parse(cls, **fields(win))``."""
    return {f.name: getattr(win, f.name) for f in dataclasses.fields(WindowAttrs)}


def same_pads(size: int, k: int, stride: int, dilation: int, upper: bool) -> tuple[int, int]:
    """Pads giving ``ceil(size / stride)`` outputs; SAME_UPPER puts the odd pixel at the end."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (k - 1) + 1 - size)
    small, big = total // 2, total - total // 2
    return (small, big) if upper else (big, small)


def window(ctx: NodeContext, spatial: Sequence[int], kernel_shape: Sequence[int],
           has_dilations: bool = True) -> WindowAttrs:
    """Parse strides, dilations, pads and auto_pad of ``ctx`` for an input of spatial shape ``spatial``."""
    r = len(kernel_shape)
    kernel = tuple(int(k) for k in kernel_shape)
    if any(k < 1 for k in kernel):
        raise ctx.error(f"kernel_shape={kernel} must be positive")
    if len(spatial) != r:
        raise ctx.error(f"kernel_shape={kernel} is {r}-D but the input has spatial shape {tuple(spatial)} "
                        f"(input shape {ctx.input_shape(0)})")

    def per_axis(name: str, n: int, lo: int) -> tuple[int, ...]:
        v = ctx.ints(name, (lo,) * n)
        assert v is not None
        if len(v) != n:
            raise ctx.error(f"{name}={v} has {len(v)} values, expected {n} for a {r}-D kernel")
        if any(x < lo for x in v):
            raise ctx.error(f"{name}={v} must be {'non-negative' if lo == 0 else f'>= {lo}'}")
        return v

    strides = per_axis("strides", r, 1)
    dilations = per_axis("dilations", r, 1) if has_dilations else (1,) * r
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad == "NOTSET":
        pads = per_axis("pads", 2 * r, 0)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * r)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pairs = [same_pads(spatial[i], kernel[i], strides[i], dilations[i], auto_pad == "SAME_UPPER")
                 for i in range(r)]
        pads = tuple(b for b, _ in pairs) + tuple(e for _, e in pairs)
    else:
        raise ctx.error(f"auto_pad={auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    return WindowAttrs(kernel, strides, pads, dilations)
