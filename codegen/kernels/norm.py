"""Batch normalization at inference: y = x * scale/sqrt(var+eps) + (B - mean*scale/sqrt(var+eps)); LRN."""
from __future__ import annotations

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import F32, alloca_entry, call_intrinsic, f32, for_range, i64, load, store
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
