"""Channels-last direct conv for few input channels (1-4: LeNet's first conv, RGB stems).

Any C works; kernel selection (passes/kernel_selection.py ``direct_few_channels``) picks it for
1-4 where it measured faster. With C <= 4 a GEMM's reduction dimension is tiny (a 5x5 conv on one channel: K = 25), so the implicit
GEMM spends its time on loop control and on the padded copy of the input. Here every tap
(kh, kw, c) is unrolled at compile time: per output pixel the accumulators are vectors of output
channels (channels-last output), each tap one broadcast input float times one vector of weights.

- Register tile: R output pixels of one row x NV vectors of output channels (8 x 1 vector for
  M <= 8, 6 x 2 otherwise), so each weight vector loaded serves R pixels. Wider layers loop over
  chunks of NV vectors at run time; the last vector of M is masked, except that with fewer
  channels than a vector a pixel stores a whole vector the next pixels' stores overwrite (masked
  stores are microcoded on AMD), and only the row's last few pixels store masked.
- Borders resolved at compile time: the output columns whose taps all lie inside the row run the
  unrolled block loop; the few border columns are emitted one by one with only their in-bounds
  taps. A kernel row above or below the image reads a zero row instead (a select per kernel row
  per output row), so no tap tests bounds and the input is never copied.
- The epilogue: bias, residual and ReLU in registers before the store; other vector activations
  (Tanh, Sigmoid... from codegen/vecmath) over each output row just written, still in L1;
  activations without a vector form as a pass after all rows.

Threads split the output rows (batch x height), as the implicit GEMM does.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.codegen.kernels.blas import split_epilogue
from convc.codegen.kernels.conv_nhwc import conv_kernel, times
from convc.codegen.kernels.activations import UNARY
from convc.codegen.kernels.epilogue import epilogue_pass
from convc.codegen.llvm_utils import F32, PTR, alloca_entry, as_i64, constant_table, for_range, gep, i64
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import split_inputs
from convc.ops.epilogue import Epilogue

# taps x channels unrolled in full; larger kernels (a 7x7 stem: 147) loop over kernel rows at run
# time: fully unrolled, ResNet's 7x7 stem ran at 0.25-0.45x the implicit GEMM, looped at 0.45-0.6x
# (so kernel selection does not pick it; the loop serves forced and future uses)
UNROLLED_TAPS = 32
# activations cheap enough to apply to every pixel's vectors in registers; others (Tanh, Sigmoid...)
# run over each finished output row while it is in L1, in full vectors: per pixel, a 6-channel
# layer wastes a quarter of every vector and the unrolled pixels' polynomials spill registers
# (Tanh per pixel was 1.3-1.5x slower than the implicit GEMM on LeNet's first conv at batch 16)
REGISTER_ACTIVATIONS = frozenset({OpKind.RELU})


def tile_shape(m: int, width: int) -> tuple[int, int]:
    """(pixels R, channel vectors NV) of the register tile for M output channels: R*NV accumulators
    plus NV weight vectors and a broadcast stay within the 16 vector registers of AVX2."""
    nv = min(-(-m // width), 2)
    return (8 if nv == 1 else 6), nv


def interior(size: int, k: int, s: int, d: int, pad: int, out: int) -> tuple[int, int]:
    """[lo, hi) of the output positions whose k taps all fall inside [0, size)."""
    lo = min(-(-pad // s), out)
    last = size - 1 + pad - (k - 1) * d  # o*s <= last
    hi = min(last // s + 1, out) if last >= 0 else 0
    return lo, max(lo, hi)


def pack_weights(w: np.ndarray, width: int, nv: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """W [M, C, kh, kw] -> per chunk of NV vectors (the last chunk maybe fewer), [tap (kh, kw, c),
    nv*width] with zeros past M, chunks back to back. Returns the array and (offset, vectors) per chunk."""
    m = w.shape[0]
    vecs = -(-m // width)
    taps = np.zeros((w.shape[2] * w.shape[3] * w.shape[1], vecs * width), dtype=np.float32)
    taps[:, :m] = w.transpose(2, 3, 1, 0).reshape(-1, m)
    parts, chunks, offset = [], [], 0
    for v0 in range(0, vecs, nv):
        n = min(nv, vecs - v0)
        part = np.ascontiguousarray(taps[:, v0 * width:(v0 + n) * width])
        parts.append(part.ravel())
        chunks.append((offset, n))
        offset += part.size
    return np.concatenate(parts), chunks


def emit_direct_conv_few_channels(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    gemm = em.gemm  # its vector width, masked loads/stores and FMA
    width = gemm.isa.width
    n, h, w_, c = em.tensor(op.inputs[0]).shape
    _, oh, ow, m = em.tensor(op.outputs[0]).shape
    kh, kw = a.kernel_shape
    (sh, sw), (dh, dw) = a.strides, a.dilations
    pt, pl = a.pads[0], a.pads[1]
    _, weight, bias_name, residual_name = split_inputs(a, op.inputs)
    r_tile, nv = tile_shape(m, width)
    packed, chunks = pack_weights(em.tensor(weight).data, width, nv)
    ntaps = kh * kw * c
    in_kernel, after = split_epilogue(a.epilogue)
    row_pass = Epilogue()  # an activation applied over each finished output row instead of per pixel
    if in_kernel.activation is not None and in_kernel.activation not in REGISTER_ACTIVATIONS:
        row_pass = Epilogue(False, in_kernel.activation, in_kernel.activation_attrs)
        in_kernel = Epilogue(in_kernel.residual)
    k = conv_kernel(em, op, packed, m, kind="direct")
    if k.b is None:
        return KernelCall(k.fn, k.names)
    fn, b, args, x, wt, bias, residual, y, ldc = k.fn, k.b, k.names, k.x, k.wt, k.bias, k.residual, k.y, k.ldc
    contiguous = k.contiguous
    zero_row = constant_table(b, [0.0] * (w_ * c), name=f"{fn.name}_zeros", ty=F32)
    x_lo, x_hi = interior(w_, kw, sw, dw, pl, ow)

    row_table = b.alloca(PTR, size=i64(kh), name="rows")
    # fewer than a vector of output channels, one pixel after another in a row of their own: every
    # pixel but the row's last few stores (and reads its residual) in a whole vector whose extra
    # lanes the next pixels' stores overwrite (a masked store is microcoded on AMD: LeNet's first conv
    # ran 1.2x faster without them); another thread's rows and a Concat's neighbours stay untouched
    spill = m < width and contiguous
    # pixels before spill_end store whole vectors: theirs ends within the row (p*m + width <= ow*m)
    spill_end = ow - -(-width // m) + 1 if spill else 0
    r_lo, r_hi = em.thread_range(b, fn, n * oh)
    with for_range(b, r_hi, start=r_lo, name="row") as q:
        img, oy = b.udiv(q, i64(oh)), b.urem(q, i64(oh))
        rows = []  # input row of each kernel row, or the zero row where it lies in the padding
        for i in range(kh):
            iy = b.add(b.sub(b.mul(oy, i64(sh)), i64(pt)), i64(i * dh))
            inside = b.icmp_unsigned("<", iy, i64(h))
            at = gep(b, x, b.mul(b.add(b.mul(img, i64(h)), iy), i64(w_ * c)))
            rows.append(b.select(inside, at, zero_row))
            b.store(rows[-1], gep(b, row_table, i, PTR))
        y_row = gep(b, y, b.mul(q, times(b, ow, ldc)))
        r_row = gep(b, residual, b.mul(q, i64(ow * m))) if residual is not None else None

        def block(ox0: ir.Value, npix: int, kws: list[int], w_at: ir.Value, v0: ir.Value, nvc: int,
                  lanes: list[int], whole: bool = False) -> None:
            """Output pixels ox0 .. ox0+npix-1 of this row, channel vectors v0 .. v0+nvc-1 (``lanes``
            valid lanes each), over kernel columns ``kws`` (all in bounds for these pixels). ``whole``:
            store whole vectors, their lanes past M landing on later pixels of the row (``spill``)."""
            ch0 = b.mul(v0, i64(width))
            if bias is not None:
                init = [gemm.vload(b, gep(b, gep(b, bias, ch0), v * width), lanes[v]) for v in range(nvc)]
            else:
                init = [ir.Constant(gemm.vec, None)] * nvc
            acc = [list(init) for _ in range(npix)]
            ix0 = b.sub(b.mul(ox0, i64(sw)), i64(pl))

            def kernel_row(row: ir.Value, w_row: ir.Value, acc: list[list[ir.Value]]) -> list[list[ir.Value]]:
                for j in kws:
                    for ci in range(c):
                        t = j * c + ci
                        wv = [b.load(gep(b, w_row, (t * nvc + v) * width), typ=gemm.vec, align=4) for v in range(nvc)]
                        for p in range(npix):
                            xi = b.add(b.mul(b.add(ix0, i64(p * sw + j * dw)), i64(c)), i64(ci))
                            xs = gemm.splat(b, b.load(gep(b, row, xi), typ=F32))
                            acc[p] = [gemm.fma(b, xs, wv[v], acc[p][v]) for v in range(nvc)]
                return acc
            row_floats = kw * c * nvc * width  # weights of one kernel row
            if kh * kw * c <= UNROLLED_TAPS:
                for i in range(kh):
                    acc = kernel_row(rows[i], gep(b, w_at, i * row_floats), acc)
            else:  # kernel rows loop at run time (accumulators in stack slots mem2reg promotes)
                slots = [[alloca_entry(b, gemm.vec) for _ in range(nvc)] for _ in range(npix)]
                for p in range(npix):
                    for v in range(nvc):
                        b.store(acc[p][v], slots[p][v])
                with for_range(b, kh, name="kr") as i:
                    cur = [[b.load(slots[p][v]) for v in range(nvc)] for p in range(npix)]
                    row = b.load(gep(b, row_table, i, PTR), typ=PTR)
                    cur = kernel_row(row, gep(b, w_at, b.mul(i, i64(row_floats))), cur)
                    for p in range(npix):
                        for v in range(nvc):
                            b.store(cur[p][v], slots[p][v])
                acc = [[b.load(slots[p][v]) for v in range(nvc)] for p in range(npix)]
            for p in range(npix):
                pix = b.add(ox0, i64(p))
                if whole:
                    lanes = [width]  # the lanes past M land on the next pixels, whose stores come later
                for v in range(nvc):
                    val = acc[p][v]
                    col = b.add(ch0, i64(v * width))
                    if in_kernel.residual:
                        val = b.fadd(val, gemm.vload(b, gep(b, r_row, b.add(b.mul(pix, i64(m)), col)), lanes[v]))
                    if in_kernel.activation is not None:
                        val = UNARY[in_kernel.activation](b, val, in_kernel.activation_attrs)
                    gemm.vstore(b, val, gep(b, y_row, b.add(b.mul(pix, as_i64(b, ldc)), col)), lanes[v])

        def columns(w_at: ir.Value, v0: ir.Value, nvc: int, lanes: list[int]) -> None:
            """The whole output row for one chunk of channel vectors."""
            def border(ox: int) -> None:
                kws = [j for j in range(kw) if 0 <= ox * sw - pl + j * dw < w_]
                block(i64(ox), 1, kws, w_at, v0, nvc, lanes, whole=ox < spill_end)
            for ox in range(x_lo):
                border(ox)
            full = (x_hi - x_lo) // r_tile
            whole_blocks = min(full, max(0, (spill_end - x_lo) // r_tile))  # blocks ending before spill_end
            for start, stop, whole in ((0, whole_blocks, True), (whole_blocks, full, False)):
                if stop > start:
                    with for_range(b, stop, start=start, name="blk") as k:
                        block(b.add(i64(x_lo), b.mul(k, i64(r_tile))), r_tile, list(range(kw)), w_at, v0, nvc,
                              lanes, whole)
            if x_lo + full * r_tile < x_hi:
                with for_range(b, x_hi, start=x_lo + full * r_tile, name="ox") as ox:
                    block(ox, 1, list(range(kw)), w_at, v0, nvc, lanes, x_hi <= spill_end)
            for ox in range(x_hi, ow):
                border(ox)

        def lanes_of(first_vec: int, nvc: int) -> list[int]:
            return [max(0, min(width, m - (first_vec + v) * width)) for v in range(nvc)]

        # whole chunks of NV full vectors loop at run time; a last chunk with fewer vectors or lanes is
        # emitted on its own
        full_chunks = [k for k, (_, cnt) in enumerate(chunks) if cnt == nv and lanes_of(k * nv, nv)[-1] == width]
        if full_chunks:
            assert full_chunks == list(range(len(full_chunks)))
            with for_range(b, len(full_chunks), name="chunk") as k:
                columns(gep(b, wt, b.mul(k, i64(ntaps * nv * width))), b.mul(k, i64(nv)), nv, [width] * nv)
        for k in range(len(full_chunks), len(chunks)):
            offset, cnt = chunks[k]
            columns(gep(b, wt, offset), i64(k * nv), cnt, lanes_of(k * nv, cnt))
        if not row_pass.empty:
            if contiguous:
                epilogue_pass(b, row_pass, y_row, None, i64(ow * m))
            else:
                with for_range(b, ow, name="act_px") as px:
                    epilogue_pass(b, row_pass, gep(b, y_row, b.mul(px, as_i64(b, ldc))), None, i64(m))
    if not after.empty:  # activations with no vector form, over this thread's rows
        with for_range(b, b.mul(r_hi, i64(ow)), start=b.mul(r_lo, i64(ow)), name="epi_px") as px:
            epilogue_pass(b, after, gep(b, y, b.mul(px, as_i64(b, ldc))), None, i64(m))
    b.ret_void()
    return KernelCall(fn, args)
