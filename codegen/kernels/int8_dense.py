"""Int8Conv, plain (group 1) convs and the 1x1 convs Gemm/MatMul become: tiles of output pixels times
blocks of output channels, int32 accumulators in registers, the requantization of int8_conv.py fused.

Each thread takes a contiguous range of pixel tiles and works through it in chunks. For a chunk it first
gathers every tile's receptive field into per-thread scratch (a "patch": per pixel, taps x input channels
in the multiply's element type, padding taps as rows of the input zero point), then, per block of output
channels, runs every tile of the chunk over that block's packed weights. So the inner loop is one flat
reduction over taps x channels whose activations are broadcast straight from memory (no per-tap window
arithmetic and no widening per product), each block's weight panel is read once per chunk instead of once
per tile (a 512x512 3x3 layer's panels do not fit L2 together), and the last tile overlaps the one before
it instead of leaving a remainder of single pixels (its pixels are written twice with the same bytes).

The multiply, chosen per layer from the target's features and the weights (``scheme``). The byte schemes
take unsigned activations: int8 activations are made unsigned by flipping their sign bit (x + 128) and the
bias folds in 128 * sum(w) more (the same trick as the zero point: the patch holds x + 128 and padding
holds x_zero_point + 128).
- ``vpdpbusd`` (AVX512-VNNI, 512-bit; or AVX-VNNI / AVX512-VNNI+VL, 256-bit): u8 x s8 products of four
  channels summed into int32 lanes without saturation, exact for any int8 weight.
- ``pmaddubsw`` (AVX2, weights whose adjacent pairs have |w0| + |w1| <= 128, e.g. 7-bit weights): u8 x s8
  pairs into saturating int16 (exact under that bound: 255 * 128 = 32640), then vpmaddwd by ones.
- ``pmaddwd`` (other weights; every target without VNNI): activations gathered as int16, int16 weights,
  pairs into int32, exact for full-range 8-bit weights (onnxruntime's AVX2 kernel saturates there).
``PMADDUBSW_SPLIT`` is an exact vpmaddubsw kernel for full-range weights (w = ceil(w / 2) + floor(w / 2),
both halves within the bound, a vpmaddubsw + vpmaddwd each). It is not chosen: on an AVX2 EPYC (znver3) the
whole ResNet-18 QDQ model ran 27.5 ms with pmaddwd against 40.3 ms with it (1 thread, best of 45 runs,
alternating in one process). It only looked faster in CPU time while another process shared the core
(benchmarks/int8_micro.py gives each sequence's register-only rate).
The zero point is folded into the bias (bias - x_zero_point * sum(w)) as before.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from convc.codegen.kernels.int8_conv import (I16, _const_vec, _load_channels, _per_channel, _splat, _store_block,
                                             fits_pmaddubsw, pack_weights, pmaddwd, requantize)
from convc.codegen.llvm_utils import F32, I8, I32, alloca_entry, for_range, gep, i64, intrinsic
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.ir import Op

PATCH_BUDGET = 128 * 1024  # bytes of gathered activations per chunk and thread (L2-resident with one panel)


@dataclass(frozen=True)
class Scheme:
    """One way to multiply: ``group`` input channels per step, ``nv`` vectors of ``lanes`` int32 output
    channels per block, ``mr`` pixels per tile (accumulators nv * mr, within the register file)."""
    name: str
    group: int
    lanes: int
    nv: int
    mr: int
    wide: bool  # activations and weights as int16 (vpmaddwd) instead of bytes
    emulated: bool = False  # vpdpbusd in portable IR (tests run the VNNI data path on machines without it)
    halves: int = 1  # weight panels per step (2: w split into two halves that cannot saturate vpmaddubsw)

    @property
    def block(self) -> int:
        return self.lanes * self.nv


PMADDWD = Scheme("pmaddwd", 2, 8, 2, 6, True)         # 12 accumulators, 2 weights, 1 broadcast
PMADDUBSW = Scheme("pmaddubsw", 4, 8, 2, 4, False)    # + the int16 products and the ones: 6 pixels would spill
# w = ceil(w / 2) + floor(w / 2), both halves in [-64, 64]: two vpmaddubsw + vpmaddwd per four channels;
# exact, measured slower than PMADDWD (module docstring), kept for re-measuring on other CPUs
PMADDUBSW_SPLIT = Scheme("pmaddubsw", 4, 8, 2, 4, False, halves=2)
VPDPBUSD_256 = Scheme("vpdpbusd", 4, 8, 2, 6, False)  # AVX-VNNI: 12 ymm accumulators
VPDPBUSD_512 = Scheme("vpdpbusd", 4, 16, 2, 8, False)  # 16 zmm accumulators of 32


def scheme(features: frozenset[str], native: bool, w: np.ndarray) -> Scheme:
    """The multiply for weights ``w`` on a target with ``features`` (``native``: x86 with AVX2 or better)."""
    if "avx512vnni" in features and "avx512bw" in features:
        return VPDPBUSD_512
    if "avxvnni" in features or ("avx512vnni" in features and "avx512vl" in features):
        return VPDPBUSD_256
    return PMADDUBSW if native and fits_pmaddubsw(w) else PMADDWD


def folded_bias(a, w: np.ndarray, bias: np.ndarray, total: int, x_shift: int = 0) -> np.ndarray:
    """bias - (x_zero_point + x_shift) * sum(w) per output channel, zero-padded to ``total``."""
    out = np.zeros(total, np.int64)
    out[:w.shape[0]] = bias.astype(np.int64) - (a.x_zero_point + x_shift) * \
        w.reshape(w.shape[0], -1).astype(np.int64).sum(1)
    return out.astype(np.int32)


def emit_dense(em: ModuleEmitter, op: Op, geo) -> KernelCall:
    a, c, m = geo.a, geo.c, geo.m
    w = em.tensor(op.inputs[1]).data
    native = em.isa.name in ("avx2", "avx512")
    s = scheme(em.features, native, w)
    flip = not s.wide and geo.signed  # int8 activations as x + 128
    packed, blocks = pack_weights(w, s.group, np.int16 if s.wide else np.int8, s.block)
    if s.halves == 2:  # [block][step][half][lanes][4]
        lo = pack_weights(np.floor_divide(w, 2).astype(np.int8), s.group, np.int8, s.block)[0]
        packed = np.stack([packed - lo, lo], axis=3).astype(np.int8)
    cg = -(-c // s.group) * s.group
    taps = geo.kh * geo.kw
    kdim = taps * cg  # patch elements per pixel
    steps = kdim // s.group
    es = 2 if s.wide else 1
    # a 1x1 stride-1 conv over bytes the multiply takes as they are reads its tiles in place: each pixel's
    # channels are already one patch row, contiguous pixel after pixel (no gather, no scratch)
    in_place = (taps == 1 and a.strides == (1, 1) and not any(a.pads) and not s.wide and not flip
                and c % s.group == 0)
    mr = min(s.mr, geo.pixels)
    tiles = -(-geo.pixels // mr)
    per_thread = -(-tiles // em.threads)
    chunk = max(1, min(per_thread, PATCH_BUDGET // (mr * kdim * es)))
    patch_bytes = 0 if in_place else chunk * mr * kdim * es
    xdtype = np.int8 if geo.signed else np.uint8
    tables = [em.derived_constant(packed, packed.dtype),
              em.derived_constant(folded_bias(a, w, em.tensor(op.inputs[2]).data, blocks * s.block,
                                              128 if flip else 0), np.int32),
              em.derived_constant(_per_channel(a.multiplier, m, blocks * s.block, np.float32)),
              em.derived_constant(_per_channel(a.offset, m, blocks * s.block, np.float32)),
              em.derived_constant(np.full(c, a.x_zero_point, np.int64).astype(xdtype), xdtype)]
    res = op.inputs[3:]  # the residual input, when a.residual
    res_signed = bool(res) and em.tensor(res[0]).dtype == np.int8
    fn, b = em.function(op.name, 8 + len(res), parallel=True)
    x, y, wp, bias, mult, off, zrow, scratch = fn.args[:8]
    patch = em.thread_scratch(b, scratch, patch_bytes, fn.args[-2])
    vacc = ir.VectorType(I32, s.lanes)
    slots = [[alloca_entry(b, vacc, f"acc{r}_{v}") for v in range(s.nv)] for r in range(mr)]
    etype = I16 if s.wide else I8

    def first_pixel(t: ir.Value) -> ir.Value:
        p0 = b.mul(t, i64(mr))
        last = i64(geo.pixels - mr)
        return b.select(b.icmp_unsigned("<", p0, last), p0, last)

    def gather(t: ir.Value, dst: ir.Value) -> None:
        """Tile t's receptive fields into dst: per pixel, per tap, c channels converted, cg - c zeros."""
        p0 = first_pixel(t)
        for r in range(mr):
            origin = geo.pixel_origin(b, b.add(p0, i64(r)))
            with for_range(b, taps, name="gtap") as tap:
                i, j = b.udiv(tap, i64(geo.kw)), b.urem(tap, i64(geo.kw))
                src = geo.tap_row(b, x, zrow, origin, i, j)
                out = gep(b, dst, b.add(i64(r * kdim), b.mul(tap, i64(cg))), etype)
                _convert_row(b, src, out, c, cg, s.wide, geo.signed, flip)

    def compute(t: ir.Value, blk: ir.Value, src: ir.Value) -> None:
        for r in range(mr):
            for v in range(s.nv):
                b.store(_const_vec(I32, 0, s.lanes), slots[r][v])
        panel = s.block * s.group * s.halves  # weights per step
        wblock = b.mul(blk, i64(steps * panel))
        with for_range(b, steps, name="k") as k:
            woff = b.add(wblock, b.mul(k, i64(panel)))
            ws = [[b.load(gep(b, wp, b.add(woff, i64(h * s.block * s.group + v * s.lanes * s.group)), etype),
                          typ=ir.VectorType(etype, s.lanes * s.group), align=es) for h in range(s.halves)]
                  for v in range(s.nv)]
            for r in range(mr):
                word = b.load(gep(b, src, b.add(i64(r * kdim), b.mul(k, i64(s.group))), etype),
                              typ=I32, align=1)
                xv = _splat(b, word, s.lanes)
                for v in range(s.nv):
                    acc = b.load(slots[r][v], typ=vacc)
                    b.store(_multiply_add(b, s, acc, xv, ws[v], native), slots[r][v])
        p0 = first_pixel(t)
        base = b.mul(blk, i64(s.block))
        for v in range(s.nv):
            ch = b.add(base, i64(v * s.lanes))
            bv = b.load(gep(b, bias, ch, I32), typ=vacc, align=4)
            mv = b.load(gep(b, mult, ch, F32), typ=ir.VectorType(F32, s.lanes), align=4)
            ov = b.load(gep(b, off, ch, F32), typ=ir.VectorType(F32, s.lanes), align=4)
            # a block past the channels loads from channel 0 (nothing is stored there)
            inside = b.select(b.icmp_unsigned("<", ch, i64(m)), ch, i64(0))
            for r in range(mr):
                row = b.mul(b.add(p0, i64(r)), i64(m))
                rv = _load_channels(b, gep(b, fn.args[8], row, I8), inside, m, res_signed, s.lanes) if res else None
                q = requantize(b, a, b.add(b.load(slots[r][v], typ=vacc), bv), mv, ov, s.lanes, rv)
                _store_block(b, q, gep(b, y, b.add(row, ch), I8), ch, m, s.lanes)

    lo, hi = em.thread_range(b, fn, tiles)
    with for_range(b, hi, start=lo, step=chunk, name="chunk") as c0:
        c1 = b.add(c0, i64(chunk))
        c1 = b.select(b.icmp_unsigned("<", c1, hi), c1, hi)
        if not in_place:
            with for_range(b, c1, start=c0, name="gt") as t:
                gather(t, gep(b, patch, b.mul(b.sub(t, c0), i64(mr * kdim * es)), I8))
        with for_range(b, blocks, name="blk") as blk:
            with for_range(b, c1, start=c0, name="tile") as t:
                src = gep(b, x, b.mul(first_pixel(t), i64(c)), I8) if in_place else \
                    gep(b, patch, b.mul(b.sub(t, c0), i64(mr * kdim * es)), I8)
                compute(t, blk, src)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0], *tables, em.scratch(patch_bytes, per_thread=True), *res])


def _convert_row(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, c: int, cg: int, wide: bool, signed: bool,
                 flip: bool) -> None:
    """dst[0:c] = src[0:c] as the multiply reads them (int16, or bytes with the sign bit flipped), dst[c:cg] = 0."""
    def convert(v: ir.Value, n: int | None) -> ir.Value:
        ty = I16 if n is None else ir.VectorType(I16, n)
        if wide:
            return b.sext(v, ty) if signed else b.zext(v, ty)
        if flip:
            return b.xor(v, ir.Constant(v.type, 0x80) if n is None else _const_vec(I8, 0x80, n))
        return v
    etype = I16 if wide else I8
    width = 16
    if c // width:
        with for_range(b, c // width, name="cv") as i:
            at = b.mul(i, i64(width))
            v = b.load(gep(b, src, at, I8), typ=ir.VectorType(I8, width), align=1)
            b.store(convert(v, width), gep(b, dst, at, etype), align=1)
    for j in range(c - c % width, c):
        b.store(convert(b.load(gep(b, src, j, I8), typ=I8), None), gep(b, dst, j, etype))
    for j in range(c, cg):
        b.store(ir.Constant(etype, 0), gep(b, dst, j, etype))


def _multiply_add(b: ir.IRBuilder, s: Scheme, acc: ir.Value, xv: ir.Value, ws: list[ir.Value],
                  native: bool) -> ir.Value:
    """acc + the products of one step: xv is the pixel's broadcast group (as int32 lanes), ws the weights
    (one vector per half; ``native``: vpmaddwd itself, else its portable equivalent)."""
    n = s.lanes
    if len(ws) > 1:
        for half in ws:
            acc = _multiply_add(b, s, acc, xv, [half], native)
        return acc
    wv = ws[0]
    if s.name == "vpdpbusd" and s.emulated:
        wide = ir.VectorType(I32, 4 * n)
        prod = b.mul(b.zext(b.bitcast(xv, ir.VectorType(I8, 4 * n)), wide), b.sext(wv, wide))
        for j in range(4):
            acc = b.add(acc, b.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(I32, n), list(range(j, 4 * n, 4)))))
        return acc
    if s.name == "vpdpbusd":
        bytes_ = ir.VectorType(I8, 4 * n)
        fn = intrinsic(b.module, f"llvm.x86.avx512.vpdpbusd.{32 * n}", acc.type, [acc.type, bytes_, bytes_])
        return b.call(fn, [acc, b.bitcast(xv, bytes_), wv])
    if s.name == "pmaddubsw":
        v32, v16 = ir.VectorType(I8, 32), ir.VectorType(I16, 16)
        ubs = intrinsic(b.module, "llvm.x86.avx2.pmadd.ub.sw", v16, [v32, v32])
        wd = intrinsic(b.module, "llvm.x86.avx2.pmadd.wd", acc.type, [v16, v16])
        return b.add(acc, b.call(wd, [b.call(ubs, [b.bitcast(xv, v32), wv]), _const_vec(I16, 1, 16)]))
    return b.add(acc, pmaddwd(b, b.bitcast(xv, ir.VectorType(I16, 2 * n)), wv, native))
