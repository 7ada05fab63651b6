"""Softmax and LogSoftmax along one axis: max, exp and sum, then scale (or subtract the log), per (outer, inner) position."""
from __future__ import annotations

import math

import numpy as np

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen import vecmath
from convc.codegen.llvm_utils import F32, alloca_entry, f32, fmax, for_range, i64, load, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter


@emitter(OpKind.SOFTMAX, OpKind.LOG_SOFTMAX)
def emit_softmax(em: ModuleEmitter, op: Op) -> KernelCall:
    shape = em.tensor(op.inputs[0]).shape
    axis = op.attrs.axis
    outer, length, inner = int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    mx = alloca_entry(b, F32, "max")
    total = alloca_entry(b, F32, "sum")
    with for_range(b, outer, name="outer") as o:
        with for_range(b, inner, name="inner") as i:
            base = b.add(b.mul(o, i64(length * inner)), i)

            def at(l):
                return b.add(base, b.mul(l, i64(inner)))
            b.store(f32(-math.inf), mx)
            with for_range(b, length, name="l") as l:
                b.store(fmax(b, b.load(mx, typ=F32), load(b, x, at(l))), mx)
            m = b.load(mx, typ=F32)
            b.store(f32(0.0), total)
            with for_range(b, length, name="l") as l:
                e = vecmath.exp(b, b.fsub(load(b, x, at(l)), m))
                store(b, e, y, at(l))
                b.store(b.fadd(b.load(total, typ=F32), e), total)
            if op.kind is OpKind.LOG_SOFTMAX:  # x - max - log(sum): exact where exp underflows
                shift = b.fadd(m, vecmath.log(b, b.load(total, typ=F32)))
                with for_range(b, length, name="l") as l:
                    store(b, b.fsub(load(b, x, at(l)), shift), y, at(l))
            else:
                inv = b.fdiv(f32(1.0), b.load(total, typ=F32))
                with for_range(b, length, name="l") as l:
                    store(b, b.fmul(load(b, y, at(l)), inv), y, at(l))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
