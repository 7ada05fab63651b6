"""Softmax and LogSoftmax along one axis: max, exp and sum, then scale (or subtract the log).

Two vector forms, split between threads: along a contiguous axis (inner size 1: a classifier's rows)
the lanes run along the axis and the max and sum end with a horizontal reduction; along any other axis
(NCHW class scores of a segmentation net) the lanes are adjacent inner positions, each lane its own
softmax. exp and log are codegen/vecmath.py's. The max propagates NaN, so a row with a NaN is NaN.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from convc.codegen import vecmath
from convc.codegen.kernels.elementwise import vector_map
from convc.codegen.llvm_utils import F32, I32, alloca_entry, constant, f32, fmax, for_range, gep, i64
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.ir import Op
from convc.ops import OpKind


def _splat(b: ir.IRBuilder, v: ir.Value, ty: ir.Type) -> ir.Value:
    """Scalar ``v`` as a value of ``ty`` (itself when ``ty`` is scalar)."""
    if not isinstance(ty, ir.VectorType):
        return v
    one = b.insert_element(ir.Constant(ty, ir.Undefined), v, ir.Constant(I32, 0))
    zeros = constant(ir.VectorType(I32, ty.count), (0,) * ty.count)
    return b.shuffle_vector(one, constant(ty, ir.Undefined), zeros)


def _lanes(b: ir.IRBuilder, v: ir.Value, combine) -> ir.Value:
    """Reduce a vector's lanes to one float with ``combine``."""
    acc = b.extract_element(v, ir.Constant(I32, 0))
    for k in range(1, v.type.count):
        acc = combine(b, acc, b.extract_element(v, ir.Constant(I32, k)))
    return acc


def _columns(b: ir.IRBuilder, kind: OpKind, x: ir.Value, y: ir.Value, base: ir.Value, length: int, inner: int,
             ty: ir.Type) -> None:
    """Softmax of the ``ty``-wide group of adjacent columns at flat index ``base`` (axis stride ``inner``)."""
    def ld(ptr, l):
        return b.load(gep(b, ptr, b.add(base, b.mul(l, i64(inner)))), typ=ty, align=4)

    def st(v, l):
        b.store(v, gep(b, y, b.add(base, b.mul(l, i64(inner)))), align=4)
    mx = alloca_entry(b, ty, "max")
    total = alloca_entry(b, ty, "sum")
    b.store(_splat(b, f32(-math.inf), ty), mx)
    with for_range(b, length, name="l") as l:
        b.store(fmax(b, b.load(mx, typ=ty), ld(x, l)), mx)
    m = b.load(mx, typ=ty)
    b.store(_splat(b, f32(0.0), ty), total)
    with for_range(b, length, name="l") as l:
        e = vecmath.exp(b, b.fsub(ld(x, l), m))
        st(e, l)
        b.store(b.fadd(b.load(total, typ=ty), e), total)
    if kind is OpKind.LOG_SOFTMAX:  # x - max - log(sum): exact where exp underflows
        shift = b.fadd(m, vecmath.log(b, b.load(total, typ=ty)))
        with for_range(b, length, name="l") as l:
            st(b.fsub(ld(x, l), shift), l)
    else:
        inv = b.fdiv(_splat(b, f32(1.0), ty), b.load(total, typ=ty))
        with for_range(b, length, name="l") as l:
            st(b.fmul(ld(y, l), inv), l)


def _row(b: ir.IRBuilder, kind: OpKind, x: ir.Value, y: ir.Value, length: int, width: int) -> None:
    """Softmax of one contiguous row of ``length`` at x (to y): lanes along the row."""
    vec = ir.VectorType(F32, width)
    whole = length - length % width
    mx = alloca_entry(b, vec, "vmax")
    b.store(_splat(b, f32(-math.inf), vec), mx)
    with for_range(b, whole, step=width, name="l") as l:
        b.store(fmax(b, b.load(mx, typ=vec), b.load(gep(b, x, l), typ=vec, align=4)), mx)
    smax = alloca_entry(b, F32, "max")
    b.store(_lanes(b, b.load(mx, typ=vec), fmax), smax)
    with for_range(b, length, start=whole, name="t") as l:
        b.store(fmax(b, b.load(smax, typ=F32), b.load(gep(b, x, l), typ=F32)), smax)
    m = b.load(smax, typ=F32)
    mv = _splat(b, m, vec)
    vsum = alloca_entry(b, vec, "vsum")
    b.store(_splat(b, f32(0.0), vec), vsum)
    with for_range(b, whole, step=width, name="l") as l:
        e = vecmath.exp(b, b.fsub(b.load(gep(b, x, l), typ=vec, align=4), mv))
        b.store(e, gep(b, y, l), align=4)
        b.store(b.fadd(b.load(vsum, typ=vec), e), vsum)
    ssum = alloca_entry(b, F32, "sum")
    b.store(_lanes(b, b.load(vsum, typ=vec), lambda b, u, v: b.fadd(u, v)), ssum)
    with for_range(b, length, start=whole, name="t") as l:
        e = vecmath.exp(b, b.fsub(b.load(gep(b, x, l), typ=F32), m))
        b.store(e, gep(b, y, l))
        b.store(b.fadd(b.load(ssum, typ=F32), e), ssum)
    total = b.load(ssum, typ=F32)
    if kind is OpKind.LOG_SOFTMAX:
        shift = b.fadd(m, vecmath.log(b, total))
        vector_map(b, lambda b, v: b.fsub(v[0], _splat(b, shift, v[0].type)), [x], y, 0, length, width)
    else:
        inv = b.fdiv(f32(1.0), total)
        vector_map(b, lambda b, v: b.fmul(v[0], _splat(b, inv, v[0].type)), [y], y, 0, length, width)


@emitter(OpKind.SOFTMAX, OpKind.LOG_SOFTMAX)
def emit_softmax(em: ModuleEmitter, op: Op) -> KernelCall:
    shape = em.tensor(op.inputs[0]).shape
    axis = op.attrs.axis
    outer, length, inner = int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))
    w = em.isa.width
    fn, b = em.function(op.name, 2, parallel=True)
    x, y = fn.args[:2]
    if inner == 1:  # rows: threads split them
        lo, hi = em.thread_range(b, fn, outer)
        with for_range(b, hi, start=lo, name="row") as o:
            at = b.mul(o, i64(length))
            _row(b, op.kind, gep(b, x, at), gep(b, y, at), length, w)
    else:  # groups of w adjacent columns (then single columns): threads split the groups
        groups, rest = divmod(inner, w)
        per_outer = groups + rest
        lo, hi = em.thread_range(b, fn, outer * per_outer)
        vec = ir.VectorType(F32, w)
        with for_range(b, hi, start=lo, name="item") as item:
            o, g = b.udiv(item, i64(per_outer)), b.urem(item, i64(per_outer))
            # group g < groups: columns [g w, g w + w); else the single column groups w + (g - groups)
            is_vec = b.icmp_unsigned("<", g, i64(groups))
            col = b.select(is_vec, b.mul(g, i64(w)), b.add(b.sub(g, i64(groups)), i64(groups * w)))
            base = b.add(b.mul(o, i64(length * inner)), col)
            with b.if_else(is_vec) as (vector, scalar):
                with vector:
                    _columns(b, op.kind, x, y, base, length, inner, vec)
                with scalar:
                    _columns(b, op.kind, x, y, base, length, inner, F32)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
