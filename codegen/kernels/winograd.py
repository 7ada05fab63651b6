"""Winograd convolution F(m x m, 3 x 3) for channels-last 3x3 stride-1 convs (WINOGRAD_2X2, WINOGRAD_4X4).

Each m x m block of output pixels (a tile) is computed from a t x t input patch, t = m + 2:

    Y_tile = A^T [ sum_c (G g_mc G^T) * (B^T d_c B) ] A          (* elementwise, over the t x t positions)

so the 9 multiplies per output pixel and input channel of the direct conv become t^2 / m^2 (4 for
F(2x2), 2.25 for F(4x4)). Per position xi of the t x t patch the sum over c is a matrix product
over all tiles at once, M_xi[tiles, M] = V_xi[tiles, C] @ U_xi[C, M], run by the GEMM micro-kernel
(blas.py GemmEmitter) with U_xi = (G g G^T)[xi] transformed at compile time in float64, rounded
to float32 and packed into its NR-wide panels.

A thread takes a block of tiles at a time: the input transform writes V for the block into its
scratch (t^2 matrices of block x C floats), the t^2 GEMMs write M (block x M each), the output
transform reads M back, adds the bias and applies the conv's epilogue (residual add, activation)
while it stores the pixels. Sized to stay in L2 between the steps. Tiles past the bottom or right
edge read zeros for input pixels outside the image (that is the padding) and store only the
pixels inside the output.

Numerics (../shared/KERNELS-precision.md, and tests/codegen/test_winograd.py): F(2x2) error is that
of the direct conv; F(4x4) is ~10-30x larger (1e-5 relative to the largest output on a 256-channel
layer), because its transforms multiply by 4, 5 and 8 and divide by 6 and 24.
"""
from __future__ import annotations

import contextlib
from fractions import Fraction

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops.conv import ConvAlgorithm, split_inputs
from convc.codegen.llvm_utils import I64, PTR, VOID, as_i64, constant, for_range, gep, i64, memset_zero
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.codegen.kernels.blas import Isa, Operand
from convc.codegen.kernels.activations import UNARY, VECTOR_UNARY
from convc.codegen.kernels.conv_nhwc import conv_kernel
from convc.codegen.kernels.epilogue import apply_epilogue


def _fractions(rows: list[list]) -> np.ndarray:
    return np.array([[Fraction(v) for v in row] for row in rows], dtype=object)


# (B^T, G, A^T) per output tile size m; points 0, +-1, (+-2), infinity (Lavin & Gray 2016)
TRANSFORMS: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {
    2: (_fractions([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        _fractions([[1, 0, 0], ["1/2", "1/2", "1/2"], ["1/2", "-1/2", "1/2"], [0, 0, 1]]),
        _fractions([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (_fractions([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        _fractions([["1/4", 0, 0], ["-1/6", "-1/6", "-1/6"], ["-1/6", "1/6", "-1/6"],
                    ["1/24", "1/12", "1/6"], ["1/24", "-1/12", "1/6"], [0, 0, 1]]),
        _fractions([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])),
}
TILE = {ConvAlgorithm.WINOGRAD_2X2: 2, ConvAlgorithm.WINOGRAD_4X4: 4}  # output tile size m of each algorithm
TILE_BYTES = 768 * 1024  # a thread's V and M scratch for one block of tiles (L2 is 1 MiB per core here)


def _transformed(w: np.ndarray, m: int) -> np.ndarray:
    """G g G^T of every (output, input) channel pair of W [M, C, 3, 3] in float64, as [t*t, C, M]:
    one GEMM, vec(G g G^T) = (G kron G) vec(g), [t*t, 9] @ [9, C*M] (ResNet-101's 28 Winograd layers
    took 1.5 s through einsum). W is transposed on the way in, where it is 16/9 (F(2x2)) or 4 times
    (F(4x4)) smaller than U: the GEMM writes U in its final order (transposing U after the GEMM was
    most of the packing time)."""
    _, g, _ = TRANSFORMS[m]
    gf = g.astype(np.float64)
    mo, c = w.shape[:2]
    wt = w.reshape(mo, c, 9).transpose(2, 1, 0).astype(np.float64).reshape(9, c * mo)
    return (np.kron(gf, gf) @ wt).reshape((m + 2) ** 2, c, mo)


def transform_weights(w: np.ndarray, m: int) -> np.ndarray:
    """W [M, C, 3, 3] -> U [t*t, C, M] = G g G^T per (output, input) channel, in float64, then float32."""
    with _one_blas_thread():
        return _transformed(w, m).astype(np.float32)


def packed_weights(w: np.ndarray, m: int, isa: Isa) -> np.ndarray:
    """pack_b(transform_weights(w, m)) bit for bit, [t*t][panels][C][NR], one panel of NR output
    channels at a time: that panel's columns of the [t*t, 9] @ [9, C*M] float64 GEMM (the same sums,
    element by element, as the whole GEMM) are rounded to float32 straight into the packed layout
    while they are still in cache (the whole float64 U of a 512x512 layer is 19 MB). OpenBLAS runs
    on one thread here: with its threads these small GEMMs spent 3-8x the CPU in its threads'
    spin-waiting (a compile shares the cores with LLVM's workers), and its threaded GEMM rounds a
    few elements in a million differently, so the weights depended on the machine's core count."""
    mo, c = w.shape[:2]
    nr = isa.nr
    panels = -(-mo // nr)
    out = np.empty(((m + 2) ** 2, panels, c, nr), dtype=np.float32)
    with _one_blas_thread():
        for p in range(panels):
            lo, hi = p * nr, min((p + 1) * nr, mo)
            out[:, p, :, :hi - lo] = _transformed(w[lo:hi], m)
    out[:, panels - 1, :, mo - (panels - 1) * nr:] = 0
    return out


def _one_blas_thread():
    """A context in which numpy's BLAS runs on the calling thread only (threadpoolctl), or nothing
    when threadpoolctl is not installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def reference(x: np.ndarray, w: np.ndarray, pads: tuple[int, int, int, int], m: int) -> np.ndarray:
    """The Winograd conv in numpy (float64 transforms of float32 data), NHWC in and out: what the
    kernel computes, for tests. pads: (top, left, bottom, right)."""
    bt, _, at = (t.astype(np.float64) for t in TRANSFORMS[m])
    n, h, wd, c = x.shape
    pt, pl, pb, pr = pads
    oh, ow = h + pt + pb - 2, wd + pl + pr - 2
    th, tw = -(-oh // m), -(-ow // m)
    t = m + 2
    xp = np.zeros((n, th * m + 2, tw * m + 2, c))
    xp[:, pt:pt + h, pl:pl + wd] = x[:, :th * m + 2 - pt, :tw * m + 2 - pl]
    u = transform_weights(w, m).astype(np.float64).reshape(t, t, c, -1)
    y = np.zeros((n, th * m, tw * m, w.shape[0]))
    for i in range(th):
        for j in range(tw):
            d = xp[:, i * m:i * m + t, j * m:j * m + t]                    # n, t, t, c
            v = np.einsum("ai,nijc,bj->nabc", bt, d, bt)
            mm = np.einsum("nabc,abcm->nabm", v, u)
            y[:, i * m:(i + 1) * m, j * m:(j + 1) * m] = np.einsum("ia,nabm,jb->nijm", at, mm, at)
    return y[:, :oh, :ow].astype(np.float32)


def _combine(b: ir.IRBuilder, row: np.ndarray, vals: list[ir.Value]) -> ir.Value:
    """sum_j row[j] * vals[j] with the constant coefficients folded: +-1 an add or subtract, 0 skipped.
    Strict IEEE order (no fast-math flags): LLVM then cannot contract or reassociate differently in
    differently shaped kernels, so every thread count gives the same bits."""
    acc = None
    for coef, v in zip(row, vals):
        if coef == 0:
            continue
        if coef == -1 and acc is not None:
            acc = b.fsub(acc, v)
            continue
        if abs(coef) != 1 or acc is None and coef == -1:
            v = b.fmul(v, constant(v.type, (float(coef),) * v.type.count))
        acc = v if acc is None else b.fadd(acc, v)
    return acc


def _sandwich(b: ir.IRBuilder, left: np.ndarray, patch: list[list[ir.Value]]) -> list[list[ir.Value]]:
    """left @ patch @ left^T on a grid of vectors (every vector one pixel's channels)."""
    cols = len(patch[0])
    rows = [[_combine(b, left[i], [patch[k][j] for k in range(len(patch))]) for j in range(cols)]
            for i in range(left.shape[0])]
    return [[_combine(b, left[j], row) for j in range(left.shape[0])] for row in rows]


def _tile_origin(b: ir.IRBuilder, tile: ir.Value, tiles_h: int, tiles_w: int, m: int):
    """(image, first output row, first output column) of a tile numbered row-major over the batch."""
    per_image = tiles_h * tiles_w
    img, rest = b.udiv(tile, i64(per_image)), b.urem(tile, i64(per_image))
    return img, b.mul(b.udiv(rest, i64(tiles_w)), i64(m)), b.mul(b.urem(rest, i64(tiles_w)), i64(m))


def block_tiles(mr: int, tiles: int, t: int, c: int, m: int, threads: int) -> int:
    """Tiles per block: a multiple of the micro-kernel's rows or a thread's whole share of the
    tiles, and as many as TILE_BYTES of V and M scratch hold, or more for deep layers. The weights
    (t^2 C M floats) stream through the cache once per block, the block's V and M (t^2 (C + M)
    floats per tile) once per tile: from C M / (C + M) tiles per block on, the weights cost less per
    tile than the transforms. Measured A/B on 16x7x7x512->512 (a loaded 2-core machine): blocks of
    V and M of 768 KB, 3 MB and 12 MB ran 126, 84 and 67 ms (1 thread), 122, 87 and 80 ms (2); on
    1x14x14x256->256, all 16 tiles in one block instead of two ran 1.8 ms instead of 6.7 (1 thread).
    When a thread's share of the tiles is below that, the block holds every tile and the threads
    split the output channels (emit_winograd_conv), each streaming its part of the weights."""
    share = -(-tiles // threads)
    fit = max(1, TILE_BYTES // (t * t * (c + m) * 4))
    reuse = c * m // (c + m)
    if share < reuse:  # few tiles for so many weights: one block, the threads split the output channels
        return min(tiles, max(fit, reuse))
    rows = max(1, min(share, max(fit, reuse)))
    # then evened out: a number of blocks every thread gets as many of (196 tiles in blocks of 42
    # are 5 blocks, 3 for one thread and 2 for the other; in 6 blocks of 33 they split 3 and 3)
    blocks = -(-tiles // rows)
    blocks = -(-blocks // threads) * threads
    rows = -(-tiles // blocks)
    if blocks < 4 * threads:  # a short last block would leave a thread idle
        return rows
    whole = -(-rows // mr) * mr  # whole register tiles, when that keeps the number of blocks
    return whole if -(-tiles // whole) == blocks else rows


def emit_winograd_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    """WINOGRAD_2X2 / WINOGRAD_4X4: the tile size is the one kernel selection recorded."""
    a = op.attrs
    m = TILE[a.algorithm]
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    n, h, wd, c = xs
    _, oh, ow, mo = ys
    pt, pl = a.pads[0], a.pads[1]
    t = m + 2
    gemm = em.gemm
    isa = gemm.isa
    vw = isa.width
    _, weight, bias_name, residual_name = split_inputs(a, op.inputs)
    packed = packed_weights(em.tensor(weight).data, m, isa)  # [t*t][panels][C][NR]
    panels = gemm.n_panels(mo)
    xi_stride = packed[0].size
    tiles_h, tiles_w = -(-oh // m), -(-ow // m)
    tiles = n * tiles_h * tiles_w
    T = block_tiles(isa.mr, tiles, t, c, mo, em.threads)
    blocks = -(-tiles // T)
    # too few blocks for the threads (a deep layer at batch 1): they split the output channels too,
    # channel group by channel group (tasks group-major), so each thread reads its part of the weights
    groups = 1 if em.threads == 1 or blocks >= 2 * em.threads else min(panels, -(-2 * em.threads // blocks))
    per_group = -(-panels // groups)
    groups = -(-panels // per_group)
    v_floats, m_floats = t * t * T * c, t * t * T * mo
    scratch_bytes = (v_floats + m_floats + c) * 4
    k = conv_kernel(em, op, packed, mo, (em.scratch(scratch_bytes, per_thread=True),), kind="winograd")
    if k.b is None:
        return KernelCall(k.fn, k.names)
    fn, b, args, x, wt, bias, residual, y, ldc = k.fn, k.b, k.names, k.x, k.wt, k.bias, k.residual, k.y, k.ldc
    mine = em.thread_scratch(b, k.extra[0], scratch_bytes, fn.args[-2])
    vbuf = mine
    mbuf = gep(b, mine, v_floats)
    zeros = gep(b, mine, v_floats + m_floats)  # C zeros: the input "pixel" of every tap in the padding
    memset_zero(b, zeros, c * 4)

    lo, hi = em.thread_range(b, fn, blocks * groups)
    with for_range(b, hi, start=lo, name="task") as task:
        grp, blk = b.udiv(task, i64(blocks)), b.urem(task, i64(blocks))
        tile0 = b.mul(blk, i64(T))
        p_lo = b.mul(grp, i64(per_group))
        p_hi = b.add(p_lo, i64(per_group))
        p_hi = b.select(b.icmp_unsigned("<", p_hi, i64(panels)), p_hi, i64(panels))

        # input transform: V[xi, i, :] = (B^T d B)[xi] of tile i (tiles past the end repeat the last)
        input_tile = _input_transform(em, m, pt, pl, c % vw)
        with for_range(b, T, name="vt") as i:
            tile = b.add(tile0, i)
            tile = b.select(b.icmp_unsigned("<", tile, i64(tiles)), tile, i64(tiles - 1))
            img, oy, ox = _tile_origin(b, tile, tiles_h, tiles_w, m)
            b.call(input_tile, [x, zeros, gep(b, vbuf, b.mul(i, i64(c))), img, oy, ox, i64(h), i64(wd), i64(c),
                                i64(T * c)])

        # the t^2 products over this block's tiles, for this group's output-channel panels
        with for_range(b, t * t, name="xi") as xi:
            gemm.gemm(b, T, mo, c, gep(b, vbuf, b.mul(xi, i64(T * c))), Operand(False, c),
                      gep(b, wt, b.mul(xi, i64(xi_stride))), Operand(True), gep(b, mbuf, b.mul(xi, i64(T * mo))), mo,
                      panels=(p_lo, p_hi))

        # output transform, bias and epilogue, stored pixel by pixel (inside the output only)
        ch_lo = b.mul(p_lo, i64(isa.nr))
        ch_hi = b.mul(p_hi, i64(isa.nr))
        ch_hi = b.select(b.icmp_unsigned("<", ch_hi, i64(mo)), ch_hi, i64(mo))
        n_valid = b.sub(i64(tiles), tile0)
        t_hi = b.select(b.icmp_unsigned("<", n_valid, i64(T)), n_valid, i64(T))
        output_tile = _output_transform(em, m, a.epilogue, bias is not None, residual is not None, mo % vw,
                                        bool(oh % m), bool(ow % m))
        with for_range(b, t_hi, name="yt") as i:
            img, oy, ox = _tile_origin(b, b.add(tile0, i), tiles_h, tiles_w, m)
            pixel = b.add(b.mul(b.add(b.mul(img, i64(oh)), oy), i64(ow)), ox)
            b.call(output_tile, [gep(b, mbuf, b.mul(i, i64(mo))), y]
                   + [p for p in (bias, residual) if p is not None]
                   + [i64(T * mo), b.mul(pixel, i64(mo)), b.mul(pixel, as_i64(b, ldc)), as_i64(b, ldc), ch_lo, ch_hi,
                      i64(mo), oy, ox, i64(oh), i64(ow)])
    b.ret_void()
    return KernelCall(fn, args)


def _input_transform(em: ModuleEmitter, m: int, pt: int, pl: int, rem: int) -> ir.Function:
    """V = B^T d B of one tile, every channel: (x, zeros, v_tile, img, oy, ox, h, w, c, stride), the
    tile's t^2 results ``stride`` floats apart. Sizes are arguments, so every layer with the same tile
    size, padding and channel remainder ``rem`` calls one function, compiled once per model and cached
    for every model (ResNet-50's three F(4x4) kernels were three 130-150 kchar modules, 0.38 s of LLVM)."""
    key = ("winograd input transform", m, pt, pl, rem, em.isa)
    fn = em.emitted.get(key)
    if fn is not None:
        return fn
    fn = em.emitted[key] = _helper(em, f"winograd_in{m}", 3, 7)
    x, zeros, v_tile, img, oy, ox, h, wd, c, stride = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    gemm, t, bt = em.gemm, m + 2, TRANSFORMS[m][0]
    rows = []
    for dy in range(t):
        iy = b.sub(b.add(oy, i64(dy)), i64(pt))
        row = []
        for dx in range(t):
            ix = b.sub(b.add(ox, i64(dx)), i64(pl))
            inside = b.and_(b.icmp_unsigned("<", iy, h), b.icmp_unsigned("<", ix, wd))
            at_px = b.mul(b.add(b.mul(b.add(b.mul(img, h), iy), wd), ix), c)
            row.append(b.select(inside, gep(b, x, b.select(inside, at_px, i64(0))), zeros))
        rows.append(row)

    def chunk(c0: ir.Value, valid: int) -> None:
        d = [[gemm.vload(b, gep(b, p, c0), valid) for p in row] for row in rows]
        v = _sandwich(b, bt, d)
        ptr = gep(b, v_tile, c0)  # V[xi] ``stride`` floats apart: stepped, not t^2 offsets kept in registers
        for xi in range(t * t):
            ptr = ptr if xi == 0 else gep(b, ptr, stride)
            gemm.vstore(b, v[xi // t][xi % t], ptr, valid)
    _channel_chunks(b, i64(0), c, c, rem, em.gemm.isa.width, chunk)
    b.ret_void()
    return fn


def _output_transform(em: ModuleEmitter, m: int, epilogue, bias: bool, residual: bool, rem: int,
                      partial_rows: bool, partial_cols: bool) -> ir.Function:
    """Y = A^T M A of one tile for output channels [lo, hi), plus the bias and the epilogue, stored
    pixel by pixel inside the output: (m_tile, y, [bias], [residual], stride, base, y_base, ldc, lo,
    hi, channels, oy, ox, oh, ow). One function per tile size, epilogue, operands, channel remainder
    ``rem`` and whether the last tile row or column leaves the output (as ``_input_transform``)."""
    key = ("winograd output transform", m, epilogue, bias, residual, rem, partial_rows, partial_cols, em.isa)
    fn = em.emitted.get(key)
    if fn is not None:
        return fn
    fn = em.emitted[key] = _helper(em, f"winograd_out{m}", 2 + bias + residual, 11)
    it = iter(fn.args)
    m_tile, y = next(it), next(it)
    bias_p = next(it) if bias else None
    residual_p = next(it) if residual else None
    stride, base, y_base, ldc, lo, hi, channels, oy, ox, oh, ow = it
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    gemm, t, at = em.gemm, m + 2, TRANSFORMS[m][2]
    row_y, row_res = b.mul(ow, ldc), b.mul(ow, channels)  # one output row down, in Y and in the residual

    def chunk(c0: ir.Value, valid: int) -> None:
        # addresses stepped from c0 (the t^2 inputs, the m^2 pixels): run-time sizes leave no constant
        # offsets to fold, and t^2 + 2 m^2 of them kept across the loop would not fit in registers
        ptr, mm = gep(b, m_tile, c0), []
        for xi in range(t * t):
            ptr = ptr if xi == 0 else gep(b, ptr, stride)
            mm.append(gemm.vload(b, ptr, valid))
        out = _sandwich(b, at, [mm[r * t:(r + 1) * t] for r in range(t)])
        bvec = gemm.vload(b, gep(b, bias_p, c0), valid) if bias_p is not None else None
        y_row, res_row = b.add(y_base, c0), b.add(base, c0)
        for r in range(m):
            y_px, res_px = y_row, res_row
            for s in range(m):
                def store_pixel(r=r, s=s, y_px=y_px, res_px=res_px) -> None:
                    val = out[r][s] if bvec is None else b.fadd(out[r][s], bvec)
                    res = gemm.vload(b, gep(b, residual_p, res_px), valid) if residual_p is not None else None
                    gemm.vstore(b, _epilogue(b, epilogue, val, res), gep(b, y, y_px), valid)
                conds = ([b.icmp_unsigned("<", b.add(oy, i64(r)), oh)] if partial_rows and r else []) + \
                        ([b.icmp_unsigned("<", b.add(ox, i64(s)), ow)] if partial_cols and s else [])
                if not conds:
                    store_pixel()
                else:
                    with b.if_then(conds[0] if len(conds) == 1 else b.and_(*conds)):
                        store_pixel()
                y_px, res_px = b.add(y_px, ldc), b.add(res_px, channels)
            y_row, res_row = b.add(y_row, row_y), b.add(res_row, row_res)
    _channel_chunks(b, lo, hi, channels, rem, em.gemm.isa.width, chunk)
    b.ret_void()
    return fn


def _helper(em: ModuleEmitter, name: str, pointers: int, integers: int) -> ir.Function:
    """An internal, out-of-line function (codegen/split.py compiles it in a module of its own when
    several kernels call it) taking ``pointers`` pointers, then ``integers`` i64 values."""
    fn = ir.Function(em.module, ir.FunctionType(VOID, [PTR] * pointers + [I64] * integers),
                     name=em.module.get_unique_name(name))
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    return fn


def _channel_chunks(b: ir.IRBuilder, lo: ir.Value, hi: ir.Value, total: ir.Value, rem: int, width: int,
                    body) -> None:
    """body(c0, width) for the whole vectors of channels [lo, hi), then body(c0, rem) for the last
    partial vector when ``hi`` is the last channel (``lo`` is a multiple of the vector width; ``total``
    channels in all, a run-time value, ``rem`` = total % width known at compile time)."""
    full_end = b.sub(total, i64(rem))
    stop = b.select(b.icmp_unsigned("<", hi, full_end), hi, full_end)
    with for_range(b, stop, start=lo, step=width, name="ch") as c0:
        body(c0, width)
    if rem:
        with b.if_then(b.icmp_unsigned("==", hi, total)):
            body(full_end, rem)


def _epilogue(b: ir.IRBuilder, epi, val: ir.Value, residual: ir.Value | None) -> ir.Value:
    """The conv's epilogue on a vector; an activation without a vector form runs lane by lane."""
    if epi.activation is None or epi.activation in VECTOR_UNARY:
        return apply_epilogue(b, epi, val, residual)
    if residual is not None:
        val = b.fadd(val, residual)
    out = val
    for lane in range(val.type.count):
        idx = ir.Constant(ir.IntType(32), lane)
        out = b.insert_element(out, UNARY[epi.activation](b, b.extract_element(val, idx), epi.activation_attrs), idx)
    return out

