"""dW of a stride-1 convolution without im2col: one GEMM per kernel tap on shifted views of a padded
channels-last copy of the input.

With an image's input copied channels last inside its zero pads (xp[row, col, c], rows Wp = W +
pads wide) and dY copied into rows of the same width (zero past OW), output position p' = oy * Wp +
ox reads input position p' + kh * dh * Wp + kw * dw under tap (kh, kw): the same shift for every
output. So, per group and tap,

    dW_tap[Mg, Cg] += dYp[Mg, K] @ xp[shift : shift + K, Cg]      (K = (OH - 1) * Wp + OW)

is a GEMM whose operands are both read in place (xp's rows C floats apart). The patches of im2col
(Cg * taps floats per output position, written once per image in conv_grad.py's layouts) are never
built: per image a thread copies at most C * H * W + M * P floats, and the Wp - OW zero columns per
row of dY are the only extra arithmetic (6% at 32x32, 3x3). The sums run over the output positions
in the same order as there, so dW is the same to the bit.

Threads split the (group, MR-row tile, tap) GEMMs; no barrier exists between the tasks of a parallel
call, so each copies the part of the image its GEMMs read (its groups' channels of x, its tiles'
rows of dY) for itself. The per-tap sums accumulate in a shared scratch [group][tap][Mg][Cg]
(threads own disjoint tiles), scattered into dW[M, Cg, kh, kw] by their owner at the end.

In the CIFAR ResNet's training step (batch 128, 10 of its 15 dW kernels shifted) the dW kernels took
a fifth less time than with im2col on 1 and on 2 threads (a 2-core AVX2 VM under load).

The sizes come from a size table (as conv_grad.py's kernels' do): the stages of a network are one
compiled kernel per window, whether the 8 x 8 block copy applies and the GEMM's last panel staying
compile-time choices.
"""
from __future__ import annotations

from convc.codegen.kernels.conv_grad import Geometry, gemm_sized, times, thread_slice, function_with_sizes
from convc.codegen.llvm_utils import F32, I32, for_range, gep, i64, load, memset_zero, store
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.passes.memory import align
from llvmlite import ir

from convc.ir import Op


def shifted_fits(geo: Geometry, width: int) -> bool:
    """The shifted GEMMs apply and pay: stride 1 (at stride s the views would read every s-th row of
    xp, and dY would need s - 1 zero columns per output: s times the arithmetic), pads that only add
    zeros, a kernel larger than 1x1 (a pointwise conv has no patches to avoid: conv_grad.py reads its
    operands with one transpose), and at least half a vector of channels per group: the GEMM's N
    (a 3-channel stem's would run at 3/NR of the vector lanes; measured slower than im2col there)."""
    a = geo.a
    return (all(s == 1 for s in a.strides) and all(p >= 0 for p in a.pads) and not geo.direct
            and 2 * geo.cg >= width)


def emit_grad_weight_shifted(em: ModuleEmitter, op: Op, geo: Geometry) -> KernelCall:
    a = geo.a
    (dh, dw_), (pt, pl, pb, pr) = a.dilations, a.pads
    wp, hp = geo.w + pl + pr, geo.h + pt + pb
    k = (geo.oh - 1) * wp + geo.ow     # the last output row needs no zero columns after it
    taps = geo.kh * geo.kw
    mr = em.isa.mr
    tiles = -(-geo.mg // mr)
    xp_f, dyp_f = hp * wp * geo.c, geo.m * k
    mine_bytes = align((xp_f + dyp_f) * 4)
    acc_f = geo.g * taps * geo.mg * geo.cg
    args = [op.inputs[0], op.inputs[1], op.outputs[0], em.scratch(mine_bytes * em.threads + acc_f * 4)]
    fn, b, s = function_with_sizes(em, op, args, geo.sizes() | dict(
        wp=wp, k=k, tiles=tiles, last_tile=tiles - 1, tile_taps=tiles * taps, xp=xp_f, zero_bytes=(xp_f + dyp_f) * 4,
        dyp_group=geo.mg * k, row_shift=dh * wp, slice=mine_bytes, shared=mine_bytes * em.threads // 4,
        whole_tiles=geo.mg // mr, rest=geo.mg % mr, panels=geo.cg // em.isa.nr))
    run = geo.at_run_time(s)
    x, dy, dw, scratch = fn.args[:4]
    xp = thread_slice(b, scratch, s["slice"], fn.args[-2])
    dyp = gep(b, xp, s["xp"])
    acc = gep(b, scratch, s["shared"])
    lo, hi = em.thread_range(b, fn, times(b, s["tile_taps"], geo.g))  # this thread's (group, tile, tap) GEMMs

    def item(j):
        gi, tile, t = b.udiv(j, s["tile_taps"]), b.urem(b.udiv(j, i64(taps)), s["tiles"]), b.urem(j, i64(taps))
        first = b.mul(tile, i64(mr))
        end = b.select(b.icmp_unsigned("==", tile, s["last_tile"]), run.mg, b.add(first, i64(mr)))
        return gi, tile, t, first, end

    def acc_rows(gi, t, row):
        return gep(b, acc, b.mul(b.add(b.mul(b.add(b.mul(gi, i64(taps)), t), run.mg), row), run.cg))

    with b.if_then(b.icmp_unsigned("<", lo, hi)):
        g_first, _, _, row_first, _ = item(lo)
        g_last, _, _, _, row_end = item(b.sub(hi, i64(1)))
        c_lo, c_hi = b.mul(g_first, run.cg), b.mul(b.add(g_last, i64(1)), run.cg)
        m_lo = b.add(b.mul(g_first, run.mg), row_first)   # dY rows [m_lo, m_hi) of the image
        m_hi = b.add(b.mul(g_last, run.mg), row_end)
        memset_zero(b, xp, s["zero_bytes"])  # the pads and dY's columns past OW stay zero
        with for_range(b, hi, start=lo, name="zero") as j:
            gi, _, t, first, end = item(j)
            memset_zero(b, acc_rows(gi, t, first), b.mul(b.sub(end, first), b.mul(run.cg, i64(4))))
        with for_range(b, run.n, name="batch") as ni:
            xi = gep(b, x, b.mul(ni, run.x_image))
            dyi = gep(b, dy, b.mul(ni, run.y_image))
            _copy_channels_last(b, geo, run, xi, xp, (c_lo, c_hi), s["wp"])
            with for_range(b, m_hi, start=m_lo, name="m") as m, for_range(b, run.oh, name="oy") as oy:
                src = b.mul(b.add(b.mul(m, run.oh), oy), run.ow)
                dst = b.add(b.mul(m, s["k"]), b.mul(oy, s["wp"]))
                with for_range(b, run.ow, name="ox") as ox:
                    store(b, load(b, dyi, b.add(src, ox)), dyp, b.add(dst, ox))
            with for_range(b, hi, start=lo, name="gemm") as j:
                gi, tile, t, first, _ = item(j)
                shift = b.add(b.mul(b.udiv(t, i64(geo.kw)), s["row_shift"]), b.mul(b.urem(t, i64(geo.kw)), i64(dw_)))
                xg = gep(b, xp, b.add(b.mul(shift, run.c), b.mul(gi, run.cg)))
                # the tile's MR rows, or the last tile's rows (run-time, of Mg's parity)
                whole = b.icmp_unsigned("<", tile, s["whole_tiles"])
                one = {"t_tiles": b.select(whole, i64(1), i64(0)), "t_rest": b.select(whole, i64(0), s["rest"]),
                       "t_panels": s["panels"]}
                gemm_sized(em, b, one, "t", geo.mg, geo.cg, s["k"], gep(b, dyp, b.add(b.mul(gi, s["dyp_group"]),
                           b.mul(first, s["k"]))), s["k"], xg, run.c, acc_rows(gi, t, first), run.cg, "load")
        with for_range(b, hi, start=lo, name="out") as j:  # acc[g][tap][m][c] -> dW[g * Mg + m][c][tap]
            gi, _, t, first, end = item(j)
            with for_range(b, end, start=first, name="m") as m, for_range(b, run.cg, name="ci") as ci:
                row = b.add(b.mul(gi, run.mg), m)
                at = b.add(b.mul(row, run.kd), b.add(b.mul(ci, i64(taps)), t))
                store(b, load(b, acc_rows(gi, t, m), ci), dw, at)
    b.ret_void()
    return KernelCall(fn, args)


V8 = ir.VectorType(F32, 8)


def _transpose8(b: ir.IRBuilder, rows: list[ir.Value]) -> list[ir.Value]:
    """The 8 columns of an 8 x 8 block given as 8 row vectors (three rounds of two-input shuffles)."""
    def shuffle(x, y, mask):
        return b.shuffle_vector(x, y, ir.Constant(ir.VectorType(I32, 8), mask))
    t = []
    for r0, r1 in zip(rows[0::2], rows[1::2]):          # pairs of rows interleaved
        t += [shuffle(r0, r1, [0, 8, 1, 9, 4, 12, 5, 13]), shuffle(r0, r1, [2, 10, 3, 11, 6, 14, 7, 15])]
    s = []
    for t0, t1, t2, t3 in (t[0:4], t[4:8]):            # s[i] (s[4 + i]): columns i and i + 4 of 4 rows
        lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        s += [shuffle(t0, t2, lo), shuffle(t0, t2, hi), shuffle(t1, t3, lo), shuffle(t1, t3, hi)]
    return ([shuffle(s[i], s[4 + i], [0, 1, 2, 3, 8, 9, 10, 11]) for i in range(4)]
            + [shuffle(s[i], s[4 + i], [4, 5, 6, 7, 12, 13, 14, 15]) for i in range(4)])


def _copy_channels_last(b: ir.IRBuilder, geo: Geometry, run: Geometry, x: ir.Value, xp: ir.Value, channels: tuple,
                        wp: ir.Value) -> None:
    """xp[(iy + pt) * Wp + ix + pl, c] = x[c, iy, ix] for the channels [first, end) of one image, row by
    row (a row of xp, Wp * C floats, stays in L1 while its channels are written): 8 x 8 blocks
    transposed in registers where 8 divides the width and the channels per group, else one float at a
    time (strided stores). ``geo``'s sizes choose the copy, ``run``'s (run-time values) drive it."""
    pt, pl = geo.a.pads[:2]
    first, end = channels
    with for_range(b, run.h, name="iy") as iy:
        out_row = b.mul(b.add(iy, i64(pt)), wp)
        if geo.w % 8 == 0 and geo.cg % 8 == 0:
            plane = b.mul(run.h, run.w)
            with for_range(b, end, start=first, step=8, name="c8") as c, \
                    for_range(b, b.udiv(run.w, i64(8)), name="x8") as xb:
                ix = b.mul(xb, i64(8))
                src = b.add(b.mul(b.add(b.mul(c, run.h), iy), run.w), ix)
                rows = [b.load(gep(b, x, b.add(src, times(b, plane, j))), typ=V8, align=4) for j in range(8)]
                dst = b.add(b.mul(b.add(b.add(out_row, ix), i64(pl)), run.c), c)
                for j, column in enumerate(_transpose8(b, rows)):
                    b.store(column, gep(b, xp, b.add(dst, times(b, run.c, j))), align=4)
        else:
            with for_range(b, end, start=first, name="c") as c:
                src = b.mul(b.add(b.mul(c, run.h), iy), run.w)
                dst = b.add(b.mul(b.add(out_row, i64(pl)), run.c), c)
                with for_range(b, run.w, name="ix") as ix:
                    store(b, load(b, x, b.add(src, ix)), xp, b.add(dst, b.mul(ix, run.c)))
