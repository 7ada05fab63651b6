"""Channels-last (NHWC) MaxPool and AveragePool, vectorized over channels (the contiguous axis).

An output row reads its window from kh input rows; a row in the vertical padding (or past the end in
ceil_mode) is read from a per-thread row filled with -inf (max) or 0 (average), so no row is checked.
Along the row, the output columns are grouped at compile time into runs with the same in-bounds taps,
each run one loop with no column checks. A pixel's channels go CHUNK_VECTORS vectors at a time (a
masked vector for C % width), its taps reduced as a tree so that the chains are short. The average
multiplies by 1/count of the row (a table) times 1/count of the run (a constant), the counts being
those of ``emit_pool_rows``. The N*OH output rows are split between threads.

``Window``, ``column_runs``, ``tap_rows`` and ``channel_blocks`` serve the depthwise kernel too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.passes.memory import align
from convc.codegen.llvm_utils import FAST, alloca_entry, f32, fmax, for_range, gep, i64, in_range, opaque, store
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.codegen.kernels.pool import _window_counts
from convc.codegen.kernels.pool_nd import MAX_UNROLLED_TAPS

CHUNK_VECTORS = 4  # channel vectors per pixel at a time: independent reductions, few registers


@dataclass(frozen=True)
class Window:
    """A 2-D channels-last sliding window: X [n, h, w, c] -> Y [n, oh, ow, c] (1-D has h = 1)."""
    n: int
    h: int
    w: int
    c: int
    oh: int
    ow: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int
    pb: int
    pr: int

    @staticmethod
    def of(attrs, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> "Window":
        r = len(attrs.kernel_shape)
        if r == 1:  # [N, W, C] as [N, 1, W, C]
            return Window(x_shape[0], 1, x_shape[1], x_shape[2], 1, y_shape[1], 1, attrs.kernel_shape[0],
                          1, attrs.strides[0], 1, attrs.dilations[0], 0, attrs.pads[0], 0, attrs.pads[1])
        if r != 2:
            raise NotImplementedError(f"{r}-D channels-last window")
        n, h, w, c = x_shape
        return Window(n, h, w, c, y_shape[1], y_shape[2], *attrs.kernel_shape, *attrs.strides, *attrs.dilations,
                      *attrs.pads)

    def row_taps_inside(self) -> bool:
        """Every tap row of every output row lies inside the input (no fill row needed)."""
        return all(0 <= oy * self.sh - self.pt + k * self.dh < self.h for oy in range(self.oh) for k in range(self.kh))


@dataclass(frozen=True)
class Run:
    """Output columns [start, stop) whose in-bounds taps are kw in [lo, hi); ``count`` taps count for the
    average."""
    start: int
    stop: int
    lo: int
    hi: int
    count: int = 0


def column_runs(g: Window, include_pad: bool = False) -> list[Run]:
    """The output columns grouped into runs of equal in-bounds taps (the interior is one run). The
    in-bounds taps of a column are contiguous, as its input column grows with kw."""
    counts = _window_counts(g.kw, g.sw, g.dw, g.pl, g.pr, g.w, g.ow, include_pad)
    runs: list[Run] = []
    for ox in range(g.ow):
        inside = [k for k in range(g.kw) if 0 <= ox * g.sw - g.pl + k * g.dw < g.w]
        lo, hi = (inside[0], inside[-1] + 1) if inside else (0, 0)
        if runs and (runs[-1].lo, runs[-1].hi, runs[-1].count) == (lo, hi, int(counts[ox])):
            runs[-1] = Run(runs[-1].start, ox + 1, lo, hi, runs[-1].count)
        else:
            runs.append(Run(ox, ox + 1, lo, hi, int(counts[ox])))
    return runs


def tap_rows(b: ir.IRBuilder, x: ir.Value, fill: ir.Value | None, g: Window, image: ir.Value, oy: ir.Value,
             kh: int | ir.Value) -> ir.Value:
    """Start of the input row read by tap row ``kh`` of output row ``oy``: the fill row when it lies in
    the padding (``fill`` None: it never does)."""
    iy = b.add(b.mul(oy, i64(g.sh)), b.sub(b.mul(kh, i64(g.dh)) if isinstance(kh, ir.Value) else i64(kh * g.dh),
                                           i64(g.pt)))
    if fill is None:
        return gep(b, x, b.mul(b.add(b.mul(image, i64(g.h)), iy), i64(g.w * g.c)))
    ok = in_range(b, iy, 0, g.h)
    row = gep(b, x, b.mul(b.add(b.mul(image, i64(g.h)), b.select(ok, iy, i64(0))), i64(g.w * g.c)))
    return b.select(ok, row, fill)


def fill_row(b: ir.IRBuilder, row: ir.Value, value: float, count: int) -> None:
    with for_range(b, count, name="fill") as i:
        store(b, f32(value), row, i)


def fill_bytes(g: Window) -> int:
    """Per-thread scratch for the fill row (0: no output row reaches into the padding)."""
    return 0 if g.row_taps_inside() else align(g.w * g.c * 4)


def channel_blocks(b: ir.IRBuilder, c: int, width: int, per_block: int, body) -> None:
    """body(offset, valids) over the channels: blocks of ``per_block`` full vectors (a run-time loop),
    then one block with the full vectors left and the masked tail (``valids`` lists each vector's
    valid lanes)."""
    full_vectors, tail = divmod(c, width)
    blocks, left = divmod(full_vectors, per_block)
    if blocks == 1:
        body(i64(0), [width] * per_block)
    elif blocks:
        with for_range(b, blocks, name="cblock") as blk:
            body(b.mul(blk, i64(per_block * width)), [width] * per_block)
    last = [width] * left + ([tail] if tail else [])
    if last:
        body(i64(blocks * per_block * width), last)


def tree(b: ir.IRBuilder, combine, values: list[ir.Value]) -> ir.Value:
    """Combine values pairwise: a reduction of depth log2(n), not a chain of n."""
    while len(values) > 1:
        values = [combine(b, values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


def emit_pool_channels_last(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    is_max = op.kind is OpKind.MAX_POOL
    g = Window.of(a, em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape)
    runs = column_runs(g, a.count_include_pad and not is_max)
    args: list = [op.inputs[0], op.outputs[0]]
    if not is_max:
        rows = _window_counts(g.kh, g.sh, g.dh, g.pt, g.pb, g.h, g.oh, a.count_include_pad)
        args.append(em.derived_constant(1.0 / np.maximum(rows, 1)))
    scratch = fill_bytes(g)
    if scratch:
        args.append(em.scratch(scratch, per_thread=True))
    fn, b = em.function(op.name, len(args), parallel=True)
    x, y = fn.args[0], fn.args[1]
    start = -math.inf if is_max else 0.0
    fill = None
    if scratch:
        fill = em.thread_scratch(b, fn.args[len(args) - 1], scratch, fn.args[-2])
        fill_row(b, fill, start, g.w * g.c)
    gm = em.gemm
    combine = fmax if is_max else (lambda b_, p, q: b_.fadd(p, q, flags=FAST))
    unrolled = g.kh * g.kw <= MAX_UNROLLED_TAPS  # bigger windows loop over taps (LLVM would unroll for minutes)
    lo_t, hi_t = em.thread_range(b, fn, g.n * g.oh)
    with for_range(b, hi_t, start=lo_t, name="row") as row:
        image, oy = b.udiv(row, i64(g.oh)), b.urem(row, i64(g.oh))
        inputs = [tap_rows(b, x, fill, g, image, oy, kh) for kh in range(g.kh)] if unrolled else None
        yrow = gep(b, y, b.mul(row, i64(g.ow * g.c)))
        inv_row = b.load(gep(b, fn.args[2], oy), typ=ir.FloatType()) if not is_max else None
        for run in runs:
            scale = None if is_max else gm.splat(b, b.fmul(inv_row, f32(1.0 / max(run.count, 1))))

            def pixel(ox: ir.Value) -> None:
                col = b.mul(b.sub(b.mul(ox, i64(g.sw)), i64(g.pl)), i64(g.c))  # input column ox*sw - pl

                def block(off: ir.Value, valids: list[int]) -> None:
                    at = b.add(col, off)
                    if unrolled:
                        sums = [_window_unrolled(b, gm, combine, inputs, at, g, run, v, valid, start)
                                for v, valid in enumerate(valids)]
                    else:
                        sums = _window_loops(b, gm, combine, x, fill, g, image, oy, at, run, valids, start)
                    out = b.add(b.mul(ox, i64(g.c)), off)
                    for v, (s, valid) in enumerate(zip(sums, valids)):
                        gm.vstore(b, s if is_max else b.fmul(s, scale), gep(b, yrow, b.add(out, i64(v * gm.isa.width))),
                                  valid)

                channel_blocks(b, g.c, gm.isa.width, CHUNK_VECTORS, block)

            if run.stop - run.start == 1:
                pixel(i64(run.start))
            else:
                with for_range(b, run.stop, start=run.start, name="ox") as ox:
                    pixel(ox)
    b.ret_void()
    return KernelCall(fn, args)


def _window_unrolled(b, gm, combine, inputs, at, g: Window, run: Run, v: int, valid: int, start: float):
    """One channel vector of one pixel: every in-bounds tap loaded, reduced as a tree."""
    width = gm.isa.width
    taps = [gm.vload(b, gep(b, inputs[kh], b.add(at, i64(kw * g.dw * g.c + v * width))), valid)
            for kh in range(g.kh) for kw in range(run.lo, run.hi)]
    return tree(b, combine, taps) if taps else gm.splat(b, f32(start))


def _window_loops(b, gm, combine, x, fill, g: Window, image, oy, at, run: Run, valids: list[int], start: float):
    """A big window's channel vectors of one pixel, taps in loops (accumulators in stack slots that
    mem2reg turns into registers)."""
    width = gm.isa.width
    accs = [alloca_entry(b, gm.vec, f"acc{v}") for v in range(len(valids))]
    for acc in accs:
        b.store(gm.splat(b, f32(start)), acc)
    if run.hi > run.lo:
        with for_range(b, opaque(b, g.kh), name="kh") as kh:
            src = tap_rows(b, x, fill, g, image, oy, kh)
            with for_range(b, opaque(b, run.hi), start=run.lo, name="kw") as kw:
                at_kw = b.add(at, b.mul(kw, i64(g.dw * g.c)))
                for v, (acc, valid) in enumerate(zip(accs, valids)):
                    tap = gm.vload(b, gep(b, src, b.add(at_kw, i64(v * width))), valid)
                    b.store(combine(b, b.load(acc, typ=gm.vec), tap), acc)
    return [b.load(acc, typ=gm.vec) for acc in accs]
