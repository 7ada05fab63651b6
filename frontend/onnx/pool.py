"""MaxPool, AveragePool, LpPool (1-D, 2-D and 3-D) and the global pools."""
from __future__ import annotations

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.registry import converter
from convc.frontend.onnx.spatial import fields, window
from convc.ops import OpKind
from convc.ops.pool import GlobalPoolAttrs, LpPoolAttrs, PoolAttrs


def _window(ctx: NodeContext) -> dict[str, tuple[int, ...]]:
    """The window fields of a pool (auto_pad resolved), for ``NodeContext.parse``."""
    ctx.require_float()
    x = ctx.input_shape(0)
    if len(x) > 5:
        raise Unsupported(f"{len(x) - 2}-D pooling (X.shape={x}); convc compiles 1-D, 2-D and 3-D pooling")
    if len(x) < 3:
        raise ctx.error(f"X.shape={x} must have rank 3 (1-D), 4 (2-D) or 5 (3-D)")
    win = window(ctx, x[2:], ctx.attr("kernel_shape"))
    r = len(win.kernel_shape)
    for i in range(r):
        extent = win.dilations[i] * (win.kernel_shape[i] - 1) + 1
        if win.pads[i] >= extent or win.pads[r + i] >= extent:
            raise ctx.error(f"pads={win.pads} must be smaller than the (dilated) kernel {win.kernel_shape} on every "
                            "axis: a window would lie entirely in the padding")
    return fields(win)


@converter("MaxPool")
def max_pool(ctx: NodeContext) -> None:
    if ctx.output_used(1):
        raise Unsupported("the optional output 'Indices' is used; convc computes only the pooled values")
    if ctx.attr("storage_order", 0) != 0:
        raise Unsupported(f"storage_order={ctx.attr('storage_order')}; convc supports only 0 (row major)")
    # count_include_pad is AveragePool's: MaxPool has none to read
    attrs = ctx.parse(PoolAttrs, **_window(ctx), count_include_pad=False)
    ctx.add_op(OpKind.MAX_POOL, attrs, ctx.inputs[:1])


@converter("AveragePool")
def average_pool(ctx: NodeContext) -> None:
    attrs = ctx.parse(PoolAttrs, **_window(ctx))
    ctx.add_op(OpKind.AVERAGE_POOL, attrs, ctx.inputs[:1])


@converter("LpPool")
def lp_pool(ctx: NodeContext) -> None:
    attrs = ctx.parse(LpPoolAttrs, **_window(ctx))
    if attrs.p < 1:
        raise ctx.error(f"p={attrs.p} must be a positive integer")
    ctx.add_op(OpKind.LP_POOL, attrs, ctx.inputs[:1])


@converter("GlobalAveragePool")
def global_average_pool(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), ctx.inputs[:1])


@converter("GlobalMaxPool")
def global_max_pool(ctx: NodeContext) -> None:
    ctx.require_float()
    ctx.add_op(OpKind.GLOBAL_MAX_POOL, GlobalPoolAttrs(), ctx.inputs[:1])
