"""Im2Col as a native kernel: the conv's im2col loop, once per image, into an arena tensor."""
from __future__ import annotations

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import for_range, gep, i64
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.conv import as_2d, emit_im2col, spatial_2d


@emitter(OpKind.IM2COL)
def emit_im2col_op(em: ModuleEmitter, op: Op) -> KernelCall:
    a = as_2d(op.attrs.as_conv())
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    n, c = xs[:2]
    h, w = spatial_2d(xs)
    oh, ow = spatial_2d(ys)
    fn, b = em.function(op.name, 2)
    x, col = fn.args
    with for_range(b, n, name="batch") as ni:
        emit_im2col(b, gep(b, x, b.mul(ni, i64(c * h * w))), gep(b, col, b.mul(ni, i64(ys[1] * oh * ow))),
                    c, h, w, a, oh, ow)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
