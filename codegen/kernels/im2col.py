"""Im2Col as a native kernel: the rows of every image's im2col matrix, split between threads.

A conv that gathers its own im2col blocks (ConvAlgorithm.IM2COL_FUSED) has no Im2Col op: the
lowering pass (passes/im2col.py) made that choice, so every Im2Col op here is written in full.
1-D ones arrive as 2-D (passes/conv1d.py)."""
from __future__ import annotations

from convc.codegen.kernels.conv import im2col_row
from convc.codegen.llvm_utils import for_range, gep, i64
from convc.codegen.module import KernelCall, ModuleEmitter, emitter

from convc.ir import Op
from convc.ops import OpKind


@emitter(OpKind.IM2COL)
def emit_im2col_op(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    n, c, h, w = xs
    rows, oh, ow = ys[1:]
    fn, b = em.function(op.name, 2, parallel=True)
    x, col = fn.args[:2]
    lo, hi = em.thread_range(b, fn, n * rows)  # the rows of every image, split between threads
    with for_range(b, hi, start=lo, name="task") as t:
        ni = b.udiv(t, i64(rows))
        im2col_row(b, gep(b, x, b.mul(ni, i64(c * h * w))), gep(b, col, b.mul(ni, i64(rows * oh * ow))),
                   b.urem(t, i64(rows)), c, h, w, a, oh, ow)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
