"""Windowed pooling of any spatial rank (3-D MaxPool/AveragePool, and LpPool of every rank) as a plain loop
nest: per output position, a loop over the kernel taps with a bounds check. pool.py hands its 3-D pools here."""
from __future__ import annotations

import math

import numpy as np

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import F32, alloca_entry, call_intrinsic, f32, fmax, for_range, i64, in_range, load, \
    loop_nest, opaque, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter

# windows with more taps than this loop over opaque bounds: LLVM would otherwise unroll them fully
MAX_UNROLLED_TAPS = 64


def window_bounds(b, kernel_shape: tuple[int, ...]) -> list:
    if math.prod(kernel_shape) <= MAX_UNROLLED_TAPS:  # exact: an int64 product of attributes can wrap
        return list(kernel_shape)
    return [opaque(b, k) for k in kernel_shape]


def _row_major(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


@emitter(OpKind.LP_POOL)
def emit_pool_nd(em: ModuleEmitter, op: Op) -> KernelCall:
    """Any windowed pool of any spatial rank: per output position, a loop nest over the kernel taps."""
    a = op.attrs
    r = a.spatial_rank
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    in_sp, out_sp = tuple(xs[2:]), tuple(ys[2:])
    plane_in, plane_out = int(np.prod(in_sp)), int(np.prod(out_sp))
    in_st, out_st = _row_major(in_sp), _row_major(out_sp)
    kind = op.kind
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    acc = alloca_entry(b, F32, "acc")
    cnt = alloca_entry(b, F32, "count")
    with for_range(b, xs[0] * xs[1], name="plane") as pi:
        x_base = b.mul(pi, i64(plane_in))
        with loop_nest(b, list(out_sp), name="o") as o:
            b.store(f32(-math.inf if kind is OpKind.MAX_POOL else 0.0), acc)
            b.store(f32(0.0), cnt)
            with loop_nest(b, window_bounds(b, a.kernel_shape), name="k") as k:
                inside, counted, src = None, None, x_base
                for d in range(r):
                    pos = b.add(b.mul(o[d], i64(a.strides[d])),
                                b.sub(b.mul(k[d], i64(a.dilations[d])), i64(a.pads[d])))
                    ok = in_range(b, pos, 0, in_sp[d])
                    inside = ok if inside is None else b.and_(inside, ok)
                    in_pads = in_range(b, pos, -a.pads[d], in_sp[d] + a.pads[r + d])  # not the ceil_mode overhang
                    counted = in_pads if counted is None else b.and_(counted, in_pads)
                    src = b.add(src, b.mul(pos, i64(in_st[d])))
                v = load(b, x, b.select(inside, src, x_base))  # clamped: never reads outside
                old = b.load(acc, typ=F32)
                if kind is OpKind.MAX_POOL:
                    new = fmax(b, old, v)
                elif kind is OpKind.LP_POOL:
                    av = call_intrinsic(b, "llvm.fabs.f32", [v])
                    new = b.fadd(old, av if a.p == 1 else b.fmul(av, av) if a.p == 2 else
                                 call_intrinsic(b, "llvm.pow.f32", [av, f32(a.p)]))
                else:
                    new = b.fadd(old, v)
                    if not a.count_include_pad:
                        counted = inside
                    c = b.load(cnt, typ=F32)
                    b.store(b.select(counted, b.fadd(c, f32(1.0)), c), cnt)
                b.store(b.select(inside, new, old), acc)
            out = b.load(acc, typ=F32)
            if kind is OpKind.AVERAGE_POOL:
                out = b.fdiv(out, b.load(cnt, typ=F32))
            elif kind is OpKind.LP_POOL and a.p != 1:
                out = (call_intrinsic(b, "llvm.sqrt.f32", [out]) if a.p == 2 else
                       call_intrinsic(b, "llvm.pow.f32", [out, f32(1.0 / a.p)]))
            dst = b.add(b.mul(pi, i64(plane_out)), _linear(b, o, out_st))
            store(b, out, y, dst)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


def _linear(b, idx, strides):
    total = i64(0)
    for v, s in zip(idx, strides):
        total = b.add(total, b.mul(v, i64(s)))
    return total
