"""Batch normalization at inference: y = x * scale/sqrt(var+eps) + (B - mean*scale/sqrt(var+eps))."""
from __future__ import annotations

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import call_intrinsic, f32, for_range, i64, load, store
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
