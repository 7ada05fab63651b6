"""Int8Conv: a channels-last 2-D conv over uint8/int8 activations and int8 weights with int32
accumulation and the requantization fused (convc/ops/quant.py defines the arithmetic).

Plain convs (and the 1x1 convs Gemm/MatMul become) run codegen/kernels/int8_dense.py's tiled kernel,
which picks the multiply per layer: ``vpdpbusd`` on VNNI targets, ``vpmaddubsw`` on AVX2 (full-range
8-bit weights split into two halves that cannot saturate it), ``vpmaddwd`` on int16 elsewhere; all exact.
onnxruntime's AVX2 kernels use vpmaddubsw on 8-bit weights as they are, where u8 x s8 pairs saturate in
int16 (255 * 127 * 2 > 32767): its optimized output differs from its own reference lowering (tests/int8
shows it). Depthwise convs take the per-channel kernel here (8 channels a vector).

Shared by both: this module's requantization epilogue, weight packing and geometry. The zero point is
not subtracted per product: the accumulator starts at bias - x_zero_point * sum(w) (folded at compile
time), and a padded tap reads a row of x_zero_point bytes, which contributes exactly that correction's
share, so the border is exact without branches.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.codegen.llvm_utils import F32, I8, I32, as_i64, call_intrinsic, constant, for_range, gep, i64, intrinsic
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.quant import Int8ConvAttrs

I16 = ir.IntType(16)
LANES = 8      # int32 lanes per ymm
NV = 2         # vectors of output channels per tile
BLOCK = LANES * NV


def pack_weights(w: np.ndarray, group: int = 2, dtype=np.int16, block: int = BLOCK) -> tuple[np.ndarray, int]:
    """(M, C, KH, KW) int8 -> [blocks][KH*KW][ceil(C/group)][block channels][group] (zero-padded), and the
    block count: ``group`` consecutive input channels of ``block`` output channels per step."""
    m, c, kh, kw = w.shape
    blocks, groups = -(-m // block), -(-c // group)
    padded = np.zeros((blocks * block, groups * group, kh * kw), dtype)
    padded[:m, :c] = w.reshape(m, c, kh * kw)
    # [block][lane] [group][member] [tap] -> [block][tap][group][lane][member]
    packed = padded.reshape(blocks, block, groups, group, kh * kw).transpose(0, 4, 2, 1, 3)
    return np.ascontiguousarray(packed), blocks


def fits_pmaddubsw(w: np.ndarray) -> bool:
    """vpmaddubsw sums two u8 x s8 products into a saturating int16: exact when |w0| + |w1| <= 128 for
    every pair of adjacent input channels (255 * 128 = 32640), as with 7-bit weights (reduce_range)."""
    m, c = w.shape[:2]
    padded = np.zeros((m, c + c % 2, *w.shape[2:]), np.int32)
    padded[:, :c] = w
    return bool((np.abs(padded.reshape(m, -1, 2, *w.shape[2:])).sum(axis=2) <= 128).all())


def _per_channel(values, m: int, total: int, dtype) -> np.ndarray:
    out = np.zeros(total, dtype)
    out[:m] = values
    return out


def _splat(b: ir.IRBuilder, v: ir.Value, n: int) -> ir.Value:
    vec = b.insert_element(ir.Constant(ir.VectorType(v.type, n), ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, n), [0] * n))


def _const_vec(ty: ir.Type, v, n: int) -> ir.Constant:
    return constant(ir.VectorType(ty, n), (v,) * n)


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
        # compare and select: one vmaxps/vminps each (maxnum/minnum add NaN fix-ups; q is never NaN here)
        low, high = _const_vec(F32, float(lo), n), _const_vec(F32, float(hi), n)
        q = b.select(b.fcmp_ordered(">", q, low), q, low)
        return b.select(b.fcmp_ordered("<", q, high), q, high)
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


def _store_block(b: ir.IRBuilder, q: ir.Value, out: ir.Value, ch: ir.Value, m: int, lanes: int = LANES) -> None:
    """Store ``lanes`` channels' bytes, or only those below m in the last block."""
    if m % lanes == 0:
        full = b.icmp_unsigned("<", ch, i64(m))
        with b.if_then(full):
            b.store(q, out, align=1)
        return
    full = b.icmp_unsigned("<=", b.add(ch, i64(lanes)), i64(m))
    with b.if_else(full) as (then, otherwise):
        with then:
            b.store(q, out, align=1)
        with otherwise:
            for lane in range(lanes):
                inside = b.icmp_unsigned("<", b.add(ch, i64(lane)), i64(m))
                with b.if_then(inside):
                    b.store(b.extract_element(q, ir.Constant(I32, lane)), gep(b, out, lane, I8))


def _emit_depthwise(em: ModuleEmitter, op: Op, geo: _Geometry) -> KernelCall:
    """One input and one output channel per group: per pixel, 8 channels a vector. The zero point is folded
    into the bias as in the dense kernel (padding reads x_zero_point). Each product is one vpmaddwd: the
    activation widened to an int32 lane times the weight in the low int16 of a lane whose high half is 0,
    so the pair sum is x * w exactly (vpmulld is slower on most x86 cores)."""
    a, c = geo.a, geo.c
    w = em.tensor(op.inputs[1]).data  # (C, 1, KH, KW)
    vecs = -(-c // LANES)
    cp = vecs * LANES
    taps = geo.kh * geo.kw
    native = em.isa.name in ("avx2", "avx512")
    wt = np.zeros((taps, cp), np.int32)
    wt[:, :c] = w.reshape(c, taps).T
    if native:
        wt &= 0xFFFF  # the weight in the low int16, 0 above
    bias = np.zeros(cp, np.int64)
    bias[:c] = em.tensor(op.inputs[2]).data.astype(np.int64) - a.x_zero_point * w.reshape(c, taps).astype(np.int64).sum(1)
    bias = bias.astype(np.int32)
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
                if native:
                    v16 = ir.VectorType(I16, 2 * LANES)
                    acc = b.add(acc, pmaddwd(b, b.bitcast(xs, v16), b.bitcast(wv, v16), True))
                else:
                    acc = b.add(acc, b.mul(xs, wv))
            mv = b.load(gep(b, mult, ch, F32), typ=ir.VectorType(F32, LANES), align=4)
            ov = b.load(gep(b, off, ch, F32), typ=ir.VectorType(F32, LANES), align=4)
            rv = _load_channels(b, gep(b, fn.args[7], b.mul(p, i64(c)), I8), ch, c, res_signed) if res else None
            q = requantize(b, a, acc, mv, ov, LANES, rv)
            _store_block(b, q, gep(b, y, b.add(b.mul(p, i64(c)), ch), I8), ch, c)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0], *tables, *res])


def _load_channels(b: ir.IRBuilder, row: ir.Value, ch: ir.Value, c: int, signed: bool,
                   lanes: int = LANES) -> ir.Value:
    """<lanes x i32>: row[ch .. ch+lanes) widened; lanes at or past c read as channel 0's byte (their weight
    is 0)."""
    vi8 = ir.VectorType(I8, lanes)
    if c % lanes == 0:
        v = b.load(gep(b, row, ch, I8), typ=vi8, align=1)
    else:
        v = ir.Constant(vi8, None)
        for lane in range(lanes):
            idx = b.add(ch, i64(lane))
            safe = b.select(b.icmp_unsigned("<", idx, i64(c)), idx, i64(0))
            v = b.insert_element(v, b.load(gep(b, row, safe, I8), typ=I8), ir.Constant(I32, lane))
    return b.sext(v, ir.VectorType(I32, lanes)) if signed else b.zext(v, ir.VectorType(I32, lanes))


@emitter(OpKind.INT8_CONV)
def emit_int8_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    geo = _Geometry(em, op)
    w = em.tensor(op.inputs[1])
    if op.attrs.group == 1:
        from convc.codegen.kernels.int8_dense import emit_dense  # it imports this module's helpers
        return emit_dense(em, op, geo)
    if op.attrs.group == geo.c and w.shape[0] == geo.c:
        return _emit_depthwise(em, op, geo)
    raise AssertionError(f"{op.name}: passes/quantize.py places Int8Conv for plain and depthwise convs only")
