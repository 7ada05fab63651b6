"""Convolution for training: the forward with weights that change every step, dX and dW.

All three are GEMMs on the register-tiled micro-kernel (blas.GemmEmitter) with operands read in
place, per image and group (Mg = M / group output channels, Kd = C/group * kh * kw, P = oh * ow):

    forward  Y[Mg, P]  = W[Mg, Kd] @ col[Kd, P]                     (im2col, W read in place)
    dX       dcol[Kd, P] = W^T[Kd, Mg] @ dY[Mg, P], then col2im     (W transposed once per call)
             or, at stride 1, dX[Cg, HW] = Wf[Cg, Mg*taps] @ im2col(dY)   (W flipped: a forward conv)
    dW       dW[Mg, Kd] += dY[Mg, P] @ colT[P, Kd]                  (im2col written transposed)
             or, at stride 1, one GEMM per tap on shifted views of the input (conv_grad_weight.py)

The im2col / col2im loops run over kernel taps and clip each tap's output range to the input
(computed once per tap), so the inner loops have no bounds checks and vectorize at stride 1; the
padding stays zero from one memset per call. Depthwise convs (one channel per group), whose GEMMs
would be one row wide, run as direct loops over each plane instead (depthwise_grad.py). The windows
are 2-D: 1-D convolutions and their gradients arrive as 2-D ones over a height of 1 (passes/conv1d.py).
"""
from __future__ import annotations

import dataclasses

from convc.codegen.kernels.blas import Operand, split_epilogue
from convc.codegen.kernels.epilogue import epilogue_pass
from convc.codegen.llvm_utils import FAST, for_range, gep, i64, load, memset_zero, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.passes.memory import align
from llvmlite import ir

from convc.errors import CompileError
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs, is_pointwise


class Geometry:
    """A 2-D conv's sizes per image and group, taps, and per-tap output ranges."""

    def __init__(self, a: ConvAttrs, x_shape: tuple[int, ...], w_shape: tuple[int, ...], y_shape: tuple[int, ...]):
        if a.spatial_rank != 2:
            raise CompileError(f"the training conv kernels take 2-D windows (1-D ones are rewritten to 2-D by "
                               f"passes/conv1d.py), got kernel_shape={a.kernel_shape}, X.shape={x_shape}")
        self.a = a
        self.n, self.c = x_shape[:2]
        self.h, self.w = x_shape[2:]
        self.m = w_shape[0]
        self.oh, self.ow = y_shape[2:]
        self.g = self.a.group
        self.cg, self.mg = self.c // self.g, self.m // self.g
        self.kh, self.kw = self.a.kernel_shape
        self.kd = self.cg * self.kh * self.kw
        self.p = self.oh * self.ow
        self.direct = is_pointwise(self.a)
        # one input and one output channel per group: the GEMMs would be one row (or column) wide
        self.depthwise = self.cg == 1 and self.mg == 1


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


def tap_loops(b: ir.IRBuilder, geo: Geometry, body, rows: tuple | None = None) -> None:
    """for each im2col row (channel ci, tap kh, kw) in ``rows`` = [first, end) (default: all) and the
    (oy, ox) it reads inside the input: body(row, x index, col column index). Loops, not unrolled:
    the IR stays small for any kernel size."""
    a = geo.a
    (sh, sw), (dh, dw) = a.strides, a.dilations
    first, end = rows if rows is not None else (i64(0), i64(geo.kd))
    with for_range(b, end, start=first, name="row") as row:
        ci = b.udiv(row, i64(geo.kh * geo.kw))
        kh = b.urem(b.udiv(row, i64(geo.kw)), i64(geo.kh))
        kw = b.urem(row, i64(geo.kw))
        oy_off, ylo, yhi = _clip(b, kh, sh, dh, a.pads[0], geo.h, geo.oh)
        ox_off, xlo, xhi = _clip(b, kw, sw, dw, a.pads[1], geo.w, geo.ow)
        with for_range(b, yhi, start=ylo, name="oy") as oy:
            iy = b.add(b.mul(oy, i64(sh)), oy_off)
            x_row = b.mul(b.add(b.mul(ci, i64(geo.h)), iy), i64(geo.w))
            p_row = b.mul(oy, i64(geo.ow))
            with for_range(b, xhi, start=xlo, name="ox") as ox:
                ix = b.add(b.mul(ox, i64(sw)), ox_off)
                body(row, b.add(x_row, ix), b.add(p_row, ox))


def col_stride(p: int) -> int:
    """The row stride (floats) of an im2col matrix of ``p`` columns that a GEMM reads as its B operand
    in place: whole cache lines, an odd number of them. The micro-kernel walks B down K rows; rows a
    multiple of 4 KiB apart (P = 32x32, 16x16 outputs) all map to the same L1 set and evict each other
    between the row tiles that reuse them."""
    lines = -(-p // 16)
    return 16 * (lines + 1 - lines % 2) if p > 16 else p


def im2col_bytes(geo: Geometry, ld: int | None = None) -> int:
    return geo.kd * (geo.p if ld is None else ld) * 4


def emit_im2col(b: ir.IRBuilder, geo: Geometry, x: ir.Value, col: ir.Value, transposed: bool = False,
                rows: tuple | None = None, ld: int | None = None, zeroed: bool = False) -> None:
    """col[row, p] (or colT[p, row] when ``transposed``) = the input under tap ``row`` at output p,
    zero where the tap falls in the padding; rows ``ld`` floats apart (default P). With ``rows`` =
    [first, end) (not transposed), only those rows, written from the start of ``col``. ``zeroed``:
    ``col`` already holds the zeros of the padding; the whole matrix is written at the same
    positions for every image and group, so a kernel clears its buffer once (``im2col_bytes``)
    rather than once per image."""
    ld = geo.p if ld is None else ld
    if rows is None:
        first = i64(0)
        if not zeroed:
            memset_zero(b, col, im2col_bytes(geo, ld))
    else:
        assert not transposed
        first = rows[0]
        memset_zero(b, col, b.mul(b.sub(rows[1], rows[0]), i64(ld * 4)))

    def body(row, xi, pi):
        at = b.add(b.mul(pi, i64(geo.kd)), row) if transposed else b.add(b.mul(b.sub(row, first), i64(ld)), pi)
        store(b, load(b, x, xi), col, at)
    tap_loops(b, geo, body, rows)


def emit_col2im(b: ir.IRBuilder, geo: Geometry, col: ir.Value, dx: ir.Value) -> None:
    """dx = the sum, over taps, of col[row, p] scattered back to the input position it was read from."""
    memset_zero(b, dx, geo.cg * geo.h * geo.w * 4)

    def body(row, xi, pi):
        v = load(b, col, b.add(b.mul(row, i64(geo.p)), pi))
        store(b, b.fadd(load(b, dx, xi), v, flags=FAST), dx, xi)
    tap_loops(b, geo, body)


def emit_transpose(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, rows: int, cols: int) -> None:
    """dst[j, i] = src[i, j] for a rows x cols matrix."""
    with for_range(b, rows, name="tr") as i, for_range(b, cols, name="tc") as j:
        store(b, load(b, src, b.add(b.mul(i, i64(cols)), j)), dst, b.add(b.mul(j, i64(rows)), i))


def _image_group(b: ir.IRBuilder, ni, gi, per_image: int, per_group: int) -> ir.Value:
    """Element offset of (image ni, group gi) in an NC... tensor."""
    return b.add(b.mul(ni, i64(per_image)), b.mul(gi, i64(per_group)))


def _image_groups(em: ModuleEmitter, b: ir.IRBuilder, fn: ir.Function, geo: Geometry):
    """This thread's (image, group) pairs: a context manager yielding (ni, gi)."""
    from contextlib import contextmanager

    @contextmanager
    def loop():
        lo, hi = em.thread_range(b, fn, geo.n * geo.g)
        with for_range(b, hi, start=lo, name="ng") as k:
            yield b.udiv(k, i64(geo.g)), b.urem(k, i64(geo.g))
    return loop()


def emit_conv_runtime(em: ModuleEmitter, op: Op) -> KernelCall:
    """Conv whose weights are read at run time (training parameters): im2col + micro-kernel GEMM,
    the images split between threads."""
    a = op.attrs
    xs, ws, ys = (em.tensor(t).shape for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    geo = Geometry(a, xs, ws, ys)
    epi = a.epilogue
    has_bias = len(op.inputs) - epi.residual == 3
    if geo.depthwise and epi.empty:
        from convc.codegen.kernels.depthwise_grad import depthwise_forward
        return depthwise_forward(em, op, geo, has_bias)
    args = list(op.inputs) + [op.outputs[0]]
    ld = col_stride(geo.p)
    col_bytes = geo.kd * ld * 4
    if not geo.direct:
        args.append(em.scratch(col_bytes, per_thread=True))
    fn, b = em.function(op.name, len(args), parallel=True)
    tid = fn.args[-2]
    x, w = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    col = None if geo.direct else em.thread_scratch(b, fn.args[len(args) - 1], col_bytes, tid)
    in_kernel, after = split_epilogue(epi)
    if col is not None:
        memset_zero(b, col, col_bytes)
    with _image_groups(em, b, fn, geo) as (ni, gi):
        xg = gep(b, x, _image_group(b, ni, gi, geo.c * geo.h * geo.w, geo.cg * geo.h * geo.w))
        y_off = _image_group(b, ni, gi, geo.m * geo.p, geo.mg * geo.p)
        yg = gep(b, y, y_off)
        if geo.direct:
            src = xg
        else:
            emit_im2col(b, geo, xg, col, transposed=False, ld=ld, zeroed=True)
            src = col
        em.gemm.gemm(b, geo.mg, geo.p, geo.kd, gep(b, w, b.mul(gi, i64(geo.mg * geo.kd))), Operand(False, geo.kd),
                     src, Operand(False, geo.p if geo.direct else ld), yg, geo.p, "bias_row" if has_bias else "zero",
                     gep(b, bias, b.mul(gi, i64(geo.mg))) if has_bias else None, in_kernel,
                     gep(b, residual, y_off) if epi.residual else None)
        epilogue_pass(b, after, yg, None, geo.mg * geo.p)
    b.ret_void()
    return KernelCall(fn, args)


def flipped_conv(geo: Geometry) -> ConvAttrs | None:
    """The forward conv that computes dX of a stride-1 conv from dY: the correlation of dY with the
    kernel flipped in space and with input and output channels swapped, padded by
    dilation * (k - 1) - pad on each side (so its output is X's size); None for a strided conv, a
    pointwise one (its dX is one GEMM already) or pads beyond the kernel's reach."""
    a = geo.a
    if geo.direct or any(s != 1 for s in a.strides):
        return None
    reach = [d * (k - 1) for k, d in zip(a.kernel_shape, a.dilations)] * 2
    pads = tuple(r - p for r, p in zip(reach, a.pads))
    return dataclasses.replace(a, pads=pads) if all(p >= 0 for p in pads) else None


@emitter(OpKind.CONV_GRAD_INPUT)
def emit_conv_grad_input(em: ModuleEmitter, op: Op) -> KernelCall:
    """Per (image, group), split between threads. A stride-1 conv: dX_g = Wf_g @ im2col(dY_g), the
    forward conv's kernel (``flipped_conv``) with Wf_g[c, (m, tap)] = W_g[m, c, flipped tap]: a GEMM
    whose inner dimension is the M * taps of the forward's output channels, written straight into
    dX. Otherwise: dcol = W_g^T @ dY_g (inner dimension M only, a tall result), then col2im. Each
    thread rearranges W itself (it is small) into its own scratch."""
    a = op.attrs
    ws, dys = em.tensor(op.inputs[0]).shape, em.tensor(op.inputs[1]).shape
    geo = Geometry(a.conv, a.shape, ws, dys)
    flipped = flipped_conv(geo)
    if geo.depthwise:
        from convc.codegen.kernels.depthwise_grad import depthwise_forward, depthwise_grad_input
        if flipped is None:
            return depthwise_grad_input(em, op, geo)
        return depthwise_forward(em, op, Geometry(flipped, dys, (geo.c, geo.mg) + ws[2:], a.shape), False, flip=True)
    if flipped is not None:
        return _conv_grad_input_flipped(em, op, Geometry(flipped, dys, (geo.c, geo.mg) + ws[2:], a.shape))
    wt_floats = geo.g * geo.kd * geo.mg
    col_floats = 0 if geo.direct else geo.kd * geo.p
    nbytes = (wt_floats + col_floats) * 4
    args = [op.inputs[0], op.inputs[1], op.outputs[0], em.scratch(nbytes, per_thread=True)]
    fn, b = em.function(op.name, len(args), parallel=True)
    w, dy, dx = fn.args[:3]
    wt = em.thread_scratch(b, fn.args[3], nbytes, fn.args[-2])
    dcol = gep(b, wt, wt_floats)
    with for_range(b, geo.g, name="group") as gi:  # W_g^T[Kd, Mg]
        emit_transpose(b, gep(b, w, b.mul(gi, i64(geo.mg * geo.kd))), gep(b, wt, b.mul(gi, i64(geo.mg * geo.kd))),
                       geo.mg, geo.kd)
    with _image_groups(em, b, fn, geo) as (ni, gi):
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


def _conv_grad_input_flipped(em: ModuleEmitter, op: Op, back: Geometry) -> KernelCall:
    """dX as the forward conv ``back`` of dY (its "input" dY with back.c = M channels, its "output"
    dX with back.m = C channels; back.mg = C/group rows and back.kd = M/group * taps per GEMM)."""
    taps = back.kh * back.kw
    wf_floats = back.g * back.mg * back.kd
    ld = col_stride(back.p)
    col_floats = back.kd * ld
    nbytes = (wf_floats + col_floats) * 4
    args = [op.inputs[0], op.inputs[1], op.outputs[0], em.scratch(nbytes, per_thread=True)]
    fn, b = em.function(op.name, len(args), parallel=True)
    w, dy, dx = fn.args[:3]
    wf = em.thread_scratch(b, fn.args[3], nbytes, fn.args[-2])
    col = gep(b, wf, wf_floats)
    # Wf[g][c, m * taps + t] = W[g * Mg + m, c, taps - 1 - t]: flipping both spatial axes reverses the flat tap
    with for_range(b, back.g * back.cg, name="m") as m, for_range(b, back.mg, name="c") as c:
        gi, ml = b.udiv(m, i64(back.cg)), b.urem(m, i64(back.cg))
        src = b.mul(b.add(b.mul(m, i64(back.mg)), c), i64(taps))
        dst = b.add(b.mul(b.add(b.mul(gi, i64(back.mg)), c), i64(back.kd)), b.mul(ml, i64(taps)))
        with for_range(b, taps, name="tap") as t:
            store(b, load(b, w, b.add(src, b.sub(i64(taps - 1), t))), wf, b.add(dst, t))
    memset_zero(b, col, col_floats * 4)
    with _image_groups(em, b, fn, back) as (ni, gi):
        dyg = gep(b, dy, _image_group(b, ni, gi, back.c * back.h * back.w, back.cg * back.h * back.w))
        dxg = gep(b, dx, _image_group(b, ni, gi, back.m * back.p, back.mg * back.p))
        emit_im2col(b, back, dyg, col, transposed=False, ld=ld, zeroed=True)
        em.gemm.gemm(b, back.mg, back.p, back.kd, gep(b, wf, b.mul(gi, i64(back.mg * back.kd))),
                     Operand(False, back.kd), col, Operand(False, ld), dxg, back.p, "zero")
    b.ret_void()
    return KernelCall(fn, args)


@emitter(OpKind.CONV_GRAD_WEIGHT)
def emit_conv_grad_weight(em: ModuleEmitter, op: Op) -> KernelCall:
    """dW = sum over images of dY[Mg, P] @ colT[P, Kd]. At stride 1 with half a vector of channels or
    more per group: one GEMM per tap and no patches (conv_grad_weight.py). Otherwise in one of two
    layouts (a GEMM operand must be read as rows):

    - fewer output channels than taps (Mg < Kd): dY is transposed per image and
      dW^T[Kd, Mg] = col[Kd, P] @ dY^T[P, Mg] accumulates, transposed into dW at the end;
    - otherwise the patches are written transposed (colT, strided stores) and dW accumulates.

    Threads split the rows of the accumulated matrix (Kd, resp. Mg, per group) in blocks of the
    micro-kernel's MR rows: each owns its rows of the result over every image, so no reduction
    between threads is needed; in the first layout a thread builds only its own rows of the patches."""
    a = op.attrs
    xs, dys = em.tensor(op.inputs[0]).shape, em.tensor(op.inputs[1]).shape
    geo = Geometry(a.conv, xs, a.shape, dys)
    if geo.depthwise:
        from convc.codegen.kernels.depthwise_grad import depthwise_grad_weight
        return depthwise_grad_weight(em, op, geo)
    from convc.codegen.kernels.conv_grad_weight import emit_grad_weight_shifted, shifted_fits
    if shifted_fits(geo, em.isa.width):
        return emit_grad_weight_shifted(em, op, geo)
    mr = em.isa.mr
    transpose_dy = geo.mg < geo.kd
    rows = geo.kd if transpose_dy else geo.mg        # rows of the accumulated matrix, per group
    cols = geo.mg if transpose_dy else geo.kd
    units = -(-rows // mr)
    rem = rows - (units - 1) * mr                    # rows of the last unit
    # per thread: patches (one unit's rows of col, or the whole colT) and dY^T of an image
    ld = col_stride(geo.p)  # of the unit's rows of the patches (the GEMM's A, MR rows read side by side)
    mine_f = (mr * ld + geo.p * geo.m) if transpose_dy else geo.kd * geo.p
    mine_bytes = align(mine_f * 4)
    shared_f = geo.g * rows * cols if transpose_dy else 0  # dW^T, shared (threads own disjoint rows)
    args = [op.inputs[0], op.inputs[1], op.outputs[0], em.scratch(mine_bytes * em.threads + shared_f * 4)]
    fn, b = em.function(op.name, len(args), parallel=True)
    x, dy, dw, scratch = fn.args[:4]
    mine = em.thread_scratch(b, scratch, mine_bytes, fn.args[-2])
    col, dyt = mine, gep(b, mine, mr * ld)
    acc = gep(b, scratch, mine_bytes * em.threads // 4) if transpose_dy else dw
    k_lo, k_hi = em.thread_range(b, fn, geo.g * units)  # this thread's (group, unit) pairs

    def unit(k):
        gi, u = b.udiv(k, i64(units)), b.urem(k, i64(units))
        first = b.mul(u, i64(mr))
        last = b.icmp_unsigned("==", u, i64(units - 1))
        return gi, first, b.select(last, i64(rows), b.add(first, i64(mr))), last

    def result_rows(gi, first):
        return gep(b, acc, b.add(b.mul(gi, i64(rows * cols)), b.mul(first, i64(cols))))

    with for_range(b, k_hi, start=k_lo, name="zero") as k:  # this thread's rows of the result start at 0
        gi, first, end, _ = unit(k)
        memset_zero(b, result_rows(gi, first), b.mul(b.mul(b.sub(end, first), i64(cols)), i64(4)))

    if not transpose_dy:
        memset_zero(b, col, im2col_bytes(geo))
    with for_range(b, geo.n, name="batch") as ni:
        if transpose_dy:  # dY^T[P, M] of this image, all groups
            emit_transpose(b, gep(b, dy, b.mul(ni, i64(geo.m * geo.p))), dyt, geo.m, geo.p)
        with for_range(b, geo.g, name="group") as gi:
            lo = _smax(b, k_lo, b.mul(gi, i64(units)))
            hi = _smin(b, k_hi, b.mul(b.add(gi, i64(1)), i64(units)))
            xg = gep(b, x, _image_group(b, ni, gi, geo.c * geo.h * geo.w, geo.cg * geo.h * geo.w))
            dyg = gep(b, dy, _image_group(b, ni, gi, geo.m * geo.p, geo.mg * geo.p))
            with b.if_then(b.icmp_signed("<", lo, hi)):
                if not transpose_dy:
                    emit_im2col(b, geo, xg, col, transposed=True, zeroed=True)
                with for_range(b, hi, start=lo, name="unit") as k:
                    _, first, end, last = unit(k)
                    c_at = result_rows(gi, first)
                    if transpose_dy:  # dW^T rows [first, end) += col rows [first, end) @ dY_g^T
                        emit_im2col(b, geo, xg, col, transposed=False, rows=(first, end), ld=ld)
                        a_ptr, a_ld, b_ptr, b_ld = col, ld, gep(b, dyt, b.mul(gi, i64(geo.mg))), geo.m
                    else:             # dW rows [first, end) += dY rows [first, end) @ colT
                        a_ptr, a_ld, b_ptr, b_ld = gep(b, dyg, b.mul(first, i64(geo.p))), geo.p, col, geo.kd
                    with b.if_else(last) as (on_last, on_full):
                        for branch, m in ((on_last, rem), (on_full, mr)):
                            with branch:
                                em.gemm.gemm(b, m, cols, geo.p, a_ptr, Operand(False, a_ld), b_ptr,
                                             Operand(False, b_ld), c_at, cols, "load")
    if transpose_dy:  # this thread's rows of dW^T are columns of dW
        with for_range(b, k_hi, start=k_lo, name="out") as k:
            gi, first, end, _ = unit(k)
            with for_range(b, end, start=first, name="kd") as r, for_range(b, geo.mg, name="m") as m:
                v = load(b, acc, b.add(b.mul(gi, i64(rows * geo.mg)), b.add(b.mul(r, i64(geo.mg)), m)))
                store(b, v, dw, b.add(b.mul(gi, i64(geo.mg * geo.kd)), b.add(b.mul(m, i64(geo.kd)), r)))
    b.ret_void()
    return KernelCall(fn, args)
