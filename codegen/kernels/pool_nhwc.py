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
from convc.codegen.llvm_utils import F32, F64, FAST, alloca_entry, f32, fmax, for_range, gep, i64, in_range, opaque, store
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.codegen.kernels.blas import GemmEmitter
from convc.codegen.kernels.pool import window_counts
from convc.codegen.kernels.pool_nd import MAX_UNROLLED_TAPS

CHUNK_VECTORS = 4  # channel vectors per pixel at a time: independent reductions, few registers


@dataclass(frozen=True)
class Window:
    """A 2-D channels-last sliding window: X [n, h, w, c] -> Y [n, oh, ow, c]."""
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
    def of(attrs, x_shape: tuple[int, ...], y_shape: tuple[int, ...]) -> Window:
        r = len(attrs.kernel_shape)
        if r != 2:  # 1-D windows arrive as 2-D ones (passes/conv1d.py)
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
    counts = window_counts(g.kw, g.sw, g.dw, g.pl, g.pr, g.w, g.ow, include_pad)
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


def channel_blocks(b: ir.IRBuilder, c: int, width: int, per_block: int, body,
                   run_time_blocks: ir.Value | None = None) -> None:
    """body(offset, valids) over the channels: blocks of ``per_block`` full vectors (a run-time loop),
    then one block with the full vectors left and the masked tail (``valids`` lists each vector's
    valid lanes). ``run_time_blocks``: the count of whole blocks as a run-time value (a size table's),
    so that only the last block's shape depends on ``c``."""
    full_vectors, tail = divmod(c, width)
    blocks, left = divmod(full_vectors, per_block)
    if run_time_blocks is not None:
        with for_range(b, run_time_blocks, name="cblock") as blk:
            body(b.mul(blk, i64(per_block * width)), [width] * per_block)
        last = [width] * left + ([tail] if tail else [])
        if last:
            body(b.mul(run_time_blocks, i64(per_block * width)), last)
        return
    if blocks == 1:
        body(i64(0), [width] * per_block)
    elif blocks:
        with for_range(b, blocks, name="cblock") as blk:
            body(b.mul(blk, i64(per_block * width)), [width] * per_block)
    last = [width] * left + ([tail] if tail else [])
    if last:
        body(i64(blocks * per_block * width), last)


def tree(combine, values: list[ir.Value]) -> ir.Value:
    """Combine values pairwise: a reduction of depth log2(n), not a chain of n."""
    while len(values) > 1:
        values = [combine(values[i], values[i + 1]) if i + 1 < len(values) else values[i]
                  for i in range(0, len(values), 2)]
    return values[0]


@dataclass
class _PoolRow:
    """What the code for one output row works with."""
    b: ir.IRBuilder
    gm: GemmEmitter          # vector type, loads and stores
    g: Window
    is_max: bool
    x: ir.Value
    fill: ir.Value | None    # the row read for tap rows in the padding
    image: ir.Value
    oy: ir.Value
    inputs: list[ir.Value] | None  # per kernel row: the start of the input row it reads (None: taps in loops)
    yrow: ir.Value
    ldc: int                 # floats between output pixels

    @property
    def start(self) -> float:
        return -math.inf if self.is_max else 0.0

    def combine(self, p: ir.Value, q: ir.Value) -> ir.Value:
        return fmax(self.b, p, q) if self.is_max else self.b.fadd(p, q, flags=FAST)


def emit_pool_channels_last(em: ModuleEmitter, op: Op) -> KernelCall:
    """A 2-D MaxPool / AveragePool whose X is [N, H, W, C] and Y [N, OH, OW, C]."""
    a = op.attrs
    is_max = op.kind is OpKind.MAX_POOL
    g = Window.of(a, em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape)
    runs = column_runs(g, a.count_include_pad and not is_max)
    args: list = [op.inputs[0], op.outputs[0]]
    if not is_max:
        rows = window_counts(g.kh, g.sh, g.dh, g.pt, g.pb, g.h, g.oh, a.count_include_pad)
        args.append(em.derived_constant(1.0 / np.maximum(rows, 1)))
    scratch = fill_bytes(g)
    if scratch:
        args.append(em.scratch(scratch, per_thread=True))
    fn, b = em.function(op.name, len(args), parallel=True)
    x, y = fn.args[0], fn.args[1]
    # Y's pixels are C floats apart, or a Concat's row apart when the pool writes its slice of the
    # Concat's output in place (passes/memory.py writes_strided: Inception's pool branch, DenseNet's
    # transition); the masked stores of a partial vector leave the neighbours' channels alone
    view = em.plan.memory.view(op.outputs[0], em.tensor(op.outputs[0]).size)
    ldc = g.c if view.contiguous else view.stride
    fill = None
    if scratch:
        fill = em.thread_scratch(b, fn.args[len(args) - 1], scratch, fn.args[-2])
        fill_row(b, fill, -math.inf if is_max else 0.0, g.w * g.c)
    unrolled = g.kh * g.kw <= MAX_UNROLLED_TAPS  # bigger windows loop over taps (LLVM would unroll for minutes)
    lo, hi = em.thread_range(b, fn, g.n * g.oh)
    with for_range(b, hi, start=lo, name="row") as row:
        image, oy = b.udiv(row, i64(g.oh)), b.urem(row, i64(g.oh))
        inputs = [tap_rows(b, x, fill, g, image, oy, kh) for kh in range(g.kh)] if unrolled else None
        r = _PoolRow(b, em.gemm, g, is_max, x, fill, image, oy, inputs, gep(b, y, b.mul(row, i64(g.ow * ldc))), ldc)
        inv_row = None if is_max else b.load(gep(b, fn.args[2], oy), typ=ir.FloatType())
        for run in runs:
            scale = None if is_max else em.gemm.splat(b, b.fmul(inv_row, f32(1.0 / max(run.count, 1))))
            if run.stop - run.start == 1:
                _pixel(r, run, i64(run.start), scale)
            else:
                with for_range(b, run.stop, start=run.start, name="ox") as ox:
                    _pixel(r, run, ox, scale)
    b.ret_void()
    return KernelCall(fn, args)


def _pixel(r: _PoolRow, run: Run, ox: ir.Value, scale: ir.Value | None) -> None:
    """Output pixel ox of the row, every channel; ``scale`` multiplies an average's sums."""
    b, gm, g = r.b, r.gm, r.g
    col = b.mul(b.sub(b.mul(ox, i64(g.sw)), i64(g.pl)), i64(g.c))  # input column ox*sw - pl

    def block(off: ir.Value, valids: list[int]) -> None:
        at = b.add(col, off)
        if r.inputs is not None:
            sums = [_window_unrolled(r, at, run, v, valid) for v, valid in enumerate(valids)]
        else:
            sums = _window_loops(r, at, run, valids)
        out = b.add(b.mul(ox, i64(r.ldc)), off)
        for v, (s, valid) in enumerate(zip(sums, valids)):
            gm.vstore(b, s if scale is None else b.fmul(s, scale), gep(b, r.yrow, b.add(out, i64(v * gm.isa.width))),
                      valid)

    channel_blocks(b, g.c, gm.isa.width, CHUNK_VECTORS, block)


def _window_unrolled(r: _PoolRow, at: ir.Value, run: Run, v: int, valid: int) -> ir.Value:
    """Channel vector ``v`` of one pixel: every in-bounds tap loaded, reduced as a tree."""
    b, gm, g = r.b, r.gm, r.g
    taps = [gm.vload(b, gep(b, r.inputs[kh], b.add(at, i64(kw * g.dw * g.c + v * gm.isa.width))), valid)
            for kh in range(g.kh) for kw in range(run.lo, run.hi)]
    return tree(r.combine, taps) if taps else gm.splat(b, f32(r.start))


def _window_loops(r: _PoolRow, at: ir.Value, run: Run, valids: list[int]) -> list[ir.Value]:
    """A big window's channel vectors of one pixel, taps in loops (accumulators in stack slots that
    mem2reg turns into registers)."""
    b, gm, g = r.b, r.gm, r.g
    accs = [alloca_entry(b, gm.vec, f"acc{v}") for v in range(len(valids))]
    for acc in accs:
        b.store(gm.splat(b, f32(r.start)), acc)
    if run.hi > run.lo:
        with for_range(b, opaque(b, g.kh), name="kh") as kh:
            src = tap_rows(b, r.x, r.fill, g, r.image, r.oy, kh)
            with for_range(b, opaque(b, run.hi), start=run.lo, name="kw") as kw:
                at_kw = b.add(at, b.mul(kw, i64(g.dw * g.c)))
                for v, (acc, valid) in enumerate(zip(accs, valids)):
                    tap = gm.vload(b, gep(b, src, b.add(at_kw, i64(v * gm.isa.width))), valid)
                    b.store(r.combine(b.load(acc, typ=gm.vec), tap), acc)
    return [b.load(acc, typ=gm.vec) for acc in accs]


def emit_global_pool_channels_last(em: ModuleEmitter, op: Op) -> KernelCall:
    """y[n, c] = mean (or max) over pixels of x[n, pixel, c]: CHUNK_VECTORS vectors of channels
    accumulate pixel after pixel in strict order (no fast-math reassociation: every channel is
    summed the same way, so equal channels give equal means)."""
    xs = em.tensor(op.inputs[0]).shape
    channels = xs[-1]
    is_max = op.kind is OpKind.GLOBAL_MAX_POOL
    gm, w = em.gemm, em.isa.width
    # the sizes at run time (a size table): the pools of a network's stages are one function per
    # shape of the last channel block (EfficientNet-B0: 11 kernels -> 2)
    table = em.size_table([xs[0], em.tensor(op.inputs[0]).size // (xs[0] * channels), channels,
                           channels // w // CHUNK_VECTORS])
    fn, b = em.function(op.name, 3)
    x, y = fn.args[:2]
    n, pixels, c, blocks = em.read_sizes(b, fn.args[2], 4)
    start = ir.Constant(gm.vec, [-math.inf if is_max else 0.0] * w)
    # 1 / pixels rounded to float32 once, as Python's f32(1.0 / pixels) is
    scale = gm.splat(b, b.fptrunc(b.fdiv(ir.Constant(F64, 1.0), b.sitofp(pixels, F64)), F32))
    with for_range(b, n, name="img") as ni:
        def block(c0: ir.Value, valids: list[int]) -> None:
            base = gep(b, x, b.add(b.mul(ni, b.mul(pixels, c)), c0))
            accs = [alloca_entry(b, gm.vec, "acc") for _ in valids]
            for acc in accs:
                b.store(start, acc)
            with for_range(b, pixels, name="px") as p:
                row = gep(b, base, b.mul(p, c))
                for v, (acc, valid) in enumerate(zip(accs, valids)):
                    x_v = gm.vload(b, gep(b, row, v * w), valid)
                    old = b.load(acc, typ=gm.vec)
                    b.store(fmax(b, old, x_v) if is_max else b.fadd(old, x_v), acc)
            out = gep(b, y, b.add(b.mul(ni, c), c0))
            for v, (acc, valid) in enumerate(zip(accs, valids)):
                total = b.load(acc, typ=gm.vec)
                gm.vstore(b, total if is_max else b.fmul(total, scale), gep(b, out, v * w), valid)

        channel_blocks(b, channels, w, CHUNK_VECTORS, block, blocks)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0], table])
