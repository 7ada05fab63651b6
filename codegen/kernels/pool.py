"""Max, average and Lp pooling, windowed and global (1-D pools arrive as 2-D ones: passes/conv1d.py; 3-D
pools and every LpPool run through the rank-generic loop nest of ``emit_pool_nd``)."""
from __future__ import annotations

import math

import numpy as np

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import gep, F32, FAST, alloca_entry, f32, fmax, for_range, i64, in_range, load, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.conv import tap_columns
from convc.codegen.kernels.pool_nd import MAX_UNROLLED_TAPS, emit_pool_nd  # 3-D, LpPool, big windows


@emitter(OpKind.MAX_POOL, OpKind.AVERAGE_POOL)
def emit_pool(em: ModuleEmitter, op: Op) -> KernelCall:
    if op.attrs.channels_last:  # set by passes/layout.py
        from convc.codegen.kernels.pool_nhwc import emit_pool_channels_last
        return emit_pool_channels_last(em, op)
    if op.attrs.spatial_rank != 2 or math.prod(op.attrs.kernel_shape) > MAX_UNROLLED_TAPS:
        return emit_pool_nd(em, op)  # 3-D, or a window too big to unroll tap by tap (60 x 80: minutes in LLVM)
    return emit_pool_rows(em, op)


def window_counts(k: int, s: int, d: int, p_begin: int, p_end: int, size: int, out: int,
                   include_pad: bool) -> np.ndarray:
    """How many taps of each output position's window count for the average (one axis)."""
    lo_in, hi_in = (-p_begin, size + p_end) if include_pad else (0, size)
    counts = np.zeros(out)
    for o in range(out):
        counts[o] = sum(lo_in <= o * s - p_begin + t * d < hi_in for t in range(k))
    return counts


def emit_pool_rows(em: ModuleEmitter, op: Op) -> KernelCall:
    """Each output row gathers its window row by row: per kernel tap, the output columns whose
    input is inside the image are known at compile time, so the inner loops have no bounds checks
    and vectorize. The average divides by (valid rows) x (valid columns) of each window, both
    computed at compile time. Planes are split between threads."""
    a = op.attrs
    is_max = op.kind is OpKind.MAX_POOL
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    planes = xs[0] * xs[1]
    h, w = xs[2:]
    oh, ow = ys[2:]
    kh_, kw_ = a.kernel_shape
    (sh, sw), (dh, dw) = a.strides, a.dilations
    pt, pl, pb, pr = a.pads
    args: list = [op.inputs[0], op.outputs[0]]
    if not is_max:  # 1 / count per window, separable into a row factor and a column factor
        rows = window_counts(kh_, sh, dh, pt, pb, h, oh, a.count_include_pad)
        cols = window_counts(kw_, sw, dw, pl, pr, w, ow, a.count_include_pad)
        args += [em.derived_constant(1.0 / np.maximum(rows, 1)), em.derived_constant(1.0 / np.maximum(cols, 1))]
    fn, b = em.function(op.name, len(args), parallel=True)
    x, y = fn.args[0], fn.args[1]
    columns = tap_columns(kw_, sw, dw, pl, w, ow)
    start = f32(-math.inf if is_max else 0.0)
    lo_t, hi_t = em.thread_range(b, fn, planes)
    with for_range(b, hi_t, start=lo_t, name="plane") as plane:
        with for_range(b, oh, name="oy") as oy:
            yrow = gep(b, y, b.add(b.mul(plane, i64(oh * ow)), b.mul(oy, i64(ow))))
            with for_range(b, ow, name="ox0") as ox:
                store(b, start, yrow, ox)
            for kh in range(kh_):
                iy = b.add(b.mul(oy, i64(sh)), i64(kh * dh - pt))
                with b.if_then(in_range(b, iy, 0, h)):
                    x_row = b.mul(b.add(b.mul(plane, i64(h)), iy), i64(w))
                    for lo, hi, first in columns:
                        if lo >= hi:
                            continue
                        with for_range(b, hi, start=lo, name="ox") as ox:
                            v = load(b, x, b.sub(b.add(x_row, ox if sw == 1 else b.mul(ox, i64(sw))), i64(first)))
                            old = load(b, yrow, ox)
                            store(b, fmax(b, old, v) if is_max else b.fadd(old, v), yrow, ox)
            if not is_max:
                inv_row = load(b, fn.args[2], oy)
                with for_range(b, ow, name="oxd") as ox:
                    scale = b.fmul(inv_row, load(b, fn.args[3], ox))
                    store(b, b.fmul(load(b, yrow, ox), scale), yrow, ox)
    b.ret_void()
    return KernelCall(fn, args)


@emitter(OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL)
def emit_global_pool(em: ModuleEmitter, op: Op) -> KernelCall:
    if op.attrs.channels_last:
        from convc.codegen.kernels.pool_nhwc import emit_global_pool_channels_last
        return emit_global_pool_channels_last(em, op)
    xs = em.tensor(op.inputs[0]).shape
    planes, size = xs[0] * xs[1], em.tensor(op.inputs[0]).size // (xs[0] * xs[1])
    is_max = op.kind is OpKind.GLOBAL_MAX_POOL
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    acc = alloca_entry(b, F32, "acc")
    with for_range(b, planes, name="plane") as pi:
        b.store(f32(-math.inf if is_max else 0.0), acc)
        base = b.mul(pi, i64(size))
        with for_range(b, size, name="px") as j:
            v = load(b, x, b.add(base, j))
            old = b.load(acc, typ=F32)
            b.store(fmax(b, old, v) if is_max else b.fadd(old, v, flags=FAST), acc)
        out = b.load(acc, typ=F32)
        store(b, out if is_max else b.fmul(out, f32(1.0 / size)), y, pi)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])

