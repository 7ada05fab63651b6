"""Convolution for training: the forward with weights that change every step, dX and dW.

All three are GEMMs on the register-tiled micro-kernel (blas.GemmEmitter) with operands read in
place, per image and group (Mg = M / group output channels, Kd = C/group * kh * kw, P = oh * ow):

    forward  Y[Mg, P]  = W[Mg, Kd] @ col[Kd, P]                     (im2col, W read in place)
    dX       dcol[Kd, P] = W^T[Kd, Mg] @ dY[Mg, P], then col2im     (W transposed once per call)
    dW       dW[Mg, Kd] += dY[Mg, P] @ colT[P, Kd]                  (im2col written transposed)

The im2col / col2im loops run over kernel taps and clip each tap's output range to the input
(computed once per tap), so the inner loops have no bounds checks and vectorize at stride 1; the
padding stays zero from one memset. 1-D convolutions run as 2-D with a height of 1.
"""
from __future__ import annotations

from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.codegen.llvm_utils import FAST, for_range, gep, i64, load, memset_zero, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.blas import Operand, split_epilogue
from convc.codegen.kernels.conv import as_2d, spatial_2d
from convc.codegen.kernels.epilogue import epilogue_pass


class Geometry:
    """The 2-D view of a conv: sizes per image and group, taps, and per-tap output ranges."""

    def __init__(self, a: ConvAttrs, x_shape: tuple[int, ...], w_shape: tuple[int, ...], y_shape: tuple[int, ...]):
        self.a = as_2d(a)
        self.n, self.c = x_shape[:2]
        self.h, self.w = spatial_2d(x_shape)
        self.m = w_shape[0]
        self.oh, self.ow = spatial_2d(y_shape)
        self.g = self.a.group
        self.cg, self.mg = self.c // self.g, self.m // self.g
        self.kh, self.kw = self.a.kernel_shape
        self.kd = self.cg * self.kh * self.kw
        self.p = self.oh * self.ow
        self.direct = self.a.kernel_shape == (1, 1) and self.a.strides == (1, 1) and not any(self.a.pads)



def _smax(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _smin(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _clip(b: ir.IRBuilder, k: ir.Value, stride: int, dilation: int, pad: int, size: int, out: int):
    """(offset, first, end) of the outputs o whose input index o * stride + offset lies in [0, size)
    for kernel tap k: offset = k * dilation - pad, first = ceil(-offset / stride), end = ceil((size -
    offset) / stride), both clipped to [0, out]."""
    off = b.sub(b.mul(k, i64(dilation)), i64(pad))
    lo = _smin(b, b.udiv(b.add(_smax(b, b.neg(off), i64(0)), i64(stride - 1)), i64(stride)), i64(out))
    hi = _smin(b, b.udiv(b.add(_smax(b, b.sub(i64(size), off), i64(0)), i64(stride - 1)), i64(stride)), i64(out))
    return off, lo, _smax(b, hi, lo)


def _tap_loops(b: ir.IRBuilder, geo: Geometry, body) -> None:
    """for channel ci, tap (kh, kw) and the (oy, ox) it reads inside the input:
    body(row, x index, col column index). Loops, not unrolled: the IR stays small for any kernel."""
    a = geo.a
    (sh, sw), (dh, dw) = a.strides, a.dilations
    with for_range(b, geo.cg, name="ci") as ci:
        with for_range(b, geo.kh, name="kh") as kh:
            oy_off, ylo, yhi = _clip(b, kh, sh, dh, a.pads[0], geo.h, geo.oh)
            with for_range(b, geo.kw, name="kw") as kw:
                ox_off, xlo, xhi = _clip(b, kw, sw, dw, a.pads[1], geo.w, geo.ow)
                row = b.add(b.mul(b.add(b.mul(ci, i64(geo.kh)), kh), i64(geo.kw)), kw)
                with for_range(b, yhi, start=ylo, name="oy") as oy:
                    iy = b.add(b.mul(oy, i64(sh)), oy_off)
                    x_row = b.mul(b.add(b.mul(ci, i64(geo.h)), iy), i64(geo.w))
                    p_row = b.mul(oy, i64(geo.ow))
                    with for_range(b, xhi, start=xlo, name="ox") as ox:
                        ix = b.add(b.mul(ox, i64(sw)), ox_off)
                        body(row, b.add(x_row, ix), b.add(p_row, ox))


def emit_im2col(b: ir.IRBuilder, geo: Geometry, x: ir.Value, col: ir.Value, transposed: bool) -> None:
    """col[row, p] (or colT[p, row] when ``transposed``) = the input under tap ``row`` at output p."""
    memset_zero(b, col, geo.kd * geo.p * 4)

    def body(row, xi, pi):
        at = b.add(b.mul(pi, i64(geo.kd)), row) if transposed else b.add(b.mul(row, i64(geo.p)), pi)
        store(b, load(b, x, xi), col, at)
    _tap_loops(b, geo, body)


def emit_col2im(b: ir.IRBuilder, geo: Geometry, col: ir.Value, dx: ir.Value) -> None:
    """dx = the sum, over taps, of col[row, p] scattered back to the input position it was read from."""
    memset_zero(b, dx, geo.cg * geo.h * geo.w * 4)

    def body(row, xi, pi):
        v = load(b, col, b.add(b.mul(row, i64(geo.p)), pi))
        store(b, b.fadd(load(b, dx, xi), v, flags=FAST), dx, xi)
    _tap_loops(b, geo, body)


def emit_transpose(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, rows: int, cols: int) -> None:
    """dst[j, i] = src[i, j] for a rows x cols matrix."""
    with for_range(b, rows, name="tr") as i:
        with for_range(b, cols, name="tc") as j:
            store(b, load(b, src, b.add(b.mul(i, i64(cols)), j)), dst, b.add(b.mul(j, i64(rows)), i))


def _image_group(b: ir.IRBuilder, ni, gi, per_image: int, per_group: int) -> ir.Value:
    """Element offset of (image ni, group gi) in an NC... tensor."""
    return b.add(b.mul(ni, i64(per_image)), b.mul(gi, i64(per_group)))


def emit_conv_runtime(em: ModuleEmitter, op: Op) -> KernelCall:
    """Conv whose weights are read at run time (training parameters): im2col + micro-kernel GEMM."""
    a = op.attrs
    xs, ws, ys = (em.tensor(t).shape for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    geo = Geometry(a, xs, ws, ys)
    epi = a.epilogue
    has_bias = len(op.inputs) - epi.residual == 3
    args = list(op.inputs) + [op.outputs[0]]
    if not geo.direct:
        args.append(em.scratch(geo.kd * geo.p * 4))
    fn, b = em.function(op.name, len(args))
    x, w = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    col = None if geo.direct else fn.args[-1]
    in_kernel, after = split_epilogue(epi)
    with for_range(b, geo.n, name="batch") as ni:
        with for_range(b, geo.g, name="group") as gi:
            xg = gep(b, x, _image_group(b, ni, gi, geo.c * geo.h * geo.w, geo.cg * geo.h * geo.w))
            y_off = _image_group(b, ni, gi, geo.m * geo.p, geo.mg * geo.p)
            yg = gep(b, y, y_off)
            if geo.direct:
                src = xg
            else:
                emit_im2col(b, geo, xg, col, transposed=False)
                src = col
            em.gemm.gemm(b, geo.mg, geo.p, geo.kd, gep(b, w, b.mul(gi, i64(geo.mg * geo.kd))), Operand(False, geo.kd),
                         src, Operand(False, geo.p), yg, geo.p, "bias_row" if has_bias else "zero",
                         gep(b, bias, b.mul(gi, i64(geo.mg))) if has_bias else None, in_kernel,
                         gep(b, residual, y_off) if epi.residual else None)
            epilogue_pass(b, after, yg, None, geo.mg * geo.p)
    b.ret_void()
    return KernelCall(fn, args)


@emitter(OpKind.CONV_GRAD_INPUT)
def emit_conv_grad_input(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    ws, dys = em.tensor(op.inputs[0]).shape, em.tensor(op.inputs[1]).shape
    geo = Geometry(a.conv, a.shape, ws, dys)
    wt_floats = geo.g * geo.kd * geo.mg
    col_floats = 0 if geo.direct else geo.kd * geo.p
    args = [op.inputs[0], op.inputs[1], op.outputs[0], em.scratch((wt_floats + col_floats) * 4)]
    fn, b = em.function(op.name, len(args))
    w, dy, dx, scratch = fn.args
    wt = scratch
    dcol = gep(b, scratch, wt_floats)
    with for_range(b, geo.g, name="group") as gi:  # W_g^T[Kd, Mg], once per call
        emit_transpose(b, gep(b, w, b.mul(gi, i64(geo.mg * geo.kd))), gep(b, wt, b.mul(gi, i64(geo.mg * geo.kd))),
                       geo.mg, geo.kd)
    with for_range(b, geo.n, name="batch") as ni:
        with for_range(b, geo.g, name="group") as gi:
            dyg = gep(b, dy, _image_group(b, ni, gi, geo.m * geo.p, geo.mg * geo.p))
            dxg = gep(b, dx, _image_group(b, ni, gi, geo.c * geo.h * geo.w, geo.cg * geo.h * geo.w))
            wtg = gep(b, wt, b.mul(gi, i64(geo.mg * geo.kd)))
            target = dxg if geo.direct else dcol
            em.gemm.gemm(b, geo.kd, geo.p, geo.mg, wtg, Operand(False, geo.mg), dyg, Operand(False, geo.p),
                         target, geo.p, "zero")
            if not geo.direct:
                emit_col2im(b, geo, dcol, dxg)
    b.ret_void()
    return KernelCall(fn, args)


@emitter(OpKind.CONV_GRAD_WEIGHT)
def emit_conv_grad_weight(em: ModuleEmitter, op: Op) -> KernelCall:
    """dW = sum over images of dY[Mg, P] @ colT[P, Kd], in one of two layouts: a GEMM operand must be
    read as rows, so either the patches are written transposed (strided stores, Kd x P of them) or
    dY is transposed (Mg x P) and dW^T[Kd, Mg] = col[Kd, P] @ dY^T[P, Mg] is accumulated and
    transposed at the end. The second moves less when there are fewer output channels than taps."""
    a = op.attrs
    xs, dys = em.tensor(op.inputs[0]).shape, em.tensor(op.inputs[1]).shape
    geo = Geometry(a.conv, xs, a.shape, dys)
    transpose_dy = geo.mg < geo.kd
    col_f = geo.kd * geo.p if not (geo.direct and transpose_dy) else 0
    dyt_f = geo.p * geo.mg if transpose_dy else 0
    dwt_f = geo.g * geo.kd * geo.mg if transpose_dy else 0
    args = [op.inputs[0], op.inputs[1], op.outputs[0], em.scratch(max(col_f + dyt_f + dwt_f, 1) * 4)]
    fn, b = em.function(op.name, len(args))
    x, dy, dw, scratch = fn.args
    col, dyt, dwt = scratch, gep(b, scratch, col_f), gep(b, scratch, col_f + dyt_f)
    memset_zero(b, dwt if transpose_dy else dw, geo.m * geo.kd * 4)
    with for_range(b, geo.n, name="batch") as ni:
        with for_range(b, geo.g, name="group") as gi:
            xg = gep(b, x, _image_group(b, ni, gi, geo.c * geo.h * geo.w, geo.cg * geo.h * geo.w))
            dyg = gep(b, dy, _image_group(b, ni, gi, geo.m * geo.p, geo.mg * geo.p))
            if transpose_dy:
                if geo.direct:
                    src = xg
                else:
                    emit_im2col(b, geo, xg, col, transposed=False)
                    src = col
                emit_transpose(b, dyg, dyt, geo.mg, geo.p)
                em.gemm.gemm(b, geo.kd, geo.mg, geo.p, src, Operand(False, geo.p), dyt, Operand(False, geo.mg),
                             gep(b, dwt, b.mul(gi, i64(geo.kd * geo.mg))), geo.mg, "load")
            else:
                emit_im2col(b, geo, xg, col, transposed=True)
                em.gemm.gemm(b, geo.mg, geo.kd, geo.p, dyg, Operand(False, geo.p), col, Operand(False, geo.kd),
                             gep(b, dw, b.mul(gi, i64(geo.mg * geo.kd))), geo.kd, "load")
    if transpose_dy:
        with for_range(b, geo.g, name="group") as gi:
            emit_transpose(b, gep(b, dwt, b.mul(gi, i64(geo.kd * geo.mg))),
                           gep(b, dw, b.mul(gi, i64(geo.mg * geo.kd))), geo.kd, geo.mg)
    b.ret_void()
    return KernelCall(fn, args)
