"""Convolution as im2col into kernel scratch, then the matrix-product loop nest per group.

1-D convolutions run as 2-D ones with a height of 1; a 1x1, stride-1, unpadded conv skips im2col."""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.codegen.llvm_utils import f32, for_range, gep, i64, in_range, load, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.epilogue import epilogue_pass
from convc.codegen.kernels.blas import Operand, pack_a, split_epilogue
from convc.codegen.kernels.gemm import matmul_loops


def as_2d(a: ConvAttrs) -> ConvAttrs:
    if a.spatial_rank == 2:
        return a
    if a.spatial_rank == 1:
        return ConvAttrs((1,) + a.kernel_shape, (1,) + a.strides, (0, a.pads[0], 0, a.pads[1]),
                         (1,) + a.dilations, a.group)
    raise NotImplementedError(f"{a.spatial_rank}-D convolution")


def spatial_2d(shape: tuple[int, ...]) -> tuple[int, int]:
    return (1, shape[2]) if len(shape) == 3 else (shape[2], shape[3])


def im2col_row(b: ir.IRBuilder, x: ir.Value, col: ir.Value, row: ir.Value, c: int, h: int, w: int,
               a: ConvAttrs, oh: int, ow: int) -> None:
    """One row of the im2col matrix: col[row, y*OW + x] for row = (ci*KH + kh)*KW + kw, the input
    tap of every output pixel, zero where it falls in the padding."""
    kh_, kw_ = a.kernel_shape
    sh, sw = a.strides
    dh, dw = a.dilations
    pt, pl = a.pads[0], a.pads[1]
    ci = b.udiv(row, i64(kh_ * kw_))
    kh = b.urem(b.udiv(row, i64(kw_)), i64(kh_))
    kw = b.urem(row, i64(kw_))
    with for_range(b, oh, name="oy") as oy:
        iy = b.add(b.sub(b.mul(oy, i64(sh)), i64(pt)), b.mul(kh, i64(dh)))
        y_ok = in_range(b, iy, 0, h)
        x_row = b.mul(b.add(b.mul(ci, i64(h)), iy), i64(w))
        col_row = b.add(b.mul(row, i64(oh * ow)), b.mul(oy, i64(ow)))
        with for_range(b, ow, name="ox") as ox:
            ix = b.add(b.sub(b.mul(ox, i64(sw)), i64(pl)), b.mul(kw, i64(dw)))
            ok = b.and_(y_ok, in_range(b, ix, 0, w))
            # clamp the address so the load never leaves the input
            addr = b.select(ok, b.add(x_row, ix), i64(0))
            v = b.select(ok, load(b, x, addr), f32(0.0))
            store(b, v, col, b.add(col_row, ox))


def emit_im2col(b: ir.IRBuilder, x: ir.Value, col: ir.Value, c: int, h: int, w: int,
                a: ConvAttrs, oh: int, ow: int) -> None:
    """The whole im2col matrix [C*KH*KW, OH*OW] of one image."""
    with for_range(b, c * a.kernel_shape[0] * a.kernel_shape[1], name="row") as row:
        im2col_row(b, x, col, row, c, h, w, a, oh, ow)


def emit_direct_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    """A 1x1, stride-1, unpadded conv with constant weights: Y[n, g] = W[g] @ X[n, g] per column
    panel, the panels of every image and group split between threads."""
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
    fn, b = em.function(op.name, len(args), parallel=True)
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    in_kernel, after = split_epilogue(epi)
    nr = em.isa.nr
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
            em.gemm.panel(b, mg, cg, w_at, Operand(True), x_at, Operand(False, p), gep(b, y, y_off), p, n_valid,
                          "bias_row" if bias is not None else "zero", bias_at, in_kernel,
                          gep(b, residual, y_off) if residual is not None else None)
            if not after.empty:
                for row in range(mg):
                    epilogue_pass(b, after, gep(b, y, b.add(y_off, i64(row * p))), None, n_valid)

        if rem and full:
            with b.if_else(b.icmp_unsigned("<", panel, i64(full))) as (whole, edge):
                with whole:
                    one_panel(nr)
                with edge:
                    one_panel(rem)
        else:
            one_panel(nr if not rem else rem)
    b.ret_void()
    return KernelCall(fn, args)


@emitter(OpKind.CONV)
def emit_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    a = as_2d(op.attrs)
    if a.kernel_shape == (1, 1) and a.strides == (1, 1) and not any(a.pads) and \
            em.tensor(op.inputs[1]).data is not None:
        return emit_direct_conv(em, op)
    xs, ws, ys = (em.tensor(t).shape for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    n, c = xs[:2]
    h, w = spatial_2d(xs)
    m = ws[0]
    oh, ow = spatial_2d(ys)
    g = a.group
    cg, mg = c // g, m // g
    kdim = cg * a.kernel_shape[0] * a.kernel_shape[1]
    p = oh * ow
    direct = a.kernel_shape == (1, 1) and a.strides == (1, 1) and not any(a.pads)
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
    with for_range(b, n, name="batch") as ni:
        with for_range(b, g, name="group") as gi:
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
