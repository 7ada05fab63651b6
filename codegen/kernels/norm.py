"""Batch normalization at inference: y = x * scale/sqrt(var+eps) + (B - mean*scale/sqrt(var+eps)); LRN;
layer normalization."""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import F32, F64, alloca_entry, call_intrinsic, f32, for_range, i64, load, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter


@emitter(OpKind.BATCH_NORM)
def emit_batch_norm(em: ModuleEmitter, op: Op) -> KernelCall:
    xs = em.tensor(op.inputs[0]).shape
    n, c = xs[0], xs[1]
    inner = em.tensor(op.inputs[0]).size // (n * c)
    fn, b = em.function(op.name, 6)
    x, scale, bias, mean, var, y = fn.args
    with for_range(b, n, name="batch") as ni:
        with for_range(b, c, name="ch") as ci:
            inv = b.fdiv(load(b, scale, ci), call_intrinsic(b, "llvm.sqrt.f32", [b.fadd(load(b, var, ci),
                                                                                       f32(op.attrs.epsilon))]))
            shift = b.fsub(load(b, bias, ci), b.fmul(load(b, mean, ci), inv))
            base = b.mul(b.add(b.mul(ni, i64(c)), ci), i64(inner))
            with for_range(b, inner, name="px") as j:
                k = b.add(base, j)
                store(b, b.fadd(b.fmul(load(b, x, k), inv), shift), y, k)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


@emitter(OpKind.LRN)
def emit_lrn(em: ModuleEmitter, op: Op) -> KernelCall:
    """Per (image, channel, position), the sum of squares over the channel window, then one pow."""
    a = op.attrs
    xs = em.tensor(op.inputs[0]).shape
    n, c = xs[0], xs[1]
    inner = em.tensor(op.inputs[0]).size // (n * c)
    before, after = (a.size - 1) // 2, a.size // 2
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    total = alloca_entry(b, F32, "sum")
    with for_range(b, n, name="batch") as ni:
        with for_range(b, c, name="ch") as ci:
            base = b.mul(b.add(b.mul(ni, i64(c)), ci), i64(inner))
            lo = b.select(b.icmp_signed("<", ci, i64(before)), i64(0), b.sub(ci, i64(before)))
            hi = b.select(b.icmp_signed(">", b.add(ci, i64(after + 1)), i64(c)), i64(c), b.add(ci, i64(after + 1)))
            with for_range(b, inner, name="px") as j:
                b.store(f32(0.0), total)
                with for_range(b, hi, start=lo, name="win") as cj:
                    v = load(b, x, b.add(b.mul(b.add(b.mul(ni, i64(c)), cj), i64(inner)), j))
                    b.store(b.fadd(b.load(total, typ=F32), b.fmul(v, v)), total)
                scale = b.fadd(f32(a.bias), b.fmul(f32(a.alpha / a.size), b.load(total, typ=F32)))
                k = b.add(base, j)
                store(b, b.fdiv(load(b, x, k), call_intrinsic(b, "llvm.pow.f32", [scale, f32(a.beta)])), y, k)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


@emitter(OpKind.LAYER_NORM)
def emit_layer_norm(em: ModuleEmitter, op: Op) -> KernelCall:
    """Rows split between threads; per row the mean, then the variance around it (two passes: no
    cancellation), summed in double so long rows (a whole C x H x W image) stay float32-exact."""
    xs = em.tensor(op.inputs[0]).shape
    axis = op.attrs.axis
    rows, cols = int(np.prod(xs[:axis], dtype=np.int64)), int(np.prod(xs[axis:], dtype=np.int64))
    has_bias, n_in = len(op.inputs) == 3, len(op.inputs)
    fn, b = em.function(op.name, n_in + len(op.outputs), parallel=True)
    x, scale, y = fn.args[0], fn.args[1], fn.args[n_in]
    bias = fn.args[2] if has_bias else None
    total = alloca_entry(b, F64, "sum")
    zero = ir.Constant(F64, 0.0)
    lo, hi = em.thread_range(b, fn, rows)
    with for_range(b, hi, start=lo, name="row") as r:
        base = b.mul(r, i64(cols))
        b.store(zero, total)
        with for_range(b, cols, name="j") as j:
            b.store(b.fadd(b.load(total, typ=F64), b.fpext(load(b, x, b.add(base, j)), F64)), total)
        mean = b.fdiv(b.load(total, typ=F64), ir.Constant(F64, float(cols)))
        b.store(zero, total)
        with for_range(b, cols, name="j") as j:
            d = b.fsub(b.fpext(load(b, x, b.add(base, j)), F64), mean)
            b.store(b.fadd(b.load(total, typ=F64), b.fmul(d, d)), total)
        var = b.fdiv(b.load(total, typ=F64), ir.Constant(F64, float(cols)))
        inv = b.fdiv(ir.Constant(F64, 1.0),
                     call_intrinsic(b, "llvm.sqrt.f64", [b.fadd(var, ir.Constant(F64, float(op.attrs.epsilon)))]))
        mean32, inv32 = b.fptrunc(mean, F32), b.fptrunc(inv, F32)
        if op.attrs.statistics:
            store(b, mean32, fn.args[n_in + 1], r)
            store(b, inv32, fn.args[n_in + 2], r)
        with for_range(b, cols, name="j") as j:
            k = b.add(base, j)
            v = b.fmul(b.fmul(b.fsub(load(b, x, k), mean32), inv32), load(b, scale, j))
            store(b, b.fadd(v, load(b, bias, j)) if has_bias else v, y, k)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs))
