"""Native bf16 convs: ``vdpbf16ps`` (AVX512_BF16) for the channels-last convs a bf16 compile runs as an
implicit GEMM, on targets that have the instruction.

A bf16 compile (passes/precision.py) rounds every conv's operands to bf16 values and keeps them in float32
storage, so on any CPU a float32 FMA gives exactly the bf16 product; that portable path is what runs
where ``avx512bf16`` is missing. Where it is a feature of the target, a plain (group 1) channels-last conv
runs here instead, at twice the FMA's multiply rate (``../shared/KERNELS-precision.md``: 521 against 256
GFLOP/s per core on an 8x32 tile): per output pixel and kernel tap, input channels are taken in pairs of
bf16 values packed into one 32-bit word, and one ``vdpbf16ps`` adds two products per float32 lane.

The structure is codegen/kernels/int8_dense.py's, for the same reasons: each thread gathers a chunk of
pixel tiles' receptive fields into per-thread scratch as bf16 pairs (the float32 input holds bf16 values
already, so taking each value's high 16 bits is exact; padding taps read a row of zeros), then per block of
output channels runs every tile of the chunk over that block's packed weights (a flat reduction over
taps x channel pairs, the pair broadcast from memory, weight panels reused across the chunk). The
accumulators start at zero; bias, residual and activation are applied when a tile's block is stored.
The last tile clamps its pixels to the last one and stores only its valid rows (no overlap: the output
may share its buffer with the residual).

Rounding: the products of two bf16 values are exact in float32, so the native kernel differs from the
portable one only in summation order (and in ``vdpbf16ps`` flushing subnormal inputs and results, which
bf16 activations and weights of a trained CNN do not reach). Convs with a squeeze-and-excitation input
scale, Winograd layers and depthwise convs keep their float32-FMA kernels over bf16-rounded operands.

This machine's CI may lack AVX512_BF16, where executing the instruction aborts the process: the tests
compile the kernel for znver4/sapphirerapids (assembly checked for vdpbf16ps) and run its data path here
with the instruction written in portable IR (``emulated``)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from convc.codegen.kernels.blas import split_epilogue
from convc.codegen.kernels.conv_nhwc import conv_kernel
from convc.codegen.kernels.epilogue import apply_epilogue, epilogue_pass
from convc.codegen.kernels.int8_conv import _Geometry, _splat, pack_weights
from convc.codegen.llvm_utils import F32, I32, alloca_entry, as_i64, for_range, gep, i64, intrinsic, \
    memset_zero
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.ir import Op
from convc.ops.conv import input_scale_of, split_inputs
from convc.ops.precision import round_bf16

I16 = ir.IntType(16)
PATCH_BUDGET = 128 * 1024  # bytes of gathered pairs per chunk and thread (L2-resident with one weight panel)
GATHER_WIDTH = 16          # floats converted per vector in the gather


@dataclass(frozen=True)
class Bf16Scheme:
    """``nv`` vectors of ``lanes`` float32 output channels per block, ``mr`` pixels per tile: nv * mr
    accumulators (vdpbf16ps's latency needs 16 or more to reach its throughput)."""
    lanes: int
    nv: int = 2
    mr: int = 8
    emulated: bool = False  # vdpbf16ps in portable IR (tests run the data path on machines without it)

    @property
    def block(self) -> int:
        return self.lanes * self.nv


DPBF16_512 = Bf16Scheme(16)  # 16 zmm accumulators of 16 floats: 8 pixels x 32 channels
DPBF16_256 = Bf16Scheme(8)   # AVX512_BF16 with VL on 256-bit vectors (not chosen while 512-bit is there)


def scheme(features: frozenset[str]) -> Bf16Scheme | None:
    """The vdpbf16ps tile for a target with ``features``, or None without AVX512_BF16."""
    if "avx512bf16" not in features:
        return None
    return DPBF16_512 if "avx512f" in features else DPBF16_256 if "avx512vl" in features else None


def native_scheme(em: ModuleEmitter, op: Op) -> Bf16Scheme | None:
    """The scheme this channels-last implicit-GEMM conv runs natively in bf16 with, or None (a float32
    compile, a target without AVX512_BF16, or a conv with an input scale)."""
    if em.graph.metadata.get("precision") != "bf16" or input_scale_of(op.attrs, op.inputs) is not None:
        return None
    return scheme(em.features)


def pack_pairs(w: np.ndarray, block: int) -> tuple[np.ndarray, int]:
    """(M, C, KH, KW) float32 weights (bf16 values) -> uint32 words [blocks][taps][ceil(C/2)][block], each
    word two consecutive input channels' bf16 bits (the even channel in the low half, as vdpbf16ps pairs
    them), zero-padded; and the block count."""
    bits = (round_bf16(np.ascontiguousarray(w, np.float32)).view(np.uint32) >> 16).astype(np.uint16)
    packed, blocks = pack_weights(bits, 2, np.uint16, block)  # [block][tap][pair][lane][member]
    return np.ascontiguousarray(packed).view(np.uint32).reshape(packed.shape[:-1]), blocks


def emit_bf16_conv(em: ModuleEmitter, op: Op, s: Bf16Scheme) -> KernelCall:
    a = op.attrs
    geo = _Geometry(em, op)
    c, m, pixels = geo.c, geo.m, geo.pixels
    _, weight, bias_name, residual_name = split_inputs(a, op.inputs)
    packed, blocks = pack_pairs(em.tensor(weight).data, s.block)
    taps = geo.kh * geo.kw
    cg = c + c % 2
    kdim = taps * cg                 # bf16 values of a pixel's receptive field
    steps = kdim // 2                # channel pairs: one vdpbf16ps each
    mr = min(s.mr, pixels)
    tiles = -(-pixels // mr)
    per_thread = -(-tiles // em.threads)
    tile_bytes = mr * kdim * 2
    chunk = max(1, min(per_thread, PATCH_BUDGET // tile_bytes))
    zero_bytes = -(-c * 4 // 64) * 64
    mine = zero_bytes + chunk * tile_bytes
    k = conv_kernel(em, op, packed.view(np.float32), m, (em.scratch(mine, per_thread=True),),
                    kind=f"bf16_dot{s.lanes}{'e' if s.emulated else ''}")
    if k.b is None:
        return KernelCall(k.fn, k.names)
    b, fn = k.b, k.fn
    in_kernel, after = split_epilogue(a.epilogue)
    scratch = em.thread_scratch(b, k.extra[0], mine, fn.args[-2])
    zrow = scratch
    patch = gep(b, scratch, zero_bytes // 4)
    memset_zero(b, zrow, zero_bytes)
    vacc = ir.VectorType(F32, s.lanes)
    vword = ir.VectorType(I32, s.lanes)
    slots = [[alloca_entry(b, vacc, f"acc{r}_{v}") for v in range(s.nv)] for r in range(mr)]

    def pixel(t: ir.Value, r: int) -> ir.Value:
        """Row r of tile t, clamped to the last pixel (the last tile computes its rows past the end again)."""
        p = b.add(b.mul(t, i64(mr)), i64(r))
        return b.select(b.icmp_unsigned("<", p, i64(pixels)), p, i64(pixels - 1))

    def valid_rows(t: ir.Value) -> ir.Value:
        left = b.sub(i64(pixels), b.mul(t, i64(mr)))
        return b.select(b.icmp_unsigned("<", left, i64(mr)), left, i64(mr))

    def gather(t: ir.Value, dst: ir.Value) -> None:
        for r in range(mr):
            origin = geo.pixel_origin(b, pixel(t, r))
            with for_range(b, taps, name="gtap") as tap:
                i, j = b.udiv(tap, i64(geo.kw)), b.urem(tap, i64(geo.kw))
                src = _tap_row(b, geo, k.x, zrow, origin, i, j)
                _to_bf16_row(b, src, gep(b, dst, b.add(i64(r * kdim), b.mul(tap, i64(cg))), I16), c, cg)

    def compute(t: ir.Value, blk: ir.Value, src: ir.Value) -> None:
        for row in slots:
            for slot in row:
                b.store(ir.Constant(vacc, [0.0] * s.lanes), slot)
        wblock = b.mul(blk, i64(steps * s.block))
        with for_range(b, steps, name="k") as kk:
            woff = b.add(wblock, b.mul(kk, i64(s.block)))
            ws = [b.load(gep(b, k.wt, b.add(woff, i64(v * s.lanes)), I32), typ=vword, align=4) for v in range(s.nv)]
            for r in range(mr):
                word = b.load(gep(b, src, b.add(i64(r * kdim), b.mul(kk, i64(2))), I16), typ=I32, align=2)
                xv = _splat(b, word, s.lanes)
                for v in range(s.nv):
                    b.store(_dot_add(b, s, b.load(slots[r][v], typ=vacc), xv, ws[v]), slots[r][v])
        rows = valid_rows(t)
        base = b.mul(blk, i64(s.block))
        for v in range(s.nv):
            ch = b.add(base, i64(v * s.lanes))
            with b.if_then(b.icmp_unsigned("<", ch, i64(m))):
                bias = _load_lanes(b, k.bias, ch, m, s.lanes) if k.bias is not None else None
                for r in range(mr):
                    with b.if_then(b.icmp_unsigned("<", i64(r), rows)):
                        p = b.add(b.mul(t, i64(mr)), i64(r))
                        value = b.load(slots[r][v], typ=vacc)
                        if bias is not None:
                            value = b.fadd(value, bias)
                        res = _load_lanes(b, gep(b, k.residual, b.mul(p, i64(m))), ch, m, s.lanes) \
                            if k.residual is not None else None
                        value = apply_epilogue(b, in_kernel, value, res)
                        _store_lanes(b, value, gep(b, k.y, b.mul(p, as_i64(b, k.ldc))), ch, m, s.lanes)

    lo, hi = em.thread_range(b, fn, tiles)
    with for_range(b, hi, start=lo, step=chunk, name="chunk") as c0:
        c1 = b.add(c0, i64(chunk))
        c1 = b.select(b.icmp_unsigned("<", c1, hi), c1, hi)
        with for_range(b, c1, start=c0, name="gt") as t:
            gather(t, gep(b, patch, b.mul(b.sub(t, c0), i64(tile_bytes // 2)), I16))
        with for_range(b, blocks, name="blk") as blk:
            with for_range(b, c1, start=c0, name="tile") as t:
                compute(t, blk, gep(b, patch, b.mul(b.sub(t, c0), i64(tile_bytes // 2)), I16))
        if not after.empty:  # an activation the tile cannot apply in registers: over each finished row
            with for_range(b, b.mul(c1, i64(mr)), start=b.mul(c0, i64(mr)), name="arow") as p:
                with b.if_then(b.icmp_unsigned("<", p, i64(pixels))):
                    epilogue_pass(b, after, gep(b, k.y, b.mul(p, as_i64(b, k.ldc))), None, m)
    b.ret_void()
    return KernelCall(fn, k.names)


def _tap_row(b: ir.IRBuilder, geo: _Geometry, x: ir.Value, zrow: ir.Value, origin, i, j) -> ir.Value:
    """Pointer to the C input floats under tap (i, j) of a pixel's window, or to the zero row in the padding."""
    n, top, left = origin
    ih = b.add(top, b.mul(as_i64(b, i), i64(geo.a.dilations[0])))
    iw = b.add(left, b.mul(as_i64(b, j), i64(geo.a.dilations[1])))
    inside = b.and_(b.icmp_unsigned("<", ih, i64(geo.h)), b.icmp_unsigned("<", iw, i64(geo.w)))  # negatives wrap
    idx = b.mul(b.add(b.mul(b.add(b.mul(n, i64(geo.h)), ih), i64(geo.w)), iw), i64(geo.c))
    return b.select(inside, gep(b, x, idx), zrow)


def _to_bf16_row(b: ir.IRBuilder, src: ir.Value, dst: ir.Value, c: int, cg: int) -> None:
    """dst[0:c] = the high 16 bits of src[0:c] (bf16 values stored as float32: exact), dst[c:cg] = 0."""
    n = GATHER_WIDTH
    vf, vi, vh = ir.VectorType(F32, n), ir.VectorType(I32, n), ir.VectorType(I16, n)
    if c // n:
        with for_range(b, c // n, name="cv") as q:
            at = b.mul(q, i64(n))
            bits = b.bitcast(b.load(gep(b, src, at), typ=vf, align=4), vi)
            high = b.trunc(b.lshr(bits, ir.Constant(vi, [16] * n)), vh)
            b.store(high, gep(b, dst, at, I16), align=2)
    for j in range(c - c % n, c):
        bits = b.bitcast(b.load(gep(b, src, j), typ=F32), I32)
        b.store(b.trunc(b.lshr(bits, ir.Constant(I32, 16)), I16), gep(b, dst, j, I16))
    for j in range(c, cg):
        b.store(ir.Constant(I16, 0), gep(b, dst, j, I16))


def _dot_add(b: ir.IRBuilder, s: Bf16Scheme, acc: ir.Value, xv: ir.Value, wv: ir.Value) -> ir.Value:
    """acc + x_odd * w_odd + x_even * w_even per lane, each lane's word holding two bf16 values."""
    n = s.lanes
    if s.emulated:  # vdpbf16ps's order: the odd (high) products first; each product is exact in float32
        vi, vf = ir.VectorType(I32, n), ir.VectorType(F32, n)
        high = ir.Constant(vi, [-65536] * n)
        for part in (lambda v: b.and_(v, high), lambda v: b.shl(v, ir.Constant(vi, [16] * n))):
            acc = b.fadd(acc, b.fmul(b.bitcast(part(xv), vf), b.bitcast(part(wv), vf)))
        return acc
    fn = intrinsic(b.module, f"llvm.x86.avx512bf16.dpbf16ps.{32 * n}", acc.type, [acc.type, xv.type, wv.type])
    return b.call(fn, [acc, xv, wv])


def _load_lanes(b: ir.IRBuilder, ptr: ir.Value, ch: ir.Value, m: int, lanes: int) -> ir.Value:
    """<lanes x float> ptr[ch .. ch + lanes); in a block past m, lanes at or past m read as ptr[0] (never stored)."""
    vec = ir.VectorType(F32, lanes)
    if m % lanes == 0:
        return b.load(gep(b, ptr, ch), typ=vec, align=4)
    with b.if_else(b.icmp_unsigned("<=", b.add(ch, i64(lanes)), i64(m))) as (then, otherwise):
        with then:
            whole, whole_block = b.load(gep(b, ptr, ch), typ=vec, align=4), b.block
        with otherwise:
            part = ir.Constant(vec, None)
            for lane in range(lanes):
                idx = b.add(ch, i64(lane))
                safe = b.select(b.icmp_unsigned("<", idx, i64(m)), idx, i64(0))
                part = b.insert_element(part, b.load(gep(b, ptr, safe), typ=F32), ir.Constant(I32, lane))
            part_block = b.block
    v = b.phi(vec)
    v.add_incoming(whole, whole_block)
    v.add_incoming(part, part_block)
    return v


def _store_lanes(b: ir.IRBuilder, value: ir.Value, row: ir.Value, ch: ir.Value, m: int, lanes: int) -> None:
    """row[ch .. ch + lanes) = value, only the lanes below m."""
    if m % lanes == 0:
        b.store(value, gep(b, row, ch), align=4)
        return
    full = b.icmp_unsigned("<=", b.add(ch, i64(lanes)), i64(m))
    with b.if_else(full) as (then, otherwise):
        with then:
            b.store(value, gep(b, row, ch), align=4)
        with otherwise:
            for lane in range(lanes):
                idx = b.add(ch, i64(lane))
                with b.if_then(b.icmp_unsigned("<", idx, i64(m))):
                    b.store(b.extract_element(value, ir.Constant(I32, lane)), gep(b, row, idx))


EMULATED_512 = dataclasses.replace(DPBF16_512, emulated=True)
EMULATED_256 = dataclasses.replace(DPBF16_256, emulated=True)
