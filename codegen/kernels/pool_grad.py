"""Pooling gradients: MaxPool scatters dY to each window's first maximum, AveragePool spreads it.

Both walk the forward's windows again (same bounds tests as codegen/kernels/pool.py) and add into
a zeroed dX, so overlapping windows accumulate. The windows are 2-D: the gradients of 1-D pools
arrive as 2-D ones over a height of 1 (passes/conv1d.py).
"""
from __future__ import annotations

import math

from convc.codegen.llvm_utils import (
    F32,
    I64,
    alloca_entry,
    f32,
    for_range,
    gep,
    i64,
    in_range,
    load,
    memset_zero,
    store,
)
from convc.codegen.module import KernelCall, ModuleEmitter, emitter

from convc.errors import CompileError
from convc.ir import Op
from convc.ops import OpKind


def _windows(b, a, h, w, oh, ow, planes, body):
    """for plane in ``planes`` = [first, end), oy, ox: body(pi, out index, taps) where taps(visit)
    calls visit(inside, counted, x index)."""
    kh_, kw_ = a.kernel_shape
    (sh, sw), (dh, dw) = a.strides, a.dilations
    pt, pl, pb, pr = a.pads
    with for_range(b, planes[1], start=planes[0], name="plane") as pi, for_range(b, oh, name="oy") as oy, \
            for_range(b, ow, name="ox") as ox:
        out = b.add(b.mul(b.add(b.mul(pi, i64(oh)), oy), i64(ow)), ox)

        def taps(visit):
            with for_range(b, kh_, name="kh") as kh:
                iy = b.add(b.sub(b.mul(oy, i64(sh)), i64(pt)), b.mul(kh, i64(dh)))
                with for_range(b, kw_, name="kw") as kw:
                    ix = b.add(b.sub(b.mul(ox, i64(sw)), i64(pl)), b.mul(kw, i64(dw)))
                    inside = b.and_(in_range(b, iy, 0, h), in_range(b, ix, 0, w))
                    counted = b.and_(in_range(b, iy, -pt, h + pb), in_range(b, ix, -pl, w + pr))
                    addr = b.select(inside, b.add(b.mul(b.add(b.mul(pi, i64(h)), iy), i64(w)), ix), i64(0))
                    visit(inside, counted, addr)
        body(pi, out, taps)


MAX_UNROLLED_TAPS = 64


def disjoint_windows(a, h: int, w: int, oh: int, ow: int) -> bool:
    """Windows that never overlap, start inside the input and end inside it (no padding): every
    input element has at most one window, so the gradient can be stored instead of accumulated."""
    (kh, kw), (sh, sw), (dh, dw) = a.kernel_shape, a.strides, a.dilations
    return (not any(a.pads) and sh >= dh * (kh - 1) + 1 and sw >= dw * (kw - 1) + 1
            and (oh - 1) * sh + dh * (kh - 1) < h and (ow - 1) * sw + dw * (kw - 1) < w
            and kh * kw <= MAX_UNROLLED_TAPS)


def _max_pool_grad_disjoint(em: ModuleEmitter, op: Op, a, planes: int, h: int, w: int, oh: int, ow: int) -> KernelCall:
    """Each window's taps unrolled: pick the first maximum, then store dY there and 0 at the others."""
    (kh, kw), (sh, sw), (dh, dw) = a.kernel_shape, a.strides, a.dilations
    fn, b = em.function(op.name, 3, parallel=True)
    x, dy, dx = fn.args[:3]
    lo, hi = em.thread_range(b, fn, planes)
    if oh * sh != h or ow * sw != w or (sh, sw) != (dh * (kh - 1) + 1, dw * (kw - 1) + 1):
        # some elements are in no window (or between taps)
        memset_zero(b, gep(b, dx, b.mul(lo, i64(h * w))), b.mul(b.sub(hi, lo), i64(h * w * 4)))
    taps = [(i * dh, j * dw) for i in range(kh) for j in range(kw)]
    with for_range(b, hi, start=lo, name="plane") as pi, for_range(b, oh, name="oy") as oy:
        row = b.mul(b.add(b.mul(pi, i64(h)), b.mul(oy, i64(sh))), i64(w))
        with for_range(b, ow, name="ox") as ox:
            base = b.add(row, b.mul(ox, i64(sw)))
            addrs = [b.add(base, i64(ty * w + tx)) for ty, tx in taps]
            best, which = None, None
            for k, addr in enumerate(addrs):
                v = load(b, x, addr)
                if best is None:
                    best, which = v, i64(0)
                    continue
                take = b.or_(b.fcmp_ordered(">", v, best),
                             b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", best, best)))
                best, which = b.select(take, v, best), b.select(take, i64(k), which)
            g = load(b, dy, b.add(b.mul(b.add(b.mul(pi, i64(oh)), oy), i64(ow)), ox))
            for k, addr in enumerate(addrs):
                store(b, b.select(b.icmp_unsigned("==", which, i64(k)), g, f32(0.0)), dx, addr)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


@emitter(OpKind.MAX_POOL_GRAD, OpKind.AVERAGE_POOL_GRAD)
def emit_pool_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs.pool
    if a.spatial_rank != 2:
        raise CompileError(f"node {op.name!r} ({op.kind.value}): the pool gradient kernel takes 2-D windows (1-D ones "
                           f"are rewritten to 2-D by passes/conv1d.py), got kernel_shape={a.kernel_shape}")
    is_max = op.kind is OpKind.MAX_POOL_GRAD
    xs, ys = op.attrs.shape, em.tensor(op.inputs[-1]).shape
    planes = xs[0] * xs[1]
    h, w = xs[2:]
    oh, ow = ys[2:]
    if is_max and disjoint_windows(a, h, w, oh, ow):
        return _max_pool_grad_disjoint(em, op, a, planes, h, w, oh, ow)
    n_args = 3 if is_max else 2
    fn, b = em.function(op.name, n_args, parallel=True)
    x = fn.args[0] if is_max else None
    dy, dx = fn.args[n_args - 2], fn.args[n_args - 1]
    lo, hi = em.thread_range(b, fn, planes)
    memset_zero(b, gep(b, dx, b.mul(lo, i64(h * w))), b.mul(b.sub(hi, lo), i64(h * w * 4)))
    best = alloca_entry(b, F32, "best")
    where = alloca_entry(b, I64, "where")
    cnt = alloca_entry(b, F32, "count")

    def body(pi, out, taps):
        g = load(b, dy, out)
        if is_max:
            b.store(f32(-math.inf), best)
            b.store(i64(-1), where)

            def visit(inside, counted, addr):
                v = load(b, x, addr)
                old = b.load(best, typ=F32)
                better = b.or_(b.fcmp_ordered(">", v, old),
                               b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", old, old)))
                take = b.and_(inside, better)
                b.store(b.select(take, v, old), best)
                b.store(b.select(take, addr, b.load(where, typ=I64)), where)
            taps(visit)
            at = b.load(where, typ=I64)
            with b.if_then(b.icmp_signed(">=", at, i64(0))):
                store(b, b.fadd(load(b, dx, at), g), dx, at)
        else:
            b.store(f32(0.0), cnt)

            def count(inside, counted, addr):
                c = b.load(cnt, typ=F32)
                b.store(b.select(counted if a.count_include_pad else inside, b.fadd(c, f32(1.0)), c), cnt)
            taps(count)
            share = b.fdiv(g, b.load(cnt, typ=F32))

            def spread(inside, counted, addr):
                with b.if_then(inside):
                    store(b, b.fadd(load(b, dx, addr), share), dx, addr)
            taps(spread)
    _windows(b, a, h, w, oh, ow, (lo, hi), body)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


@emitter(OpKind.GLOBAL_AVERAGE_POOL_GRAD)
def emit_global_average_pool_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    xs = op.attrs.shape
    planes = xs[0] * xs[1]
    size = em.tensor(op.outputs[0]).size // planes
    fn, b = em.function(op.name, 2)
    dy, dx = fn.args
    with for_range(b, planes, name="plane") as pi:
        v = b.fmul(load(b, dy, pi), f32(1.0 / size))
        base = b.mul(pi, i64(size))
        with for_range(b, size, name="px") as j:
            store(b, v, dx, b.add(base, j))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


@emitter(OpKind.GLOBAL_MAX_POOL_GRAD)
def emit_global_max_pool_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    """dY goes to the first maximum of each plane (the first NaN if there is one), like np.argmax."""
    xs = op.attrs.shape
    planes = xs[0] * xs[1]
    size = em.tensor(op.outputs[0]).size // planes
    fn, b = em.function(op.name, 3)
    x, dy, dx = fn.args
    memset_zero(b, dx, planes * size * 4)
    best = alloca_entry(b, F32, "best")
    where = alloca_entry(b, I64, "where")
    with for_range(b, planes, name="plane") as pi:
        base = b.mul(pi, i64(size))
        b.store(load(b, x, base), best)
        b.store(base, where)
        with for_range(b, size, start=1, name="px") as j:
            at = b.add(base, j)
            v = load(b, x, at)
            old = b.load(best, typ=F32)
            take = b.or_(b.fcmp_ordered(">", v, old),
                         b.and_(b.fcmp_unordered("uno", v, v), b.fcmp_ordered("ord", old, old)))
            b.store(b.select(take, v, old), best)
            b.store(b.select(take, at, b.load(where, typ=I64)), where)
        at = b.load(where, typ=I64)
        store(b, load(b, dy, pi), dx, at)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])

