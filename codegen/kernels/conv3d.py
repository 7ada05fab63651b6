"""Convolution of spatial rank 3 (or more) as direct loops: the 1-D/2-D path (conv.py, im2col + GEMM) stays
specialized for the CNN shapes that matter; volumetric convs are rare enough that plain loops serve.

emit_conv (conv.py) hands these convs here. The loop order keeps the innermost loop on the last output
axis, contiguous in Y: y[n, m, o] starts from the bias, then every (input channel, tap) adds
w * x[n, c, o * stride + tap * dilation - pad_begin] where that input position exists.
"""
from __future__ import annotations

import numpy as np

from convc.ir import Op
from convc.ops.conv import ConvAttrs, split_inputs
from convc.codegen.llvm_utils import f32, for_range, gep, i64, in_range, load, loop_nest, store
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.codegen.kernels.epilogue import epilogue_pass


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


def emit_conv3d(em: ModuleEmitter, op: Op) -> KernelCall:
    a: ConvAttrs = op.attrs
    r = a.spatial_rank
    x_name, w_name, b_name, r_name = split_inputs(a, op.inputs)
    xs, ws, ys = (em.tensor(t).shape for t in (x_name, w_name, op.outputs[0]))
    n, c = xs[:2]
    m = ws[0]
    g = a.group
    cg, mg = c // g, m // g
    in_sp, out_sp = tuple(xs[2:]), tuple(ys[2:])
    plane_in, plane_out = int(np.prod(in_sp)), int(np.prod(out_sp))
    taps = int(np.prod(a.kernel_shape))
    in_st, out_st, k_st = _strides(in_sp), _strides(out_sp), _strides(a.kernel_shape)
    args = list(op.inputs) + [op.outputs[0]]
    fn, b = em.function(op.name, len(args))
    x, w = fn.args[0], fn.args[1]
    bias = fn.args[2] if b_name is not None else None
    residual = fn.args[len(op.inputs) - 1] if r_name is not None else None
    y = fn.args[len(op.inputs)]
    with for_range(b, n, name="batch") as ni:
        with for_range(b, m, name="oc") as mi:
            gi = b.udiv(mi, i64(mg))
            y_plane = gep(b, y, b.mul(b.add(b.mul(ni, i64(m)), mi), i64(plane_out)))
            start = load(b, bias, mi) if bias is not None else f32(0.0)
            with for_range(b, plane_out, name="px") as pi:
                store(b, start, y_plane, pi)
            with loop_nest(b, [cg, *a.kernel_shape], name="tap") as idx:
                ci, k = idx[0], idx[1:]
                channel = b.add(b.mul(gi, i64(cg)), ci)
                x_plane = gep(b, x, b.mul(b.add(b.mul(ni, i64(c)), channel), i64(plane_in)))
                w_index = b.add(b.mul(b.add(b.mul(mi, i64(cg)), ci), i64(taps)),
                                sum_products(b, k, k_st))
                wv = load(b, w, w_index)
                with loop_nest(b, list(out_sp), name="o") as o:
                    inside, src = None, i64(0)
                    for d in range(r):
                        pos = b.add(b.mul(o[d], i64(a.strides[d])),
                                    b.sub(b.mul(k[d], i64(a.dilations[d])), i64(a.pads_begin[d])))
                        ok = in_range(b, pos, 0, in_sp[d])
                        inside = ok if inside is None else b.and_(inside, ok)
                        src = b.add(src, b.mul(pos, i64(in_st[d])))
                    xv = load(b, x_plane, b.select(inside, src, i64(0)))  # clamped: never reads outside
                    dst = sum_products(b, o, out_st)
                    acc = b.fadd(load(b, y_plane, dst), b.select(inside, b.fmul(wv, xv), f32(0.0)))
                    store(b, acc, y_plane, dst)
    epilogue_pass(b, a.epilogue, y, residual, n * m * plane_out)
    b.ret_void()
    return KernelCall(fn, args)


def sum_products(b, idx, strides):
    total = i64(0)
    for v, s in zip(idx, strides):
        total = b.add(total, b.mul(v, i64(s)))
    return total
