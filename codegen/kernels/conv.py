"""The Conv emitter: dispatches on the algorithm passes/kernel_selection.py recorded (ConvAttrs.algorithm),
and the channels-first 2-D kernels: pointwise GEMM, im2col gathered block by block, depthwise, and
im2col into kernel scratch then the matrix product per group. (1-D convs arrive as 2-D ones:
passes/conv1d.py.)"""
from __future__ import annotations

import numpy as np
from convc.codegen.kernels.blas import Operand, pack_a, split_epilogue
from convc.codegen.kernels.epilogue import epilogue_pass
from convc.codegen.kernels.gemm import matmul_loops
from convc.codegen.kernels.winograd import emit_winograd_conv
from convc.codegen.kernels.conv_direct import emit_direct_conv_few_channels
from convc.codegen.llvm_utils import FAST, as_i64, f32, for_range, gep, i64, in_range, load, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from llvmlite import ir

from convc.errors import CompileError
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, ConvAttrs, is_pointwise
from convc.ops.im2col import block_rows
from convc.ops.window import WindowAttrs


def im2col_row(b: ir.IRBuilder, x: ir.Value, col: ir.Value, row: ir.Value, c: int, h: int, w: int,
               a: WindowAttrs, oh: int, ow: int, oy_lo=0, oy_hi=None, ld: int | None = None) -> None:
    """One row of the im2col matrix: col[row, y*OW + x] for row = (ci*KH + kh)*KW + kw, the input
    tap of every output pixel, zero where it falls in the padding. ``oy_lo``/``oy_hi`` restrict it
    to a block of output rows, written at column (y - oy_lo)*OW of rows ``ld`` apart."""
    oy_hi = oh if oy_hi is None else oy_hi
    ld = oh * ow if ld is None else ld
    kh_, kw_ = a.kernel_shape
    sh, sw = a.strides
    dh, dw = a.dilations
    pt, pl = a.pads[0], a.pads[1]
    ci = b.udiv(row, i64(kh_ * kw_))
    kh = b.urem(b.udiv(row, i64(kw_)), i64(kh_))
    kw = b.urem(row, i64(kw_))
    # output columns whose tap lands inside the row: ox in [lo, hi), the same for every oy
    first_tap = b.sub(i64(pl), b.mul(kw, i64(dw)))   # ox * sw >= pl - kw*dw
    last_tap = b.add(i64(w), first_tap)               # ox * sw <  w + pl - kw*dw
    lo = _clamp(b, _ceil_div(b, first_tap, sw), ow)
    hi = _clamp(b, _ceil_div(b, last_tap, sw), ow)
    hi = b.select(b.icmp_signed("<", hi, lo), lo, hi)
    with for_range(b, oy_hi, start=oy_lo, name="oy") as oy:
        iy = b.add(b.sub(b.mul(oy, i64(sh)), i64(pt)), b.mul(kh, i64(dh)))
        y_ok = in_range(b, iy, 0, h)
        col_row = gep(b, col, b.add(b.mul(row, i64(ld)), b.mul(b.sub(oy, as_i64(b, oy_lo)), i64(ow))))
        # a row of taps in the vertical padding is all zeros; otherwise zeros, a strided copy, zeros
        row_lo = b.select(y_ok, lo, i64(ow))
        row_hi = b.select(y_ok, hi, i64(ow))
        # index arithmetic stays in integers: the row's start may lie before x, no tap read does
        x_row = b.sub(b.mul(b.add(b.mul(ci, i64(h)), b.select(y_ok, iy, i64(0))), i64(w)), first_tap)
        with for_range(b, row_lo, name="zl") as ox:
            store(b, f32(0.0), col_row, ox)
        with for_range(b, row_hi, start=row_lo, name="ox") as ox:
            store(b, load(b, x, b.add(x_row, ox if sw == 1 else b.mul(ox, i64(sw)))), col_row, ox)
        with for_range(b, ow, start=row_hi, name="zr") as ox:
            store(b, f32(0.0), col_row, ox)


def _ceil_div(b: ir.IRBuilder, a: ir.Value, d: int) -> ir.Value:
    """ceil(a / d) for d > 0 and any sign of a (0 or less when a <= 0)."""
    return b.select(b.icmp_signed("<=", a, i64(0)), b.sdiv(a, i64(d)), b.sdiv(b.add(a, i64(d - 1)), i64(d)))


def _clamp(b: ir.IRBuilder, v: ir.Value, hi: int) -> ir.Value:
    v = b.select(b.icmp_signed("<", v, i64(0)), i64(0), v)
    return b.select(b.icmp_signed(">", v, i64(hi)), i64(hi), v)


def emit_im2col(b: ir.IRBuilder, x: ir.Value, col: ir.Value, c: int, h: int, w: int,
                a: ConvAttrs, oh: int, ow: int) -> None:
    """The whole im2col matrix [C*KH*KW, OH*OW] of one image."""
    with for_range(b, c * a.kernel_shape[0] * a.kernel_shape[1], name="row") as row:
        im2col_row(b, x, col, row, c, h, w, a, oh, ow)


def emit_depthwise_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    """One filter per channel: each output row accumulates KH*KW shifted input rows, the columns
    whose taps fall in the padding cut off at compile time, so the inner loops vectorize; the
    planes (image, channel) are split between threads."""
    a = op.attrs
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    n, c, h, w = xs
    oh, ow = ys[2:]
    kh_, kw_ = a.kernel_shape
    (sh, sw), (dh, dw) = a.strides, a.dilations
    pt, pl = a.pads[0], a.pads[1]
    epi = a.epilogue
    has_bias = len(op.inputs) - epi.residual == 3
    args = list(op.inputs) + [op.outputs[0]]
    fn, b = em.function(op.name, len(args), parallel=True)
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    columns = tap_columns(kw_, sw, dw, pl, w, ow)
    # the interior: output positions whose every tap is inside the input (no checks, taps in registers)
    y0, y1 = _interior(h, kh_, sh, dh, pt, oh)
    x0, x1 = _interior(w, kw_, sw, dw, pl, ow)
    lo_t, hi_t = em.thread_range(b, fn, n * c)
    with for_range(b, hi_t, start=lo_t, name="plane") as plane:
        ci = b.urem(plane, i64(c))
        start = load(b, bias, ci) if bias is not None else f32(0.0)
        taps = [load(b, wt, b.add(b.mul(ci, i64(kh_ * kw_)), i64(t))) for t in range(kh_ * kw_)]
        with for_range(b, oh, name="oy") as oy:
            y_off = b.add(b.mul(plane, i64(oh * ow)), b.mul(oy, i64(ow)))
            yrow = gep(b, y, y_off)
            inner = b.and_(b.icmp_signed(">=", oy, i64(y0)), b.icmp_signed("<", oy, i64(y1)))
            with b.if_else(inner) as (interior_row, border_row):
                with interior_row:
                    x_rows = [b.mul(b.add(b.mul(plane, i64(h)), b.add(b.mul(oy, i64(sh)), i64(kh * dh - pt))), i64(w))
                              for kh in range(kh_)]

                    def pixel(ox, checked: bool):
                        acc = start
                        for kh in range(kh_):
                            for kw in range(kw_):
                                ix = b.add(ox if sw == 1 else b.mul(ox, i64(sw)), i64(kw * dw - pl))
                                if checked:
                                    ok = in_range(b, ix, 0, w)
                                    v = load(b, x, b.select(ok, b.add(x_rows[kh], ix), i64(0)))
                                    v = b.select(ok, v, f32(0.0))
                                else:
                                    v = load(b, x, b.add(x_rows[kh], ix))
                                acc = b.fadd(acc, b.fmul(taps[kh * kw_ + kw], v), flags=FAST)
                        store(b, acc, yrow, ox)
                    with for_range(b, x0, name="oxl") as ox:
                        pixel(ox, True)
                    with for_range(b, x1, start=x0, name="oxi") as ox:
                        pixel(ox, False)
                    with for_range(b, ow, start=x1, name="oxr") as ox:
                        pixel(ox, True)
                with border_row:  # rows touching the top or bottom padding: tap by tap
                    with for_range(b, ow, name="ox0") as ox:
                        store(b, start, yrow, ox)
                    for kh in range(kh_):
                        iy = b.add(b.mul(oy, i64(sh)), i64(kh * dh - pt))
                        with b.if_then(in_range(b, iy, 0, h)):
                            x_row = b.mul(b.add(b.mul(plane, i64(h)), iy), i64(w))
                            for kw, (lo, hi, first) in enumerate(columns):
                                if lo >= hi:
                                    continue
                                tap = taps[kh * kw_ + kw]
                                with for_range(b, hi, start=lo, name="ox") as ox:
                                    xi = b.sub(b.add(x_row, ox if sw == 1 else b.mul(ox, i64(sw))), i64(first))
                                    store(b, b.fadd(load(b, yrow, ox), b.fmul(tap, load(b, x, xi)), flags=FAST),
                                          yrow, ox)
            epilogue_pass(b, epi, yrow, gep(b, residual, y_off) if residual is not None else None, ow)
    b.ret_void()
    return KernelCall(fn, args)


def tap_columns(k: int, s: int, d: int, p_begin: int, size: int, out: int) -> list[tuple[int, int, int]]:
    """Per kernel tap: the output positions [lo, hi) whose input lies inside [0, size), and the
    offset ``first`` with input = o*s - first."""
    columns = []
    for t in range(k):
        first = p_begin - t * d
        lo = min(max(0, -(-first // s)), out)
        hi = min(max(lo, -(-(size + first) // s)), out)
        columns.append((lo, hi, first))
    return columns


def _interior(size: int, k: int, s: int, d: int, pad: int, out: int) -> tuple[int, int]:
    """Output positions [lo, hi) whose k taps all fall inside [0, size)."""
    lo = min(-(-pad // s), out)
    hi = min(max(lo, -(-(size + pad - (k - 1) * d) // s)), out)
    return lo, hi


def epilogue_rows(b: ir.IRBuilder, after, c: ir.Value, rows: int, ld: int, count) -> None:
    """The scalar part of an epilogue over ``count`` columns of ``rows`` rows ``ld`` apart (one
    run-time loop over the rows, not one copy of the loop per row)."""
    if after.empty:
        return
    with for_range(b, rows, name="erow") as r:
        epilogue_pass(b, after, gep(b, c, b.mul(r, i64(ld))), None, count)


def full_or_edge(b: ir.IRBuilder, index: ir.Value, n_full: int, size: int, rem: int, emit) -> None:
    """emit(size) for the first ``n_full`` items and emit(rem) for the one after them (the sizes
    are compile-time constants, so each variant is specialized)."""
    if rem and n_full:
        with b.if_else(b.icmp_unsigned("<", index, i64(n_full))) as (whole, edge):
            with whole:
                emit(size)
            with edge:
                emit(rem)
    else:
        emit(rem or size)


def emit_fused_im2col_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    """IM2COL_FUSED: Conv = W @ im2col(x), the im2col matrix built for a block of output rows at a
    time in per-thread scratch (L2-resident) and consumed at once by the GEMM; blocks of every image
    and group are split between threads (passes/im2col.py chose this where there are enough blocks
    for the compile's threads)."""
    a = op.attrs
    xs = em.tensor(op.inputs[0]).shape
    ys = em.tensor(op.outputs[0]).shape
    n, c, h, w = xs
    m, oh, ow = ys[1:]
    p = oh * ow
    g = a.group
    cg, mg = c // g, m // g
    kdim = cg * a.kernel_shape[0] * a.kernel_shape[1]
    epi = op.attrs.epilogue
    has_bias = len(op.inputs) - epi.residual == 3
    per_group = [pack_a(wm, em.isa) for wm in em.tensor(op.inputs[1]).data.reshape(g, mg, kdim)]
    rows = block_rows(oh, ow)
    full_blocks, last_rows = divmod(oh, rows)
    blocks = full_blocks + (last_rows > 0)
    block_bytes = kdim * rows * ow * 4
    args = list(op.inputs) + [op.outputs[0], em.scratch(block_bytes, per_thread=True)]
    args[1] = em.derived_constant(np.stack(per_group))
    fn, b = em.function(op.name, len(args), parallel=True)
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    col = em.thread_scratch(b, fn.args[len(op.inputs) + 1], block_bytes, fn.args[-2])
    in_kernel, after = split_epilogue(epi)
    lo, hi = em.thread_range(b, fn, n * g * blocks)
    with for_range(b, hi, start=lo, name="task") as t:
        image_group = b.udiv(t, i64(blocks))
        gi = b.urem(image_group, i64(g))
        block = b.urem(t, i64(blocks))
        oy0 = b.mul(block, i64(rows))
        xg = gep(b, x, b.mul(image_group, i64(cg * h * w)))
        y_off = b.add(b.mul(image_group, i64(mg * p)), b.mul(oy0, i64(ow)))
        w_at = gep(b, wt, b.mul(gi, i64(per_group[0].size)))
        bias_at = gep(b, bias, b.mul(gi, i64(mg))) if bias is not None else None

        def one_block(n_rows: int) -> None:
            cols = n_rows * ow
            with for_range(b, kdim, name="row") as r:
                im2col_row(b, xg, col, r, cg, h, w, a, oh, ow, oy0, b.add(oy0, i64(n_rows)), cols)
            em.gemm.gemm(b, mg, cols, kdim, w_at, Operand(True), col, Operand(False, cols), gep(b, y, y_off), p,
                         "bias_row" if bias is not None else "zero", bias_at, in_kernel,
                         gep(b, residual, y_off) if residual is not None else None)
            epilogue_rows(b, after, gep(b, y, y_off), mg, p, cols)

        full_or_edge(b, block, full_blocks, rows, last_rows, one_block)
    b.ret_void()
    return KernelCall(fn, args)


def emit_direct_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    """POINTWISE: a 1x1, stride-1, unpadded conv with constant weights: Y[n, g] = W[g] @ X[n, g] per
    column panel, the panels of every image and group split between threads."""
    a = op.attrs
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    n, c, m = xs[0], xs[1], ys[1]
    p = em.tensor(op.outputs[0]).size // (n * m)
    g = a.group
    cg, mg = c // g, m // g
    epi = a.epilogue
    has_bias = len(op.inputs) - epi.residual == 3
    weight = em.tensor(op.inputs[1])
    per_group = [pack_a(wm, em.isa) for wm in weight.data.reshape(g, mg, cg)]
    args = list(op.inputs) + [op.outputs[0]]
    args[1] = em.derived_constant(np.stack(per_group))
    nr = em.isa.nr
    # copy each B panel to unit stride first unless the micro-kernel runs over it only once or twice
    repack = mg > 2 * em.isa.mr
    panel_bytes = cg * nr * 4
    if repack:
        args.append(em.scratch(panel_bytes, per_thread=True))
    fn, b = em.function(op.name, len(args), parallel=True)
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    in_kernel, after = split_epilogue(epi)
    full, rem = divmod(p, nr)
    panels = full + (rem > 0)
    lo, hi = em.thread_range(b, fn, n * g * panels)
    with for_range(b, hi, start=lo, name="task") as t:
        image_group = b.udiv(t, i64(panels))
        gi = b.urem(image_group, i64(g))
        panel = b.urem(t, i64(panels))
        col0 = b.mul(panel, i64(nr))
        x_at = gep(b, x, b.add(b.mul(image_group, i64(cg * p)), col0))
        y_off = b.add(b.mul(image_group, i64(mg * p)), col0)
        w_at = gep(b, wt, b.mul(gi, i64(per_group[0].size)))
        bias_at = gep(b, bias, b.mul(gi, i64(mg))) if bias is not None else None

        def one_panel(n_valid: int) -> None:
            if repack:
                src = em.thread_scratch(b, fn.args[len(op.inputs) + 1], panel_bytes, fn.args[-2])
                em.gemm.pack_panel(b, x_at, p, cg, n_valid, src)
                bop = Operand(True)
            else:
                src, bop = x_at, Operand(False, p)
            em.gemm.panel(b, mg, cg, w_at, Operand(True), src, bop, gep(b, y, y_off), p, n_valid,
                          "bias_row" if bias is not None else "zero", bias_at, in_kernel,
                          gep(b, residual, y_off) if residual is not None else None)
            epilogue_rows(b, after, gep(b, y, y_off), mg, p, n_valid)

        full_or_edge(b, panel, full, nr, rem, one_panel)
    b.ret_void()
    return KernelCall(fn, args)


def _channels_last(em: ModuleEmitter, op: Op) -> KernelCall:
    # the same algorithm, the target's multiply: a bf16 compile on a CPU with AVX512_BF16 runs vdpbf16ps
    # (as Int8Conv picks vpdpbusd where VNNI is there)
    from convc.codegen.kernels.bf16_dense import emit_bf16_conv, native_scheme
    from convc.codegen.kernels.conv_nhwc import emit_implicit_gemm_conv
    bf16 = native_scheme(em, op)
    return emit_bf16_conv(em, op, bf16) if bf16 is not None else emit_implicit_gemm_conv(em, op)


def _depthwise_channels_last(em: ModuleEmitter, op: Op) -> KernelCall:
    from convc.codegen.kernels.depthwise_nhwc import emit_depthwise_channels_last
    return emit_depthwise_channels_last(em, op)


def _direct_nd(em: ModuleEmitter, op: Op) -> KernelCall:
    from convc.codegen.kernels.conv3d import emit_conv3d
    return emit_conv3d(em, op)


def _runtime_weights(em: ModuleEmitter, op: Op) -> KernelCall:
    from convc.codegen.kernels.conv_grad import emit_conv_runtime
    return emit_conv_runtime(em, op)


@emitter(OpKind.CONV)
def emit_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    """The kernel passes/kernel_selection.py chose for this conv; nothing is re-decided here."""
    run = KERNELS.get(op.attrs.algorithm)
    if run is None:
        raise CompileError(f"node {op.name!r} (Conv): no kernel algorithm selected ({op.attrs.algorithm.value}): "
                           f"run passes/kernel_selection.py (select_kernels) on the graph before code generation")
    return run(em, op)


def emit_im2col_gemm_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    """IM2COL_GEMM: per image and group, im2col into kernel scratch (none for a pointwise conv), then
    the micro-kernel GEMM with weights packed at compile time, or plain loops over weights fed at
    run time."""
    a = op.attrs
    xs, ws, ys = (em.tensor(t).shape for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    n, c, h, w = xs
    m = ws[0]
    oh, ow = ys[2:]
    g = a.group
    cg, mg = c // g, m // g
    kdim = cg * a.kernel_shape[0] * a.kernel_shape[1]
    p = oh * ow
    direct = is_pointwise(a)
    epi = a.epilogue
    has_bias = len(op.inputs) - epi.residual == 3
    args = list(op.inputs) + [op.outputs[0]]
    weight = em.tensor(op.inputs[1])
    packed = weight.data is not None
    if packed:  # constant weights: packed once, here, into the micro-kernel's panels, group after group
        per_group = [pack_a(wm, em.isa) for wm in weight.data.reshape(g, mg, kdim)]
        args[1] = em.derived_constant(np.stack(per_group))
        group_stride = per_group[0].size
    if not direct:
        args.append(em.scratch(kdim * p * 4))
    fn, b = em.function(op.name, len(args))
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    col = None if direct else fn.args[-1]
    with for_range(b, n, name="batch") as ni, for_range(b, g, name="group") as gi:
        xg = gep(b, x, b.mul(b.add(b.mul(ni, i64(g)), gi), i64(cg * h * w)))
        yg = gep(b, y, b.mul(b.add(b.mul(ni, i64(g)), gi), i64(mg * p)))
        wg = gep(b, wt, b.mul(gi, i64(mg * kdim)))
        if direct:
            src = xg
        else:
            emit_im2col(b, xg, col, cg, h, w, a, oh, ow)
            src = col
        rg = gep(b, residual, b.mul(b.add(b.mul(ni, i64(g)), gi), i64(mg * p))) if epi.residual else None
        if packed:
            in_kernel, after = split_epilogue(epi)
            em.gemm.gemm(b, mg, p, kdim, gep(b, wt, b.mul(gi, i64(group_stride))), Operand(True), src,
                         Operand(False, p), yg, p, "bias_row" if bias is not None else "zero",
                         gep(b, bias, b.mul(gi, i64(mg))) if bias is not None else None, in_kernel, rg)
            epilogue_pass(b, after, yg, None, mg * p)
        else:  # weights fed at run time: plain loops
            with for_range(b, mg, name="oc") as mi:  # start from the bias (or zero)
                v = load(b, bias, b.add(b.mul(gi, i64(mg)), mi)) if bias is not None else f32(0.0)
                row = gep(b, yg, b.mul(mi, i64(p)))
                with for_range(b, p, name="px") as pi:
                    store(b, v, row, pi)
            matmul_loops(b, mg, p, kdim, wg, (kdim, 1), src, (p, 1), yg, p)
            epilogue_pass(b, epi, yg, rg, mg * p)
    b.ret_void()
    return KernelCall(fn, args)


A = ConvAlgorithm
KERNELS = {
    A.POINTWISE: emit_direct_conv,
    A.IM2COL_FUSED: emit_fused_im2col_conv,
    A.IM2COL_GEMM: emit_im2col_gemm_conv,
    A.DEPTHWISE: emit_depthwise_conv,
    A.IMPLICIT_GEMM_NHWC: _channels_last,
    A.DEPTHWISE_NHWC: _depthwise_channels_last,
    A.WINOGRAD_2X2: emit_winograd_conv, A.WINOGRAD_4X4: emit_winograd_conv,
    A.DIRECT_FEW_CHANNELS: emit_direct_conv_few_channels,
    A.DIRECT_ND: _direct_nd,
    A.RUNTIME_WEIGHTS: _runtime_weights,
}
