"""Depthwise convolution for training (one input and one output channel per group): the forward, dX
and dW as direct loops over each (image, channel) plane, where the GEMM forms of conv_grad.py would
be one row or one column wide and im2col would write the plane once per tap.

The forward and dW read a copy of the input plane inside zero borders (``_Padded``), so the loop over
output columns has no bounds checks and every tap is unrolled in it (a unit-stride vector loop at
stride 1). dX at stride 1 is the forward on dY with the taps reversed (conv_grad.flipped_conv); at
other strides each tap scatters dY back over the positions it read (conv_grad.tap_loops).
"""
from __future__ import annotations

from convc.codegen.kernels.conv_grad import Geometry, tap_loops
from convc.codegen.llvm_utils import F32, F64, FAST, alloca_entry, for_range, gep, i64, load, memset_zero, store
from convc.codegen.module import KernelCall, ModuleEmitter
from llvmlite import ir

from convc.ir import Op


def _planes(em: ModuleEmitter, b: ir.IRBuilder, fn: ir.Function, geo: Geometry):
    """This thread's (image, channel) planes: a context manager yielding (input plane offset, output
    plane offset, channel)."""
    from contextlib import contextmanager

    @contextmanager
    def loop():
        lo, hi = em.thread_range(b, fn, geo.n * geo.c)
        with for_range(b, hi, start=lo, name="plane") as k:
            yield b.mul(k, i64(geo.h * geo.w)), b.mul(k, i64(geo.p)), b.urem(k, i64(geo.c))
    return loop()


class _Padded:
    """A thread's copy of one input plane inside zero borders: the taps then read it with no bounds
    checks, so the loop over output columns is one unit-stride (at stride 1) vector loop, all taps
    unrolled in it. The borders are zeroed once per call; each plane overwrites only the interior."""

    def __init__(self, geo: Geometry):
        a = geo.a
        (sh, sw), (dh, dw) = a.strides, a.dilations
        self.geo, self.top, self.left = geo, a.pads[0], a.pads[1]
        self.rows = max(self.top + geo.h, (geo.oh - 1) * sh + (geo.kh - 1) * dh + 1)
        self.cols = max(self.left + geo.w, (geo.ow - 1) * sw + (geo.kw - 1) * dw + 1)
        self.floats = self.rows * self.cols

    def fill(self, b: ir.IRBuilder, plane: ir.Value, src: ir.Value) -> None:
        geo = self.geo
        with for_range(b, geo.h, name="pad_y") as iy, for_range(b, geo.w, name="pad_x") as ix:
            at = b.add(b.mul(b.add(iy, i64(self.top)), i64(self.cols)), b.add(ix, i64(self.left)))
            store(b, load(b, src, b.add(b.mul(iy, i64(geo.w)), ix)), plane, at)

    def each_output(self, b: ir.IRBuilder, body) -> None:
        """body(output index, [padded-plane index of each tap, flat tap order])."""
        geo, a = self.geo, self.geo.a
        (sh, sw), (dh, dw) = a.strides, a.dilations
        with for_range(b, geo.oh, name="oy") as oy, for_range(b, geo.ow, name="ox") as ox:
            base = b.add(b.mul(b.mul(oy, i64(sh)), i64(self.cols)), b.mul(ox, i64(sw)))
            taps = [b.add(base, i64(ky * dh * self.cols + kx * dw)) for ky in range(geo.kh) for kx in range(geo.kw)]
            body(b.add(b.mul(oy, i64(geo.ow)), ox), taps)


def depthwise_forward(em: ModuleEmitter, op: Op, geo: Geometry, has_bias: bool, flip: bool = False) -> KernelCall:
    """Y[plane] = bias + sum over taps of W[c, tap] * X under the tap (``flip``: W's taps reversed, the
    stride-1 dX of a depthwise conv as a forward one, ``flipped_conv``)."""
    pad = _Padded(geo)
    args = list(op.inputs) + [op.outputs[0]] + [em.scratch(pad.floats * 4, per_thread=True)]
    fn, b = em.function(op.name, len(args), parallel=True)
    x, w = (fn.args[1], fn.args[0]) if flip else (fn.args[0], fn.args[1])
    y = fn.args[len(op.inputs)]
    xpad = em.thread_scratch(b, fn.args[len(args) - 1], pad.floats * 4, fn.args[-2])
    memset_zero(b, xpad, pad.floats * 4)
    taps = geo.kh * geo.kw
    with _planes(em, b, fn, geo) as (x_off, y_off, c):
        pad.fill(b, xpad, gep(b, x, x_off))
        yp = gep(b, y, y_off)
        wc = [load(b, w, b.add(b.mul(c, i64(taps)), i64(taps - 1 - t if flip else t))) for t in range(taps)]
        start = load(b, fn.args[2], c) if has_bias else ir.Constant(F32, 0.0)

        def body(pi, at):
            v = start
            for wt, xi in zip(wc, at):
                v = b.fadd(v, b.fmul(wt, load(b, xpad, xi)))
            store(b, v, yp, pi)
        pad.each_output(b, body)
    b.ret_void()
    return KernelCall(fn, args)


def depthwise_grad_input(em: ModuleEmitter, op: Op, geo: Geometry) -> KernelCall:
    """dX[plane] = sum over taps of W[c, tap] * dY, scattered back to the input positions the tap read."""
    args = [op.inputs[0], op.inputs[1], op.outputs[0]]
    fn, b = em.function(op.name, len(args), parallel=True)
    w, dy, dx = fn.args[:3]
    taps = geo.kh * geo.kw
    with _planes(em, b, fn, geo) as (x_off, y_off, c):
        dxp, dyp = gep(b, dx, x_off), gep(b, dy, y_off)
        memset_zero(b, dxp, geo.h * geo.w * 4)

        def body(row, xi, pi):
            v = b.fmul(load(b, w, b.add(b.mul(c, i64(taps)), row)), load(b, dyp, pi))
            store(b, b.fadd(load(b, dxp, xi), v), dxp, xi)
        tap_loops(b, geo, body)
    b.ret_void()
    return KernelCall(fn, args)


def depthwise_grad_weight(em: ModuleEmitter, op: Op, geo: Geometry) -> KernelCall:
    """dW[c, tap] = sum over images and outputs of dY * X under the tap: one pass over each plane with a
    running float sum per tap (as a GEMM's K loop would), the images' sums added in double; threads own
    channels (no reduction between them)."""
    pad = _Padded(geo)
    args = [op.inputs[0], op.inputs[1], op.outputs[0], em.scratch(pad.floats * 4, per_thread=True)]
    fn, b = em.function(op.name, len(args), parallel=True)
    x, dy, dw = fn.args[:3]
    xpad = em.thread_scratch(b, fn.args[3], pad.floats * 4, fn.args[-2])
    memset_zero(b, xpad, pad.floats * 4)
    taps = geo.kh * geo.kw
    acc = [alloca_entry(b, F32, f"acc{t}") for t in range(taps)]      # this image's sums
    total = [alloca_entry(b, F64, f"total{t}") for t in range(taps)]  # over images, in double
    lo, hi = em.thread_range(b, fn, geo.c)
    with for_range(b, hi, start=lo, name="ch") as c:
        for t in total:
            b.store(ir.Constant(F64, 0.0), t)
        with for_range(b, geo.n, name="img") as ni:
            for a in acc:
                b.store(ir.Constant(F32, 0.0), a)
            plane = b.add(b.mul(ni, i64(geo.c)), c)
            pad.fill(b, xpad, gep(b, x, b.mul(plane, i64(geo.h * geo.w))))
            dyp = gep(b, dy, b.mul(plane, i64(geo.p)))

            def body(pi, at):
                d = load(b, dyp, pi)
                for a, xi in zip(acc, at):
                    b.store(b.fadd(b.load(a, typ=F32), b.fmul(d, load(b, xpad, xi), flags=FAST), flags=FAST), a)
            pad.each_output(b, body)
            for a, t in zip(acc, total):
                b.store(b.fadd(b.load(t, typ=F64), b.fpext(b.load(a, typ=F32), F64)), t)
        for i, t in enumerate(total):
            store(b, b.fptrunc(b.load(t, typ=F64), F32), dw, b.add(b.mul(c, i64(taps)), i64(i)))
    b.ret_void()
    return KernelCall(fn, args)
