"""Int8Conv: a channels-last 2-D conv over uint8/int8 activations and int8 weights with int32
accumulation and the requantization fused (convc/ops/quant.py defines the arithmetic).

The multiply: activations and weights are widened to int16 and multiplied with ``vpmaddwd``
(``llvm.x86.avx2.pmadd.wd``: 16 int16 products summed in pairs into 8 int32 lanes). Every product
(|x| <= 255, |w| <= 128) and every pair sum fits, so the result is exact for full-range 8-bit weights.
The faster ``vpmaddubsw`` (u8 x s8 pairs summed into *saturating* int16) would need 7-bit weights
to be exact (255 * 127 * 2 > 32767), which is what onnxruntime's AVX2 kernels silently assume:
quantize_static's default 8-bit weights saturate there, and onnxruntime's optimized output differs
from its own reference lowering (tests/int8 shows it). convc stays exact instead; on a VNNI target
LLVM fuses vpmaddwd + vpaddd into ``vpdpwssd`` (tests/int8 compiles, without running, for znver4).

Tiles: 6 output pixels x 16 output channels (12 ymm accumulators; 4 pixels for vpmaddubsw, whose extra
temporaries would make 6 spill). Per input-channel pair, each
pixel's two bytes are broadcast (``vpbroadcastw`` + ``vpmovzxbw``/``vpmovsxbw``) and multiplied
with one packed weight vector per 8 channels. The zero point is not subtracted per product: the
accumulator starts at bias - x_zero_point * sum(w) (folded at compile time), and a padded tap reads
a row of x_zero_point bytes, which contributes exactly that correction's share, so the border is
exact without branches. Depthwise convs take a simpler per-channel kernel (8 channels a vector).

Weights are packed at compile time: [channel block][tap][channel pair][16 channels][2] as int16.
Threads split the output pixels.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.codegen.llvm_utils import (F32, I8, I32, alloca_entry, as_i64, call_intrinsic, for_range, gep, i64,
                                      intrinsic)
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.quant import Int8ConvAttrs

I16 = ir.IntType(16)
LANES = 8      # int32 lanes per ymm
NV = 2         # vectors of output channels per tile
MR = 6         # output pixels per tile (vpmaddwd: 12 accumulators, 2 weight vectors, 1 broadcast)
MR_UBS = 4     # vpmaddubsw needs two more registers (its int16 products, the ones): 6 pixels would spill
BLOCK = LANES * NV


def pack_weights(w: np.ndarray, group: int = 2, dtype=np.int16) -> tuple[np.ndarray, int]:
    """(M, C, KH, KW) int8 -> [blocks][KH*KW][ceil(C/group)][16 channels][group] (zero-padded), and the
    block count: ``group`` consecutive input channels of 16 output channels per vector load."""
    m, c, kh, kw = w.shape
    blocks, groups = -(-m // BLOCK), -(-c // group)
    padded = np.zeros((blocks * BLOCK, groups * group, kh * kw), dtype)
    padded[:m, :c] = w.reshape(m, c, kh * kw)
    # [block][lane] [group][member] [tap] -> [block][tap][group][lane][member]
    packed = padded.reshape(blocks, BLOCK, groups, group, kh * kw).transpose(0, 4, 2, 1, 3)
    return np.ascontiguousarray(packed), blocks


def fits_pmaddubsw(w: np.ndarray) -> bool:
    """vpmaddubsw sums two u8 x s8 products into a saturating int16: exact when |w0| + |w1| <= 128 for
    every pair of adjacent input channels (255 * 128 = 32640), as with 7-bit weights (reduce_range)."""
    m, c = w.shape[:2]
    padded = np.zeros((m, c + c % 2, *w.shape[2:]), np.int32)
    padded[:, :c] = w
    return bool((np.abs(padded.reshape(m, -1, 2, *w.shape[2:])).sum(axis=2) <= 128).all())


def folded_bias(a: Int8ConvAttrs, w: np.ndarray, bias: np.ndarray, blocks: int) -> np.ndarray:
    """bias - x_zero_point * sum(w) per output channel, padded to whole blocks."""
    out = np.zeros(blocks * BLOCK, np.int64)
    out[:w.shape[0]] = bias.astype(np.int64) - a.x_zero_point * w.reshape(w.shape[0], -1).astype(np.int64).sum(1)
    return out.astype(np.int32)


def _per_channel(values, m: int, total: int, dtype) -> np.ndarray:
    out = np.zeros(total, dtype)
    out[:m] = values
    return out


def _splat(b: ir.IRBuilder, v: ir.Value, n: int) -> ir.Value:
    vec = b.insert_element(ir.Constant(ir.VectorType(v.type, n), ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, n), [0] * n))


def _const_vec(ty: ir.Type, v, n: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(ty, n), [ir.Constant(ty, v)] * n)


def pmaddwd(b: ir.IRBuilder, x: ir.Value, y: ir.Value, native: bool) -> ir.Value:
    """<16 x i16> x <16 x i16> -> <8 x i32>, adjacent products summed (exact)."""
    if native:
        fn = intrinsic(b.module, "llvm.x86.avx2.pmadd.wd", ir.VectorType(I32, 8), [x.type, y.type])
        return b.call(fn, [x, y])
    v32 = ir.VectorType(I32, 16)
    prod = b.mul(b.sext(x, v32), b.sext(y, v32))
    even = b.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(I32, 8), list(range(0, 16, 2))))
    odd = b.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(I32, 8), list(range(1, 16, 2))))
    return b.add(even, odd)


def requantize(b: ir.IRBuilder, a: Int8ConvAttrs, acc: ir.Value, mult: ir.Value, off: ir.Value, n: int,
               residual: ir.Value | None = None) -> ir.Value:
    """<n x i32> accumulators (and the <n x i32> residual integers when ``a.residual``) -> <n x i8>, as
    convc/ops/quant.py's ``requantize``."""
    def clamp(q: ir.Value, lo: int, hi: int) -> ir.Value:
        q = call_intrinsic(b, "llvm.maxnum.f32", [q, _const_vec(F32, float(lo), n)])
        return call_intrinsic(b, "llvm.minnum.f32", [q, _const_vec(F32, float(hi), n)])
    y = b.fadd(b.fmul(b.sitofp(acc, ir.VectorType(F32, n)), mult), off)
    r = a.residual
    zp, lo, hi = (a.y_zero_point, a.lo, a.hi) if r is None else (r.zero_point, r.lo, r.hi)
    q = clamp(b.fadd(call_intrinsic(b, "llvm.roundeven.f32", [y]), _const_vec(F32, float(zp), n)), lo, hi)
    if r is not None:  # onnxruntime's QLinearAdd: two fused multiply-adds from the constant part
        other = b.sitofp(residual, ir.VectorType(F32, n))
        (first, ra), (second, rb) = ((q, r.conv_ratio), (other, r.input_ratio))[::1 if r.conv_first else -1]
        s = call_intrinsic(b, "llvm.fma.f32", [first, _const_vec(F32, ra, n), _const_vec(F32, r.fixed, n)])
        s = call_intrinsic(b, "llvm.fma.f32", [second, _const_vec(F32, rb, n), s])
        q = clamp(call_intrinsic(b, "llvm.roundeven.f32", [s]), a.lo, a.hi)
    return b.trunc(b.fptosi(q, ir.VectorType(I32, n)), ir.VectorType(I8, n))


def _store_lanes(b: ir.IRBuilder, v: ir.Value, ptr: ir.Value, count: int) -> None:
    """The first ``count`` bytes of ``v`` (all 8 in one store when ``count`` is 8)."""
    if count == LANES:
        b.store(v, ptr, align=1)
        return
    for lane in range(count):
        b.store(b.extract_element(v, ir.Constant(I32, lane)), gep(b, ptr, lane, I8))


class _Geometry:
    def __init__(self, em: ModuleEmitter, op: Op) -> None:
        a: Int8ConvAttrs = op.attrs
        self.a = a
        self.n, self.h, self.w, self.c = em.tensor(op.inputs[0]).shape
        _, self.oh, self.ow, self.m = em.tensor(op.outputs[0]).shape
        self.kh, self.kw = a.kernel_shape
        self.pixels = self.n * self.oh * self.ow
        self.signed = em.tensor(op.inputs[0]).dtype == np.int8

    def pixel_origin(self, b: ir.IRBuilder, p: ir.Value) -> tuple[ir.Value, ir.Value, ir.Value]:
        """(n, top row, left column) of output pixel p's window (may be negative in the padding)."""
        a = self.a
        per_image = self.oh * self.ow
        n = b.udiv(p, i64(per_image))
        r = b.urem(p, i64(per_image))
        oh, ow = b.udiv(r, i64(self.ow)), b.urem(r, i64(self.ow))
        top = b.sub(b.mul(oh, i64(a.strides[0])), i64(a.pads[0]))
        left = b.sub(b.mul(ow, i64(a.strides[1])), i64(a.pads[1]))
        return n, top, left

    def tap_row(self, b: ir.IRBuilder, x: ir.Value, zrow: ir.Value, origin, i, j) -> ir.Value:
        """Pointer to the C input bytes of tap (i, j) (ints or i64 values), or to the zero-point row when it
        is padding."""
        n, top, left = origin
        ih = b.add(top, b.mul(as_i64(b, i), i64(self.a.dilations[0])))
        iw = b.add(left, b.mul(as_i64(b, j), i64(self.a.dilations[1])))
        ok_h = b.icmp_unsigned("<", ih, i64(self.h))  # negative wraps to huge: one compare per bound
        ok_w = b.icmp_unsigned("<", iw, i64(self.w))
        idx = b.mul(b.add(b.mul(b.add(b.mul(n, i64(self.h)), ih), i64(self.w)), iw), i64(self.c))
        return b.select(b.and_(ok_h, ok_w), gep(b, x, idx, I8), zrow)


def _emit_dense(em: ModuleEmitter, op: Op, geo: _Geometry) -> KernelCall:
    a, c, m = geo.a, geo.c, geo.m
    w = em.tensor(op.inputs[1]).data
    native = em.isa.name in ("avx2", "avx512")
    # u8 activations and weights whose pairs cannot saturate take vpmaddubsw, four channels a step
    group = 4 if native and not geo.signed and fits_pmaddubsw(w) else 2
    packed, blocks = pack_weights(w, group, np.int8 if group == 4 else np.int16)
    pairs, taps = -(-c // group), geo.kh * geo.kw
    xdtype = np.int8 if geo.signed else np.uint8
    tables = [em.derived_constant(packed, packed.dtype),
              em.derived_constant(folded_bias(a, w, em.tensor(op.inputs[2]).data, blocks), np.int32),
              em.derived_constant(_per_channel(a.multiplier, m, blocks * BLOCK, np.float32)),
              em.derived_constant(_per_channel(a.offset, m, blocks * BLOCK, np.float32)),
              em.derived_constant(np.full(pairs * group, a.x_zero_point, np.int64).astype(xdtype), xdtype)]
    res = op.inputs[3:]  # the residual input, when a.residual
    res_signed = bool(res) and em.tensor(res[0]).dtype == np.int8
    fn, b = em.function(op.name, 7 + len(res), parallel=True)
    x, y, wp, bias, mult, off, zrow = fn.args[:7]
    v16 = ir.VectorType(I16, 16)
    mr_main = MR_UBS if group == 4 else MR
    tiles = geo.pixels // mr_main

    vacc = ir.VectorType(I32, LANES)
    slots = [[alloca_entry(b, vacc, f"acc{r}_{v}") for v in range(NV)] for r in range(mr_main)]

    def tile(p0: ir.Value, mr: int) -> None:
        origins = [geo.pixel_origin(b, b.add(p0, i64(r))) for r in range(mr)]
        with for_range(b, blocks, name="blk") as blk:
            for r in range(mr):
                for v in range(NV):
                    b.store(_const_vec(I32, 0, LANES), slots[r][v])
            wblock = b.mul(blk, i64(taps * pairs * BLOCK * group))
            # taps in a loop, not unrolled: the code stays small (LLVM time grows with it)
            with for_range(b, taps, name="tap") as t:
                i, j = b.udiv(t, i64(geo.kw)), b.urem(t, i64(geo.kw))
                rows = [geo.tap_row(b, x, zrow, origins[r], i, j) for r in range(mr)]
                wtap = b.add(wblock, b.mul(t, i64(pairs * BLOCK * group)))
                if group == 4:
                    if c // 4:
                        with for_range(b, c // 4, name="quad") as k:
                            _quad_step(b, rows, wp, wtap, k, slots, 4)
                    if c % 4:
                        _quad_step(b, rows, wp, wtap, i64(c // 4), slots, c % 4)
                else:
                    if c // 2:
                        with for_range(b, c // 2, name="pair") as k:
                            _pair_step(b, rows, wp, wtap, k, slots, False, native, geo.signed, v16)
                    if c % 2:
                        _pair_step(b, rows, wp, wtap, i64(c // 2), slots, True, native, geo.signed, v16)
            base = b.mul(blk, i64(BLOCK))
            for v in range(NV):
                ch = b.add(base, i64(v * LANES))
                bv = b.load(gep(b, bias, ch, I32), typ=vacc, align=4)
                mv = b.load(gep(b, mult, ch, F32), typ=ir.VectorType(F32, LANES), align=4)
                ov = b.load(gep(b, off, ch, F32), typ=ir.VectorType(F32, LANES), align=4)
                for r in range(mr):
                    row = b.mul(b.add(p0, i64(r)), i64(m))
                    # a block past the channels loads from channel 0 (nothing is stored there)
                    inside = b.select(b.icmp_unsigned("<", ch, i64(m)), ch, i64(0))
                    rv = _load_channels(b, gep(b, fn.args[7], row, I8), inside, m, res_signed) if res else None
                    q = requantize(b, a, b.add(b.load(slots[r][v], typ=vacc), bv), mv, ov, LANES, rv)
                    _store_block(b, q, gep(b, y, b.add(row, ch), I8), ch, m)

    lo, hi = em.thread_range(b, fn, tiles)
    with for_range(b, hi, start=lo, name="tile") as t:
        tile(b.mul(t, i64(mr_main)), mr_main)
    # the last pixels (fewer than a tile) on the first thread
    if geo.pixels % mr_main:
        first = b.icmp_unsigned("==", fn.args[-2], i64(0))
        with b.if_then(first):
            with for_range(b, geo.pixels, start=tiles * mr_main, name="px") as p:
                tile(p, 1)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0], *tables, *res])


def _store_block(b: ir.IRBuilder, q: ir.Value, out: ir.Value, ch: ir.Value, m: int) -> None:
    """Store 8 channels' bytes, or only those below m in the last block."""
    if m % LANES == 0:
        full = b.icmp_unsigned("<", ch, i64(m))
        with b.if_then(full):
            b.store(q, out, align=1)
        return
    full = b.icmp_unsigned("<=", b.add(ch, i64(LANES)), i64(m))
    with b.if_else(full) as (then, otherwise):
        with then:
            b.store(q, out, align=1)
        with otherwise:
            for lane in range(LANES):
                inside = b.icmp_unsigned("<", b.add(ch, i64(lane)), i64(m))
                with b.if_then(inside):
                    b.store(b.extract_element(q, ir.Constant(I32, lane)), gep(b, out, lane, I8))


def _broadcast_pair(b: ir.IRBuilder, row: ir.Value, k: ir.Value, single: bool, signed: bool, v16) -> ir.Value:
    """<16 x i16>: the bytes row[k], row[k+1] widened and repeated 8 times (row[k], 0 when ``single``)."""
    if single:
        byte = b.load(gep(b, row, k, I8), typ=I8)
        pair = b.zext(byte, I16) if not signed else b.and_(b.sext(byte, I16), ir.Constant(I16, 0xFF))
        # the high byte is 0: widened it is (x, 0), as a zero weight for the missing channel expects
    else:
        pair = b.load(gep(b, row, k, I8), typ=I16, align=1)
    bytes16 = b.bitcast(_splat(b, pair, 8), ir.VectorType(I8, 16))
    return b.sext(bytes16, v16) if signed else b.zext(bytes16, v16)


def _pair_step(b, rows, wp, wtap, k, slots, single: bool, native: bool, signed: bool, v16) -> None:
    """slots[r][v] += pixel r's channel pair k times the packed weights of vector v (stack slots, promoted
    to registers by mem2reg)."""
    woff = b.add(wtap, b.mul(k, i64(BLOCK * 2)))
    ws = [b.load(gep(b, wp, b.add(woff, i64(v * LANES * 2)), I16), typ=v16, align=2) for v in range(NV)]
    for r, row in enumerate(rows):
        xa = _broadcast_pair(b, row, b.mul(k, i64(2)), single, signed, v16)
        for v in range(NV):
            acc = b.load(slots[r][v], typ=ir.VectorType(I32, LANES))
            b.store(b.add(acc, pmaddwd(b, xa, ws[v], native)), slots[r][v])


def _quad_step(b: ir.IRBuilder, rows, wp, wtap, k, slots, valid: int) -> None:
    """slots[r][v] += pixel r's channels 4k..4k+3 (the first ``valid`` of them) times the packed int8
    weights of vector v: vpmaddubsw (u8 x s8 pairs into int16, exact by ``fits_pmaddubsw``), then
    vpmaddwd by ones (pairs of int16 into int32)."""
    v32 = ir.VectorType(I8, 32)
    woff = b.add(wtap, b.mul(k, i64(BLOCK * 4)))
    ws = [b.load(gep(b, wp, b.add(woff, i64(v * LANES * 4)), I8), typ=v32, align=1) for v in range(NV)]
    ones = _const_vec(I16, 1, 16)
    ubs = intrinsic(b.module, "llvm.x86.avx2.pmadd.ub.sw", ir.VectorType(I16, 16), [v32, v32])
    wd = intrinsic(b.module, "llvm.x86.avx2.pmadd.wd", ir.VectorType(I32, 8), [ir.VectorType(I16, 16)] * 2)
    for r, row in enumerate(rows):
        at = gep(b, row, b.mul(k, i64(4)), I8)
        if valid == 4:
            quad = b.load(at, typ=I32, align=1)
        else:  # the last channels: no read past the row (its missing channels' weights are 0)
            quad = ir.Constant(I32, 0)
            for j in range(valid):
                byte = b.zext(b.load(gep(b, at, j, I8), typ=I8), I32)
                quad = b.or_(quad, b.shl(byte, ir.Constant(I32, 8 * j)))
        xa = b.bitcast(_splat(b, quad, 8), v32)
        for v in range(NV):
            acc = b.load(slots[r][v], typ=ir.VectorType(I32, LANES))
            b.store(b.add(acc, b.call(wd, [b.call(ubs, [xa, ws[v]]), ones])), slots[r][v])


def _emit_depthwise(em: ModuleEmitter, op: Op, geo: _Geometry) -> KernelCall:
    """One input and one output channel per group: per pixel, 8 channels a vector, int32 multiply-adds."""
    a, c = geo.a, geo.c
    w = em.tensor(op.inputs[1]).data  # (C, 1, KH, KW)
    vecs = -(-c // LANES)
    cp = vecs * LANES
    taps = geo.kh * geo.kw
    wt = np.zeros((taps, cp), np.int32)
    wt[:, :c] = w.reshape(c, taps).T
    bias = np.zeros(cp, np.int32)
    bias[:c] = em.tensor(op.inputs[2]).data
    xdtype = np.int8 if geo.signed else np.uint8
    tables = [em.derived_constant(wt, np.int32), em.derived_constant(bias, np.int32),
              em.derived_constant(_per_channel(a.multiplier, c, cp, np.float32)),
              em.derived_constant(_per_channel(a.offset, c, cp, np.float32)),
              em.derived_constant(np.full(cp, a.x_zero_point, np.int64).astype(xdtype), xdtype)]
    res = op.inputs[3:]
    res_signed = bool(res) and em.tensor(res[0]).dtype == np.int8
    fn, b = em.function(op.name, 7 + len(res), parallel=True)
    x, y, wp, bp, mult, off, zrow = fn.args[:7]
    vi = ir.VectorType(I32, LANES)
    zp = _const_vec(I32, a.x_zero_point, LANES)
    lo, hi = em.thread_range(b, fn, geo.pixels)
    with for_range(b, hi, start=lo, name="px") as p:
        origin = geo.pixel_origin(b, p)
        rows = [geo.tap_row(b, x, zrow, origin, t // geo.kw, t % geo.kw) for t in range(taps)]
        with for_range(b, vecs, name="cv") as cv:
            ch = b.mul(cv, i64(LANES))
            acc = b.load(gep(b, bp, ch, I32), typ=vi, align=4)
            for t, row in enumerate(rows):
                # whole vectors within the row; the last partial vector reads byte by byte
                xs = _load_channels(b, row, ch, c, geo.signed)
                wv = b.load(gep(b, wp, b.add(i64(t * cp), ch), I32), typ=vi, align=4)
                acc = b.add(acc, b.mul(b.sub(xs, zp), wv))
            mv = b.load(gep(b, mult, ch, F32), typ=ir.VectorType(F32, LANES), align=4)
            ov = b.load(gep(b, off, ch, F32), typ=ir.VectorType(F32, LANES), align=4)
            rv = _load_channels(b, gep(b, fn.args[7], b.mul(p, i64(c)), I8), ch, c, res_signed) if res else None
            q = requantize(b, a, acc, mv, ov, LANES, rv)
            _store_block(b, q, gep(b, y, b.add(b.mul(p, i64(c)), ch), I8), ch, c)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0], *tables, *res])


def _load_channels(b: ir.IRBuilder, row: ir.Value, ch: ir.Value, c: int, signed: bool) -> ir.Value:
    """<8 x i32>: row[ch .. ch+8) widened; lanes at or past c read as channel 0's byte (their weight is 0)."""
    vi8 = ir.VectorType(I8, LANES)
    if c % LANES == 0:
        v = b.load(gep(b, row, ch, I8), typ=vi8, align=1)
    else:
        v = ir.Constant(vi8, None)
        for lane in range(LANES):
            idx = b.add(ch, i64(lane))
            safe = b.select(b.icmp_unsigned("<", idx, i64(c)), idx, i64(0))
            v = b.insert_element(v, b.load(gep(b, row, safe, I8), typ=I8), ir.Constant(I32, lane))
    return b.sext(v, ir.VectorType(I32, LANES)) if signed else b.zext(v, ir.VectorType(I32, LANES))


@emitter(OpKind.INT8_CONV)
def emit_int8_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    geo = _Geometry(em, op)
    w = em.tensor(op.inputs[1])
    if op.attrs.group == 1:
        return _emit_dense(em, op, geo)
    if op.attrs.group == geo.c and w.shape[0] == geo.c:
        return _emit_depthwise(em, op, geo)
    raise AssertionError(f"{op.name}: passes/quantize.py places Int8Conv for plain and depthwise convs only")
