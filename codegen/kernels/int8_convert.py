"""QuantizeLinear and DequantizeLinear kernels: float32 <-> uint8/int8 (and int32 -> float32), exactly
as convc/ops/quant.py's references compute them.

Quantize: x / scale (a float32 division, as onnxruntime's MLAS and the ONNX reference do, so the
integers agree), rounded half to even (``llvm.roundeven``: ``vroundps`` with mode 8), plus the zero
point, clamped to the type's range in float (maxnum/minnum also send NaN to the low end), then
truncated to bytes. Dequantize: (x - zero_point) converted to float32 (exact), times scale.

A per-tensor scale is an immediate and the kernel splits the flat range between threads in whole
vectors; a per-channel one is a constant table read once per row of the channel axis.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from llvmlite import ir

from convc.codegen.llvm_utils import F32, I8, I32, as_i64, call_intrinsic, for_range, gep, i64, load
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.quant import QUANTIZED

ELEMENT = {"uint8": I8, "int8": I8, "int32": I32, "float32": F32}


def _vec(ty: ir.Type, n: int | None) -> ir.Type:
    return ty if n is None else ir.VectorType(ty, n)


def _splat(v: ir.Constant, n: int | None) -> ir.Value:
    return v if n is None else ir.Constant(ir.VectorType(v.type, n), [v] * n)


def _broadcast(b: ir.IRBuilder, v: ir.Value, n: int | None) -> ir.Value:
    if n is None:
        return v
    if isinstance(v, ir.Constant):
        return _splat(v, n)
    vec = b.insert_element(ir.Constant(ir.VectorType(v.type, n), ir.Undefined), v, ir.Constant(I32, 0))
    return b.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(I32, n), [0] * n))


Body = Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value, int | None], ir.Value]


def _map_range(b: ir.IRBuilder, body: Body, x: ir.Value, y: ir.Value, src: ir.Type, dst: ir.Type,
               lo, hi, width: int, scale: ir.Value, zp: ir.Value) -> None:
    """y[i] = body(x[i]) for i in [lo, hi): ``width`` lanes at a time, then the rest one by one."""
    lo, hi = as_i64(b, lo), as_i64(b, hi)
    whole = b.sub(hi, b.urem(b.sub(hi, lo), i64(width)))
    s, z = _broadcast(b, scale, width), _broadcast(b, zp, width)
    with for_range(b, whole, start=lo, step=width, name="v") as i:
        v = b.load(gep(b, x, i, src), typ=ir.VectorType(src, width), align=1)
        b.store(body(b, v, s, z, width), gep(b, y, i, dst), align=1)
    with for_range(b, hi, start=whole, name="s") as i:
        b.store(body(b, load(b, x, i, src), scale, zp, None), gep(b, y, i, dst))


def _quantize_body(to: str) -> Body:
    lo, hi = QUANTIZED[to]

    def body(b: ir.IRBuilder, x: ir.Value, scale: ir.Value, zp: ir.Value, n: int | None) -> ir.Value:
        q = call_intrinsic(b, "llvm.roundeven.f32", [b.fdiv(x, scale)])
        q = b.fadd(q, zp)
        q = call_intrinsic(b, "llvm.maxnum.f32", [q, _splat(ir.Constant(F32, float(lo)), n)])
        q = call_intrinsic(b, "llvm.minnum.f32", [q, _splat(ir.Constant(F32, float(hi)), n)])
        return b.trunc(b.fptosi(q, _vec(I32, n)), _vec(I8, n))
    return body


def _dequantize_body(frm: str) -> Body:
    def body(b: ir.IRBuilder, x: ir.Value, scale: ir.Value, zp: ir.Value, n: int | None) -> ir.Value:
        wide = b.zext(x, _vec(I32, n)) if frm == "uint8" else b.sext(x, _vec(I32, n)) if frm == "int8" else x
        return b.fmul(b.sitofp(b.sub(wide, zp), _vec(F32, n)), scale)
    return body


def _emit(em: ModuleEmitter, op: Op, body: Body, src: str, dst: str, zp_type: ir.Type) -> KernelCall:
    x, scale, zp = (em.tensor(t) for t in op.inputs)
    if scale.data is None or zp.data is None:
        raise AssertionError(f"{op.name}: scale and zero point are constants by import")
    scales = np.asarray(scale.data, np.float32).reshape(-1)
    zps = np.asarray(zp.data).reshape(-1)
    zp_const = (lambda v: ir.Constant(F32, float(v))) if zp_type is F32 else (lambda v: ir.Constant(I32, int(v)))
    n, w = x.size, em.isa.width
    src_t, dst_t = ELEMENT[src], ELEMENT[dst]
    if scales.size == 1:
        fn, b = em.function(op.name, 2, parallel=True)
        lo, hi = em.thread_range(b, fn, -(-n // w))
        hi = b.mul(hi, i64(w))
        hi = b.select(b.icmp_unsigned("<", hi, i64(n)), hi, i64(n))
        _map_range(b, body, fn.args[0], fn.args[1], src_t, dst_t, b.mul(lo, i64(w)), hi, w,
                   ir.Constant(F32, float(scales[0])), zp_const(zps[0]))
        b.ret_void()
        return KernelCall(fn, [op.inputs[0], op.outputs[0]])
    axis = op.attrs.axis
    channels = x.shape[axis]
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    rows = n // inner
    tables = [em.derived_constant(scales), em.derived_constant(zps, np.float32 if zp_type is F32 else np.int32)]
    fn, b = em.function(op.name, 4, parallel=True)
    xp, yp, sp, zpp = fn.args[:4]
    lo, hi = em.thread_range(b, fn, rows)
    with for_range(b, hi, start=lo, name="row") as r:
        c = b.urem(r, i64(channels))
        start = b.mul(r, i64(inner))
        _map_range(b, body, xp, yp, src_t, dst_t, start, b.add(start, i64(inner)), w,
                   load(b, sp, c), load(b, zpp, c, zp_type))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0], *tables])


@emitter(OpKind.QUANTIZE_LINEAR)
def emit_quantize(em: ModuleEmitter, op: Op) -> KernelCall:
    return _emit(em, op, _quantize_body(op.attrs.to), "float32", op.attrs.to, F32)


@emitter(OpKind.DEQUANTIZE_LINEAR)
def emit_dequantize(em: ModuleEmitter, op: Op) -> KernelCall:
    frm = em.tensor(op.inputs[0]).dtype.name
    return _emit(em, op, _dequantize_body(frm), frm, "float32", I32)
