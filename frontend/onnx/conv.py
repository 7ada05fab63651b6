"""Conv (1-D, 2-D and 3-D): auto_pad resolved to explicit pads, kernel_shape taken from W when absent."""
from __future__ import annotations

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.spatial import fields, window
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs


@converter("Conv")
def conv(ctx: NodeContext) -> None:
    ctx.require_float()
    x, w = ctx.input_shape(0), ctx.input_shape(1)
    if len(x) > 5:
        raise Unsupported(f"{len(x) - 2}-D convolution (X.shape={x}); convc compiles 1-D, 2-D and 3-D convolutions")
    if len(x) < 3 or len(w) != len(x):
        raise ctx.error(f"X.shape={x} and W.shape={w} must both have rank 3 (1-D), 4 (2-D) or 5 (3-D)")
    kernel = ctx.ints("kernel_shape")
    if kernel is not None and kernel != w[2:]:
        raise ctx.error(f"kernel_shape={kernel} does not match W.shape={w}")
    win = window(ctx, x[2:], w[2:])
    attrs = ctx.parse(ConvAttrs, **fields(win))
    group = attrs.group
    if group < 1 or x[1] % group or w[0] % group or w[1] * group != x[1]:
        raise ctx.error(f"group={group} does not fit X.shape={x}, W.shape={w}: input channels {x[1]} must equal "
                        f"W.shape[1] * group = {w[1] * group} and output channels {w[0]} must divide by group")
    ctx.add_op(OpKind.CONV, attrs, ctx.present_inputs())
