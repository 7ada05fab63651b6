"""Concat as one block copy per input and outer index."""
from __future__ import annotations

import numpy as np

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import for_range, gep, i64, memcpy
from convc.codegen.module import KernelCall, ModuleEmitter, emitter


@emitter(OpKind.CONCAT)
def emit_concat(em: ModuleEmitter, op: Op) -> KernelCall:
    axis = op.attrs.axis
    out = em.tensor(op.outputs[0]).shape
    outer = int(np.prod(out[:axis]))
    inner = int(np.prod(out[axis + 1:]))
    fn, b = em.function(op.name, len(op.inputs) + 1)
    y = fn.args[-1]
    offset = 0
    for k, t in enumerate(op.inputs):
        chunk = em.tensor(t).shape[axis] * inner
        with for_range(b, outer, name="outer") as o:
            dst = gep(b, y, b.add(b.mul(o, i64(out[axis] * inner)), i64(offset)))
            src = gep(b, fn.args[k], b.mul(o, i64(chunk)))
            memcpy(b, dst, src, chunk * 4)
        offset += chunk
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])
