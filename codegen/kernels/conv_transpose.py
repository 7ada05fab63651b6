"""Transposed convolution (any spatial rank) as a GEMM into column scratch, then col2im.

Per image and group, ``col[(m, k), p] = sum_c W[c, m, k] * X[c, p]`` is one matrix product of
W's transpose (Mg*K x Cg) with the image (Cg x P), K the kernel taps and P the input positions.
col2im then adds each column entry into output position ``p * stride + k * dilation - pad_begin``
when that lies inside the output; the output starts from the bias. Constant weights are packed once
at compile time for the register-tiled GEMM (blas.py); weights fed at run time use plain loops.
"""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.conv import split_inputs
from convc.ops.conv_transpose import ConvTransposeAttrs
from convc.codegen.llvm_utils import f32, for_range, gep, i64, in_range, linear_index, load, loop_nest, memset_zero, \
    store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.blas import Operand, pack_a
from convc.codegen.kernels.epilogue import epilogue_pass
from convc.codegen.kernels.gemm import matmul_loops


def row_major(shape: tuple[int, ...]) -> list[int]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return strides[::-1]


def emit_col2im(b: ir.IRBuilder, col: ir.Value, y: ir.Value, a: ConvTransposeAttrs, mg: int,
                in_sp: tuple[int, ...], out_sp: tuple[int, ...]) -> None:
    """y[m, o] += col[(m * K + k) * P + p] for every tap k and input position p landing inside the output."""
    r = a.spatial_rank
    taps, p = int(np.prod(a.kernel_shape)), int(np.prod(in_sp))
    out_strides = row_major(out_sp)
    col_strides = [taps * p] + [s * p for s in row_major(a.kernel_shape)] + row_major(in_sp)
    with loop_nest(b, [mg, *a.kernel_shape, *in_sp], name="c2i") as idx:
        m, k, pos = idx[0], idx[1:1 + r], idx[1 + r:]
        inside, offset = None, b.mul(m, i64(int(np.prod(out_sp))))
        for d in range(r):
            o = b.add(b.mul(pos[d], i64(a.strides[d])), b.sub(b.mul(k[d], i64(a.dilations[d])), i64(a.pads_begin[d])))
            ok = in_range(b, o, 0, out_sp[d])
            inside = ok if inside is None else b.and_(inside, ok)
            offset = b.add(offset, b.mul(o, i64(out_strides[d])))
        with b.if_then(inside):
            v = load(b, col, linear_index(b, idx, col_strides))
            store(b, b.fadd(load(b, y, offset), v), y, offset)


@emitter(OpKind.CONV_TRANSPOSE)
def emit_conv_transpose(em: ModuleEmitter, op: Op) -> KernelCall:
    a: ConvTransposeAttrs = op.attrs
    xs, ws, ys = (em.tensor(t).shape for t in (op.inputs[0], op.inputs[1], op.outputs[0]))
    n, c = xs[:2]
    g = a.group
    cg, mg = c // g, ws[1]
    in_sp, out_sp = tuple(xs[2:]), tuple(ys[2:])
    taps, p, q = int(np.prod(a.kernel_shape)), int(np.prod(in_sp)), int(np.prod(out_sp))
    rows = mg * taps  # rows of the column matrix per group
    _, w_name, b_name, r_name = split_inputs(a, op.inputs)
    weight = em.tensor(w_name)
    packed = weight.data is not None
    args: list = list(op.inputs) + [op.outputs[0]]
    if packed:  # W[c, m, k] of each group as the (m*K) x Cg matrix the micro-kernel reads, packed once
        per_group = [pack_a(wg.reshape(cg, rows).T, em.isa) for wg in weight.data.reshape(g, cg, rows)]
        args[1] = em.derived_constant(np.stack(per_group))
        group_stride = per_group[0].size
    args.append(em.scratch(rows * p * 4))
    fn, b = em.function(op.name, len(args))
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if b_name is not None else None
    residual = fn.args[len(op.inputs) - 1] if r_name is not None else None
    y, col = fn.args[len(op.inputs)], fn.args[-1]
    with for_range(b, n, name="batch") as ni:
        with for_range(b, g, name="group") as gi:
            image_group = b.add(b.mul(ni, i64(g)), gi)
            xg = gep(b, x, b.mul(image_group, i64(cg * p)))
            yg = gep(b, y, b.mul(image_group, i64(mg * q)))
            if packed:
                em.gemm.gemm(b, rows, p, cg, gep(b, wt, b.mul(gi, i64(group_stride))), Operand(True), xg,
                             Operand(False, p), col, p)
            else:  # W[g*Cg + c, m, k] read in place as element (m*K + k, c) of a column-major matrix
                memset_zero(b, col, rows * p * 4)
                matmul_loops(b, rows, p, cg, gep(b, wt, b.mul(gi, i64(cg * rows))), (1, rows), xg, (p, 1), col, p)
            with for_range(b, mg, name="oc") as mi:
                v = load(b, bias, b.add(b.mul(gi, i64(mg)), mi)) if bias is not None else f32(0.0)
                row = gep(b, yg, b.mul(mi, i64(q)))
                with for_range(b, q, name="px") as pi:
                    store(b, v, row, pi)
            emit_col2im(b, col, yg, a, mg, in_sp, out_sp)
    epilogue_pass(b, a.epilogue, y, residual, n * g * mg * q)
    b.ret_void()
    return KernelCall(fn, args)
