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

The forward and dX kernels take their sizes (images, channels, pixels, GEMM trip counts, scratch
offsets) from a size table the entry point passes (``ModuleEmitter.size_table``), so the convs of a
network's stages that differ only in them are one compiled function per kind of window (kernel shape,
strides, pads, dilations, groups, epilogue). What stays compile-time is what the code's shape depends
on: the columns of the last GEMM panel (P mod NR, masked vectors) and the parity of the GEMM's rows,
whose last, partial register tile is one of the micro-kernels for the MR rows of that parity
(``gemm_sized``): 16, 32 and 64 channels (remainders 4, 2, 4 of MR = 6) are one kernel.
"""
from __future__ import annotations

import copy
import dataclasses

from convc.codegen.kernels.blas import Operand, split_epilogue
from convc.codegen.kernels.epilogue import epilogue_pass
from convc.codegen.llvm_utils import FAST, I64, as_i64, for_range, gep, i64, load, memset_zero, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.passes.memory import align
from llvmlite import ir

from convc.errors import CompileError
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs, is_pointwise
from convc.ops.epilogue import Epilogue


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
        # element counts of one image and of one group's share of it
        self.x_image, self.x_group = self.c * self.h * self.w, self.cg * self.h * self.w
        self.y_image, self.y_group = self.m * self.p, self.mg * self.p
        self.w_group = self.mg * self.kd

    SIZES = ("n", "c", "h", "w", "m", "oh", "ow", "cg", "mg", "kd", "p",
             "x_image", "x_group", "y_image", "y_group", "w_group")

    def sizes(self) -> dict[str, int]:
        """The sizes a kernel may read from its size table instead of its code (``at_run_time``);
        the window (kernel shape, strides, pads, dilations) and the groups stay constants."""
        return {k: getattr(self, k) for k in self.SIZES}

    def at_run_time(self, values: dict[str, ir.Value]) -> "Geometry":
        """A copy whose sizes are the run-time values ``values`` (read from the table of ``sizes``)."""
        run = copy.copy(self)
        for k in self.SIZES:
            setattr(run, k, values[k])
        return run


def times(b: ir.IRBuilder, x, y):
    """x * y for ints or i64 values (folded when both are ints)."""
    if isinstance(x, int) and isinstance(y, int):
        return i64(x * y)
    return b.mul(as_i64(b, x), as_i64(b, y))


def _smax(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _smin(b: ir.IRBuilder, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _clip(b: ir.IRBuilder, k: ir.Value, stride: int, dilation: int, pad: int, size, out):
    """(offset, first, end) of the outputs o whose input index o * stride + offset lies in [0, size)
    for kernel tap k: offset = k * dilation - pad, first = ceil(-offset / stride), end = ceil((size -
    offset) / stride), both clipped to [0, out]."""
    size, out = as_i64(b, size), as_i64(b, out)
    off = b.sub(b.mul(k, i64(dilation)), i64(pad))
    lo = _smin(b, b.udiv(b.add(_smax(b, b.neg(off), i64(0)), i64(stride - 1)), i64(stride)), out)
    hi = _smin(b, b.udiv(b.add(_smax(b, b.sub(size, off), i64(0)), i64(stride - 1)), i64(stride)), out)
    return off, lo, _smax(b, hi, lo)


def tap_loops(b: ir.IRBuilder, geo: Geometry, body, rows: tuple | None = None) -> None:
    """for each im2col row (channel ci, tap kh, kw) in ``rows`` = [first, end) (default: all) and the
    (oy, ox) it reads inside the input: body(row, x index, col column index). Loops, not unrolled:
    the IR stays small for any kernel size."""
    a = geo.a
    (sh, sw), (dh, dw) = a.strides, a.dilations
    first, end = rows if rows is not None else (i64(0), as_i64(b, geo.kd))
    with for_range(b, end, start=first, name="row") as row:
        ci = b.udiv(row, i64(geo.kh * geo.kw))
        kh = b.urem(b.udiv(row, i64(geo.kw)), i64(geo.kh))
        kw = b.urem(row, i64(geo.kw))
        oy_off, ylo, yhi = _clip(b, kh, sh, dh, a.pads[0], geo.h, geo.oh)
        ox_off, xlo, xhi = _clip(b, kw, sw, dw, a.pads[1], geo.w, geo.ow)
        with for_range(b, yhi, start=ylo, name="oy") as oy:
            iy = b.add(b.mul(oy, i64(sh)), oy_off)
            x_row = b.mul(b.add(b.mul(ci, as_i64(b, geo.h)), iy), as_i64(b, geo.w))
            p_row = b.mul(oy, as_i64(b, geo.ow))
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
        memset_zero(b, col, times(b, b.sub(rows[1], rows[0]), times(b, ld, 4)))

    def body(row, xi, pi):
        at = b.add(times(b, pi, geo.kd), row) if transposed else b.add(times(b, b.sub(row, first), ld), pi)
        store(b, load(b, x, xi), col, at)
    tap_loops(b, geo, body, rows)


def emit_col2im(b: ir.IRBuilder, geo: Geometry, col: ir.Value, dx: ir.Value) -> None:
    """dx = the sum, over taps, of col[row, p] scattered back to the input position it was read from."""
    memset_zero(b, dx, times(b, geo.x_group, 4))

    def body(row, xi, pi):
        v = load(b, col, b.add(times(b, row, geo.p), pi))
        store(b, b.fadd(load(b, dx, xi), v, flags=FAST), dx, xi)
    tap_loops(b, geo, body)


def emit_transpose(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, rows, cols) -> None:
    """dst[j, i] = src[i, j] for a rows x cols matrix (ints or run-time values)."""
    with for_range(b, rows, name="tr") as i, for_range(b, cols, name="tc") as j:
        store(b, load(b, src, b.add(times(b, i, cols), j)), dst, b.add(times(b, j, rows), i))


def _image_group(b: ir.IRBuilder, ni, gi, per_image, per_group) -> ir.Value:
    """Element offset of (image ni, group gi) in an NC... tensor."""
    return b.add(times(b, ni, per_image), times(b, gi, per_group))


def _image_groups(em: ModuleEmitter, b: ir.IRBuilder, fn: ir.Function, geo: Geometry):
    """This thread's (image, group) pairs: a context manager yielding (ni, gi)."""
    from contextlib import contextmanager

    @contextmanager
    def loop():
        lo, hi = em.thread_range(b, fn, times(b, geo.n, geo.g))
        with for_range(b, hi, start=lo, name="ng") as k:
            yield b.udiv(k, i64(geo.g)), b.urem(k, i64(geo.g))
    return loop()


def _gemm_sizes(em: ModuleEmitter, name: str, rows: int, cols: int) -> dict[str, int]:
    """A GEMM's run-time trip counts for ``gemm_sized``: its whole MR-row tiles, the rows of its last
    tile and its whole NR-column panels."""
    isa = em.gemm.isa
    return {f"{name}_tiles": rows // isa.mr, f"{name}_rest": rows % isa.mr, f"{name}_panels": cols // isa.nr}


def _rests(em: ModuleEmitter, rows: int) -> list[int]:
    """The rows a GEMM's last, partial register tile may have when it has ``rows`` rows: those of
    the same parity (MR is even), so that stages of 16, 32 and 64 rows are one kernel."""
    return [r for r in range(1, em.gemm.isa.mr) if r % 2 == rows % 2]


def gemm_sized(em: ModuleEmitter, b: ir.IRBuilder, s: dict, name: str, rows: int, cols: int, k, pa: ir.Value,
               lda, pb: ir.Value, ldb, pc: ir.Value, ldc, init: str = "zero", bias: ir.Value | None = None,
               epi: Epilogue = Epilogue(), residual: ir.Value | None = None, rests: list[int] | None = None) -> None:
    """GemmEmitter.gemm's C[rows, cols] = init + A @ B over operands read in place, with its sizes
    (K, the leading dimensions, the trip counts ``_gemm_sizes`` put in the table ``s`` under ``name``)
    run-time values. Compile-time: the columns of the last panel (cols mod NR) and the parity of
    ``rows``: the last tile's rows (run-time) pick one of the micro-kernels for the remainders of that
    parity (or of ``rests``). Each element of C is the same micro-kernel sum as GemmEmitter.gemm's, so
    the same bits."""
    gemm = em.gemm
    isa = gemm.isa
    null = ir.Constant(ir.PointerType(), None)
    operand = Operand(False)
    dims = [as_i64(b, v) for v in (k, lda, ldb, ldc)]
    rests = _rests(em, rows) if rests is None else rests

    def tile(col0: ir.Value, n_valid: int, row0: ir.Value, mr: int) -> None:
        mk = gemm.micro_kernel(mr, n_valid, 0, operand, operand, 0, init, epi)
        c_off = b.add(times(b, row0, ldc), col0)
        bias_at = gep(b, bias, row0) if init == "bias_row" else null
        res_at = gep(b, residual, c_off) if epi.residual else null
        b.call(mk, [gep(b, pa, times(b, row0, lda)), gep(b, pb, col0), gep(b, pc, c_off), bias_at, res_at] + dims)

    def column(col0: ir.Value, n_valid: int) -> None:
        tiles, rest = s[f"{name}_tiles"], s.get(f"{name}_rest")
        with for_range(b, tiles, name="ir") as ir_:
            tile(col0, n_valid, b.mul(ir_, i64(isa.mr)), isa.mr)
        if not rests:
            return
        row0 = b.mul(tiles, i64(isa.mr))
        done = b.append_basic_block("rest.end")
        switch = b.switch(rest, done)
        for r in rests:
            case = b.append_basic_block(f"rest{r}")
            switch.add_case(ir.Constant(I64, r), case)
            b.position_at_end(case)
            tile(col0, n_valid, row0, r)
            b.branch(done)
        b.position_at_end(done)

    with for_range(b, s[f"{name}_panels"], name="jr") as jr:
        column(b.mul(jr, i64(isa.nr)), isa.nr)
    if cols % isa.nr:
        column(b.mul(s[f"{name}_panels"], i64(isa.nr)), cols % isa.nr)


def thread_slice(b: ir.IRBuilder, scratch: ir.Value, nbytes: ir.Value, tid: ir.Value) -> ir.Value:
    """This thread's slice of a per-thread scratch argument, ``nbytes`` (aligned) a slice."""
    return b.gep(scratch, [b.mul(tid, nbytes)], inbounds=True, source_etype=ir.IntType(8))


def function_with_sizes(em: ModuleEmitter, op: Op, args: list, sizes: dict[str, int]):
    """The kernel function for ``args`` plus the size table of ``sizes`` (its last argument before the
    thread ids): (fn, builder, the sizes as run-time values by name)."""
    args.append(em.size_table(list(sizes.values())))
    fn, b = em.function(op.name, len(args), parallel=True)
    return fn, b, dict(zip(sizes, em.read_sizes(b, fn.args[len(args) - 1], len(sizes))))


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
    ld = geo.p if geo.direct else col_stride(geo.p)
    col_bytes = geo.kd * ld * 4
    if not geo.direct:
        args.append(em.scratch(col_bytes, per_thread=True))
    fn, b, s = function_with_sizes(em, op, args, geo.sizes() | dict(ld=ld, col_bytes=col_bytes, slice=align(col_bytes))
                                   | _gemm_sizes(em, "y", geo.mg, geo.p))
    run = geo.at_run_time(s)
    tid = fn.args[-2]
    x, w = fn.args[0], fn.args[1]
    bias = fn.args[2] if has_bias else None
    residual = fn.args[len(op.inputs) - 1] if epi.residual else None
    y = fn.args[len(op.inputs)]
    col = None if geo.direct else thread_slice(b, fn.args[len(op.inputs) + 1], s["slice"], tid)
    in_kernel, after = split_epilogue(epi)
    if col is not None:
        memset_zero(b, col, s["col_bytes"])
    with _image_groups(em, b, fn, run) as (ni, gi):
        xg = gep(b, x, _image_group(b, ni, gi, run.x_image, run.x_group))
        y_off = _image_group(b, ni, gi, run.y_image, run.y_group)
        yg = gep(b, y, y_off)
        if geo.direct:
            src = xg
        else:
            emit_im2col(b, run, xg, col, transposed=False, ld=s["ld"], zeroed=True)
            src = col
        gemm_sized(em, b, s, "y", geo.mg, geo.p, run.kd, gep(b, w, b.mul(gi, run.w_group)), run.kd, src, s["ld"], yg,
                   run.p, "bias_row" if has_bias else "zero", gep(b, bias, b.mul(gi, run.mg)) if has_bias else None,
              in_kernel, gep(b, residual, y_off) if epi.residual else None)
        epilogue_pass(b, after, yg, None, run.y_group)
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
    fn, b, s = function_with_sizes(em, op, args, geo.sizes() | dict(wt_floats=wt_floats, slice=align(nbytes))
                                   | _gemm_sizes(em, "dcol", geo.kd, geo.p))
    run = geo.at_run_time(s)
    w, dy, dx = fn.args[:3]
    wt = thread_slice(b, fn.args[3], s["slice"], fn.args[-2])
    dcol = gep(b, wt, s["wt_floats"])
    with for_range(b, geo.g, name="group") as gi:  # W_g^T[Kd, Mg]
        emit_transpose(b, gep(b, w, b.mul(gi, run.w_group)), gep(b, wt, b.mul(gi, run.w_group)), run.mg, run.kd)
    with _image_groups(em, b, fn, run) as (ni, gi):
        dyg = gep(b, dy, _image_group(b, ni, gi, run.y_image, run.y_group))
        dxg = gep(b, dx, _image_group(b, ni, gi, run.x_image, run.x_group))
        wtg = gep(b, wt, b.mul(gi, run.w_group))
        target = dxg if geo.direct else dcol
        gemm_sized(em, b, s, "dcol", geo.kd, geo.p, run.mg, wtg, run.mg, dyg, run.p, target, run.p)
        if not geo.direct:
            emit_col2im(b, run, dcol, dxg)
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
    sizes = back.sizes() | dict(wf_floats=wf_floats, ld=ld, col_bytes=col_floats * 4, slice=align(nbytes))
    fn, b, s = function_with_sizes(em, op, args, sizes | _gemm_sizes(em, "dx", back.mg, back.p))
    run = back.at_run_time(s)
    w, dy, dx = fn.args[:3]
    wf = thread_slice(b, fn.args[3], s["slice"], fn.args[-2])
    col = gep(b, wf, s["wf_floats"])
    # Wf[g][c, m * taps + t] = W[g * Mg + m, c, taps - 1 - t]: flipping both spatial axes reverses the flat tap
    with for_range(b, times(b, run.cg, back.g), name="m") as m, for_range(b, run.mg, name="c") as c:
        gi, ml = b.udiv(m, run.cg), b.urem(m, run.cg)
        src = b.mul(b.add(b.mul(m, run.mg), c), i64(taps))
        dst = b.add(b.mul(b.add(b.mul(gi, run.mg), c), run.kd), b.mul(ml, i64(taps)))
        with for_range(b, taps, name="tap") as t:
            store(b, load(b, w, b.add(src, b.sub(i64(taps - 1), t))), wf, b.add(dst, t))
    memset_zero(b, col, s["col_bytes"])
    with _image_groups(em, b, fn, run) as (ni, gi):
        dyg = gep(b, dy, _image_group(b, ni, gi, run.x_image, run.x_group))
        dxg = gep(b, dx, _image_group(b, ni, gi, run.y_image, run.y_group))
        emit_im2col(b, run, dyg, col, transposed=False, ld=s["ld"], zeroed=True)
        gemm_sized(em, b, s, "dx", back.mg, back.p, run.kd, gep(b, wf, b.mul(gi, run.w_group)), run.kd, col, s["ld"],
                   dxg, run.p)
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
    fn, b, s = function_with_sizes(em, op, args, geo.sizes() | dict(
        rows=rows, cols=cols, units=units, last_unit=units - 1, group_result=rows * cols, ld=ld, dyt=mr * ld,
        slice=mine_bytes, shared=mine_bytes * em.threads // 4, col_bytes=im2col_bytes(geo),
        last_tiles=rem // mr, last_rest=rem % mr, unit_panels=cols // em.isa.nr))
    run = geo.at_run_time(s)
    x, dy, dw, scratch = fn.args[:4]
    mine = thread_slice(b, scratch, s["slice"], fn.args[-2])
    col, dyt = mine, gep(b, mine, s["dyt"])
    acc = gep(b, scratch, s["shared"]) if transpose_dy else dw
    k_lo, k_hi = em.thread_range(b, fn, times(b, s["units"], geo.g))  # this thread's (group, unit) pairs

    def unit(k):
        gi, u = b.udiv(k, s["units"]), b.urem(k, s["units"])
        first = b.mul(u, i64(mr))
        last = b.icmp_unsigned("==", u, s["last_unit"])
        return gi, first, b.select(last, s["rows"], b.add(first, i64(mr))), last

    def result_rows(gi, first):
        return gep(b, acc, b.add(b.mul(gi, s["group_result"]), b.mul(first, s["cols"])))

    with for_range(b, k_hi, start=k_lo, name="zero") as k:  # this thread's rows of the result start at 0
        gi, first, end, _ = unit(k)
        memset_zero(b, result_rows(gi, first), b.mul(b.mul(b.sub(end, first), s["cols"]), i64(4)))

    if not transpose_dy:
        memset_zero(b, col, s["col_bytes"])
    with for_range(b, run.n, name="batch") as ni:
        if transpose_dy:  # dY^T[P, M] of this image, all groups
            emit_transpose(b, gep(b, dy, b.mul(ni, run.y_image)), dyt, run.m, run.p)
        with for_range(b, geo.g, name="group") as gi:
            lo = _smax(b, k_lo, b.mul(gi, s["units"]))
            hi = _smin(b, k_hi, b.mul(b.add(gi, i64(1)), s["units"]))
            xg = gep(b, x, _image_group(b, ni, gi, run.x_image, run.x_group))
            dyg = gep(b, dy, _image_group(b, ni, gi, run.y_image, run.y_group))
            with b.if_then(b.icmp_signed("<", lo, hi)):
                if not transpose_dy:
                    emit_im2col(b, run, xg, col, transposed=True, zeroed=True)
                with for_range(b, hi, start=lo, name="unit") as k:
                    _, first, end, last = unit(k)
                    c_at = result_rows(gi, first)
                    if transpose_dy:  # dW^T rows [first, end) += col rows [first, end) @ dY_g^T
                        emit_im2col(b, run, xg, col, transposed=False, rows=(first, end), ld=s["ld"])
                        a_ptr, a_ld, b_ptr, b_ld = col, s["ld"], gep(b, dyt, b.mul(gi, run.mg)), run.m
                    else:             # dW rows [first, end) += dY rows [first, end) @ colT
                        a_ptr, a_ld, b_ptr, b_ld = gep(b, dyg, b.mul(first, run.p)), run.p, col, run.kd
                    # one register tile of MR rows, or the last unit's rows (run-time, of rows' parity)
                    full = {"u_tiles": i64(1), "u_panels": s["unit_panels"]}
                    partial = {"u_tiles": s["last_tiles"], "u_rest": s["last_rest"], "u_panels": s["unit_panels"]}
                    with b.if_else(last) as (on_last, on_full):
                        for branch, sizes, rests in ((on_last, partial, _rests(em, rows)), (on_full, full, [])):
                            with branch:
                                gemm_sized(em, b, sizes, "u", rows, cols, run.p, a_ptr, a_ld, b_ptr, b_ld, c_at,
                                           s["cols"], "load", rests=rests)
    if transpose_dy:  # this thread's rows of dW^T are columns of dW
        with for_range(b, k_hi, start=k_lo, name="out") as k:
            gi, first, end, _ = unit(k)
            with for_range(b, end, start=first, name="kd") as r, for_range(b, run.mg, name="m") as m:
                v = load(b, acc, b.add(b.mul(gi, s["group_result"]), b.add(b.mul(r, run.mg), m)))
                store(b, v, dw, b.add(b.mul(gi, run.w_group), b.add(b.mul(m, run.kd), r)))
    b.ret_void()
    return KernelCall(fn, args)
