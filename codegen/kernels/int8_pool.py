"""Int8MaxPool and Int8GlobalAveragePool.

Int8MaxPool: a channels-last 2-D max pool on uint8/int8 values (passes/quantize.py places it between a
DequantizeLinear and a QuantizeLinear of equal scale and zero point, where max commutes with both).

Each thread takes whole output rows; a pixel's channels go 32 bytes at a time (``vpmaxub``/``vpmaxsb`` on
AVX2, one vector holds 32 channels, four times a float32 vector) and the rest one by one. Taps outside
the input are skipped (ONNX pads MaxPool with -inf), and every window holds at least one real tap.

Int8GlobalAveragePool sums each image's pixels in int32, 8 channels a vector, and requantizes the sums
(convc/ops/quant.py gives the arithmetic, onnxruntime's QLinearGlobalAveragePool).
"""
from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from convc.codegen.llvm_utils import F32, I8, I32, alloca_entry, call_intrinsic, for_range, gep, i64, in_range
from convc.codegen.kernels.int8_conv import LANES, _const_vec, _load_channels, _store_block
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.quant import QUANTIZED


def _taps(b: ir.IRBuilder, op: Op, shape: tuple[int, ...], n: ir.Value, oh: ir.Value, ow: ir.Value,
          visit: Callable[[ir.Value], None]) -> None:
    """``visit(offset of the tap's pixel in x)`` for every in-bounds tap of output pixel (n, oh, ow)."""
    a = op.attrs
    _, h, w, c = shape
    (kh, kw), (sh, sw), (dh, dw) = a.kernel_shape, a.strides, a.dilations
    top, left = a.pads[0], a.pads[1]
    for i in range(kh):
        ih = b.add(b.mul(oh, i64(sh)), i64(i * dh - top))
        with b.if_then(in_range(b, ih, 0, h)):
            for j in range(kw):
                iw = b.add(b.mul(ow, i64(sw)), i64(j * dw - left))
                with b.if_then(in_range(b, iw, 0, w)):
                    visit(b.mul(b.add(b.mul(b.add(b.mul(n, i64(h)), ih), i64(w)), iw), i64(c)))


@emitter(OpKind.INT8_MAX_POOL)
def emit_int8_max_pool(em: ModuleEmitter, op: Op) -> KernelCall:
    x, y = em.tensor(op.inputs[0]), em.tensor(op.outputs[0])
    signed = x.dtype.name == "int8"
    _, oh_n, ow_n, c = y.shape
    lanes = 4 * em.isa.width  # bytes in one vector register
    whole = c - c % lanes
    vec = ir.VectorType(I8, lanes)
    low = -128 if signed else 0
    fn, b = em.function(op.name, 2, parallel=True)
    xp, yp = fn.args[:2]
    acc_v, acc_s = alloca_entry(b, vec, "acc_v"), alloca_entry(b, I8, "acc_s")
    maxv = f"llvm.{'s' if signed else 'u'}max.v{lanes}i8"
    maxs = f"llvm.{'s' if signed else 'u'}max.i8"
    lo, hi = em.thread_range(b, fn, y.shape[0] * oh_n)
    with for_range(b, hi, start=lo, name="row") as r:
        n, oh = b.udiv(r, i64(oh_n)), b.urem(r, i64(oh_n))
        with for_range(b, ow_n, name="ow") as ow:
            out = b.mul(b.add(b.mul(r, i64(ow_n)), ow), i64(c))
            if whole:
                with for_range(b, whole, step=lanes, name="cv") as ch:
                    b.store(ir.Constant(vec, [low] * lanes), acc_v)

                    def take_vector(pixel: ir.Value, ch=ch) -> None:
                        v = b.load(gep(b, xp, b.add(pixel, ch), I8), typ=vec, align=1)
                        b.store(call_intrinsic(b, maxv, [b.load(acc_v), v]), acc_v)
                    _taps(b, op, x.shape, n, oh, ow, take_vector)
                    b.store(b.load(acc_v), gep(b, yp, b.add(out, ch), I8), align=1)
            if whole < c:
                with for_range(b, c, start=whole, name="cs") as ch:
                    b.store(ir.Constant(I8, low), acc_s)

                    def take_scalar(pixel: ir.Value, ch=ch) -> None:
                        v = b.load(gep(b, xp, b.add(pixel, ch), I8), typ=I8)
                        b.store(call_intrinsic(b, maxs, [b.load(acc_s), v]), acc_s)
                    _taps(b, op, x.shape, n, oh, ow, take_scalar)
                    b.store(b.load(acc_s), gep(b, yp, b.add(out, ch), I8))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


@emitter(OpKind.INT8_GLOBAL_AVERAGE_POOL)
def emit_int8_global_average_pool(em: ModuleEmitter, op: Op) -> KernelCall:
    """Per image and 8 channels: the int32 sum over the pixels, then the requantization in float32."""
    a = op.attrs
    x = em.tensor(op.inputs[0])
    n, h, w, c = x.shape
    count = h * w
    lo, hi = QUANTIZED[a.to]
    vi, vf = ir.VectorType(I32, LANES), ir.VectorType(F32, LANES)
    fn, b = em.function(op.name, 2, parallel=True)
    xp, yp = fn.args[:2]
    acc = alloca_entry(b, vi, "acc")
    start, stop = em.thread_range(b, fn, n)
    with for_range(b, stop, start=start, name="image") as i:
        with for_range(b, -(-c // LANES), name="cv") as cv:
            ch = b.mul(cv, i64(LANES))
            b.store(_const_vec(I32, -a.x_zero_point * count, LANES), acc)
            with for_range(b, count, name="px") as p:
                row = gep(b, xp, b.mul(b.add(b.mul(i, i64(count)), p), i64(c)), I8)
                b.store(b.add(b.load(acc), _load_channels(b, row, ch, c, x.dtype.name == "int8")), acc)
            q = b.fmul(b.sitofp(b.load(acc), vf), _const_vec(F32, a.scale, LANES))
            q = b.fadd(call_intrinsic(b, "llvm.roundeven.f32", [q]), _const_vec(F32, float(a.y_zero_point), LANES))
            q = call_intrinsic(b, "llvm.maxnum.f32", [q, _const_vec(F32, float(lo), LANES)])
            q = call_intrinsic(b, "llvm.minnum.f32", [q, _const_vec(F32, float(hi), LANES)])
            q = b.trunc(b.fptosi(q, vi), ir.VectorType(I8, LANES))
            _store_block(b, q, gep(b, yp, b.add(b.mul(i, i64(c)), ch), I8), ch, c)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])

