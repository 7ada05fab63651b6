"""ConvTranspose: output_shape and auto_pad resolved to explicit pads, kernel_shape taken from W when absent.

ONNX: with ``output_shape`` (or SAME_UPPER/SAME_LOWER, which ask for ``input * stride``), the total
padding is ``stride * (in - 1) + output_padding + (k - 1) * dilation + 1 - output_shape``; SAME_UPPER
puts the larger half at the end, every other mode at the beginning. Given pads are then ignored.
"""
from __future__ import annotations

from convc.frontend.onnx.context import NodeContext
from convc.frontend.onnx.registry import converter
from convc.ops import OpKind
from convc.ops.conv_transpose import ConvTransposeAttrs, natural_size


@converter("ConvTranspose")
def conv_transpose(ctx: NodeContext) -> None:
    ctx.require_float()
    x, w = ctx.input_shape(0), ctx.input_shape(1)
    if len(x) < 3 or len(w) != len(x):
        raise ctx.error(f"X.shape={x} and W.shape={w} must have the same rank, at least 3")
    r = len(x) - 2
    kernel = ctx.ints("kernel_shape")
    if kernel is not None and kernel != w[2:]:
        raise ctx.error(f"kernel_shape={kernel} does not match W.shape={w}")

    def per_axis(name: str, n: int, default: int, lo: int) -> tuple[int, ...]:
        v = ctx.ints(name, (default,) * n)
        assert v is not None
        if len(v) != n:
            raise ctx.error(f"{name}={v} has {len(v)} values, expected {n} for a {r}-D kernel")
        if any(e < lo for e in v):
            raise ctx.error(f"{name}={v} must be {'non-negative' if lo == 0 else f'>= {lo}'}")
        return v

    kernel = tuple(w[2:])
    strides = per_axis("strides", r, 1, 1)
    dilations = per_axis("dilations", r, 1, 1)
    output_padding = per_axis("output_padding", r, 0, 0)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ctx.error(f"auto_pad={auto_pad!r} is not one of NOTSET, SAME_UPPER, SAME_LOWER, VALID")
    output_shape = ctx.ints("output_shape")
    if output_shape is not None and len(output_shape) == r + 2:
        output_shape = output_shape[2:]  # some exporters write N and C too
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = tuple(x[2 + i] * strides[i] for i in range(r))
    if output_shape is not None:
        if len(output_shape) != r:
            raise ctx.error(f"output_shape={output_shape} has {len(output_shape)} values, expected {r}")
        total = [natural_size(x[2 + i], kernel[i], strides[i], dilations[i]) + output_padding[i] - output_shape[i]
                 for i in range(r)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        pads = tuple(small + big) if auto_pad == "SAME_UPPER" else tuple(big + small)
    elif auto_pad == "VALID":
        pads = (0,) * (2 * r)
    else:
        pads = per_axis("pads", 2 * r, 0, 0)
    attrs = ctx.parse(ConvTransposeAttrs, kernel_shape=kernel, strides=strides, pads=pads, dilations=dilations,
                      output_padding=output_padding if any(output_padding) else ())
    group = attrs.group
    if group < 1 or x[1] % group or w[0] != x[1]:
        raise ctx.error(f"group={group} does not fit X.shape={x}, W.shape={w}: W.shape[0] must equal the input "
                        f"channels {x[1]}, which must divide by group")
    ctx.add_op(OpKind.CONV_TRANSPOSE, attrs, ctx.present_inputs())
