"""Channels-last (NHWC) depthwise convolution (one filter per channel), vectorized over channels.

W [C, 1, kh, kw] is repacked at compile time to [C'/width, kh, kw, width] (C' = C rounded up to the
vector width, zero-filled): a channel vector's kh*kw tap weights are one contiguous block. An output row
is computed PIXELS outputs at a time; for each channel vector of such a block, the kh*kw weight vectors
and the bias are loaded into registers once and an input vector that several of the outputs read
(stride < kernel) is loaded once. Input rows in the vertical padding are read from a per-thread zero
row, so only the columns near the left and right edges differ from the interior: ``column_runs`` gives
them their own code with their in-bounds taps, the interior has no checks at all. The epilogue
(residual, then an activation) runs on the vectors before the store; an activation with no vector form
(Tanh...) runs as a pass over the finished row. The N*OH output rows are split between threads.

The sizes are read at run time from a size table (``ModuleEmitter.size_table``): images, rows, columns,
channels, the interior's blocks and the pixels left after them. What stays in the code is the window
(kernel, stride, dilation, the top and left pads), the edge columns' runs (the left ones at their
columns, the right ones counted from the row's end), C mod the vector width, the bias, residual and
epilogue, and whether the output streams: the depthwise layers of a network with one window are one
compiled function (at batch 1, EfficientNet-B0's 16 layers are 4 functions, MobileNetV2's 17 are 2). The
interior's last pixels (fewer than a block) go as a block of 2 and one of 1 (AVX-512: 4, 2, 1), each
taken or not at run time.

A block reads its input channel vector by channel vector, an order the hardware prefetchers do not
follow well once the input comes from memory (a batch of 16 MobileNet images is 29 MB): the kernel
prefetches the rows an output row reads first, PREFETCH_BLOCKS blocks ahead, in address order.

An output of STREAM_MIN_BYTES or more is stored past the caches (non-temporal stores) when its vectors
are aligned: a store that misses the cache first reads the line it writes, so a depthwise layer whose
output comes back from memory anyway moved three tensors' bytes for two.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops.conv import split_inputs
from convc.ops.epilogue import Epilogue
from convc.passes.memory import align
from convc.codegen.llvm_utils import I64, for_range, gep, i64, load, memset_zero, prefetch, store
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.codegen.kernels.blas import split_epilogue
from convc.codegen.kernels.conv_grad import thread_slice
from convc.codegen.kernels.epilogue import apply_epilogue, epilogue_pass
from convc.codegen.kernels.pool_nhwc import Run, Window, channel_blocks, column_runs

# MobileNetV2 at batch 16 (29 MB outputs at 56x56x144): 0.65x the time of cached stores; at batch 1 its
# outputs (at most 4.8 MB) stay in the last-level cache for the next layer, so they are stored as usual
STREAM_MIN_BYTES = 8 << 20
PREFETCH_BLOCKS = 2  # measured on [16, 144, 56, 56]: 1 to 4 blocks ahead do about as well; none is ~30% slower


def pixels_per_step(width: int) -> int:
    """Outputs per block: 8 accumulators beside 9 weight vectors fit AVX-512's 32 registers; AVX2 and
    SSE have 16."""
    return 8 if width >= 16 else 4


def pack_weights(weight: np.ndarray, kh: int, kw: int, width: int) -> np.ndarray:
    """[C, 1, kh, kw] -> [C'/width, kh, kw, width] with C' = C rounded up to ``width``, zeros past C."""
    c = weight.shape[0]
    vectors = -(-c // width)
    packed = np.zeros((vectors * width, kh, kw), dtype=np.float32)
    packed[:c] = weight.reshape(c, kh, kw)
    return np.ascontiguousarray(packed.reshape(vectors, width, kh, kw).transpose(0, 2, 3, 1))


@dataclass(frozen=True)
class Columns:
    """An output row's column runs as the code holds them: ``left`` at their columns, then the
    ``interior`` run (every tap in bounds) from its column to ``right``'s first, then ``right`` with
    columns counted from the row's end (negative). Without an interior run (a row narrower than the
    window) every run is in ``left`` and the code has the row's width in it."""
    left: tuple[Run, ...]
    interior: int | None  # the interior run's first column
    right: tuple[Run, ...]

    @staticmethod
    def of(g: Window) -> Columns:
        runs = column_runs(g)
        inner = [i for i, r in enumerate(runs) if (r.lo, r.hi) == (0, g.kw)]
        if not inner:
            return Columns(tuple(runs), None, ())
        i = max(inner, key=lambda i: runs[i].stop - runs[i].start)
        right = tuple(Run(r.start - g.ow, r.stop - g.ow, r.lo, r.hi) for r in runs[i + 1:])
        return Columns(tuple(runs[:i]), runs[i].start, right)

    def interior_pixels(self, ow: int) -> int:
        return ow + (self.right[0].start if self.right else 0) - self.interior


@dataclass
class _Row:
    """What the code for one output row works with."""
    em: ModuleEmitter
    b: ir.IRBuilder
    g: Window
    s: dict[str, ir.Value]   # the sizes, read from the table at the kernel's entry
    inputs: list[ir.Value]   # per kernel row: the start of the input row it reads (or the zero row)
    fresh: list[int]         # kernel rows that read input rows no earlier output row read (prefetched)
    wt: ir.Value
    bias: ir.Value | None
    yrow: ir.Value
    rrow: ir.Value | None    # the residual's row
    epi: Epilogue            # the part applied in registers
    stream: bool = False     # whole vectors are stored non-temporally (their addresses are aligned)


def emit_depthwise_channels_last(em: ModuleEmitter, op: Op) -> KernelCall:
    """A 2-D conv with group == C == M whose X is [N, H, W, C] and Y (and residual) [N, OH, OW, C]."""
    a = op.attrs
    x_name, w_name, b_name, r_name = split_inputs(a, op.inputs)
    g = Window.of(a, em.tensor(x_name).shape, em.tensor(op.outputs[0]).shape)
    width = em.isa.width
    step = pixels_per_step(width)
    vectors = -(-g.c // width)
    weight = em.tensor(w_name).data
    # weights fed at run time (training graphs) are repacked by each thread into its scratch
    repack_bytes = 0 if weight is not None else vectors * g.kh * g.kw * width * 4
    zero_bytes = 0 if g.row_taps_inside() else align(g.w * g.c * 4)
    cols = Columns.of(g)
    in_kernel, after = split_epilogue(a.epilogue)
    stream = streams_output(g, width, after)
    inner = cols.interior_pixels(g.ow) if cols.interior is not None else 0
    sizes = dict(rows=g.n * g.oh, oh=g.oh, h=g.h, in_row=g.w * g.c, out_row=g.ow * g.c, c=g.c,
                 whole_vectors=g.c // width, ow=g.ow, blocks=inner // step, rest=inner % step, zero_fill=g.w * g.c * 4,
                 zero_bytes=zero_bytes, repack_bytes=repack_bytes, slice=align(zero_bytes + repack_bytes),
                 ahead=PREFETCH_BLOCKS * step * g.sw * g.c)
    args: list = [x_name, w_name if weight is None else em.derived_constant(pack_weights(weight, g.kh, g.kw, width))]
    args += [t for t in (b_name, r_name) if t is not None] + [op.outputs[0]]
    if zero_bytes + repack_bytes:
        args.append(em.scratch(zero_bytes + repack_bytes, per_thread=True))
    args.append(em.size_table(list(sizes.values())))
    # everything the code depends on besides the table: layers that agree on it share the function (and
    # on which arguments alias, which decides the noalias marks)
    signature = ("depthwise-nhwc", g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, cols, g.c % width,
                 b_name is not None, r_name is not None, a.epilogue, weight is None, zero_bytes > 0, stream,
                 em.overlapping(args))
    try:
        fn = em.emitted.get(signature)
    except TypeError:  # an epilogue holding something unhashable: emitted afresh
        signature, fn = None, None
    if fn is not None:
        return KernelCall(fn, args)
    fn, b = em.function(op.name, len(args), parallel=True)
    if signature is not None:
        em.emitted[signature] = fn
    s = dict(zip(sizes, em.read_sizes(b, fn.args[len(args) - 1], len(sizes))))
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if b_name is not None else None
    residual = fn.args[2 + (b_name is not None)] if r_name is not None else None
    y = fn.args[2 + (b_name is not None) + (r_name is not None)]
    zero = None
    if zero_bytes + repack_bytes:
        mine = thread_slice(b, fn.args[len(args) - 2], s["slice"], fn.args[-2])
        if zero_bytes:
            zero = mine
            memset_zero(b, zero, s["zero_fill"])
        if repack_bytes:
            wt = b.gep(mine, [s["zero_bytes"]], inbounds=True, source_etype=ir.IntType(8))
            _repack(b, fn.args[1], wt, g, s, width)
    # rows past the previous output row's last: the last kernel row with stride 1, the last two with 2...
    fresh = [kh for kh in range(g.kh) if kh * g.dh > (g.kh - 1) * g.dh - g.sh]
    lo, hi = em.thread_range(b, fn, s["rows"])

    def rows(streamed: bool) -> None:
        with for_range(b, hi, start=lo, name="row") as row:
            image, oy = b.udiv(row, s["oh"]), b.urem(row, s["oh"])
            y_off = b.mul(row, s["out_row"])
            r = _Row(em, b, g, s, [_tap_row(b, x, zero, g, s, image, oy, kh) for kh in range(g.kh)], fresh, wt,
                     bias, gep(b, y, y_off), gep(b, residual, y_off) if residual is not None else None, in_kernel,
                     streamed)
            for run in cols.left:
                _sweep(r, run, i64(run.start), run.stop - run.start)
            if cols.interior is not None:
                _interior(r, cols)
            for run in cols.right:
                _sweep(r, run, b.sub(s["ow"], i64(-run.start)), run.stop - run.start)
            epilogue_pass(b, after, r.yrow, None, s["out_row"])

    if stream:
        # every vector store is at a multiple of C floats plus a whole vector from Y: aligned when Y is
        # (Y is the caller's array when it is a model output)
        aligned = b.icmp_unsigned("==", b.and_(b.ptrtoint(y, I64), i64(4 * width - 1)), i64(0))
        with b.if_else(aligned) as (then, otherwise):
            with then:
                rows(True)
                b.fence("seq_cst")  # the streamed stores are visible to the next kernel's threads
            with otherwise:
                rows(False)
    else:
        rows(False)
    b.ret_void()
    return KernelCall(fn, args)


def streams_output(g: Window, width: int, after: Epilogue) -> bool:
    """Whether the output is large enough to bypass the caches, its channels a whole number of vectors,
    and nothing reads it back in this kernel (a scalar activation pass over the finished row)."""
    return g.n * g.oh * g.ow * g.c * 4 >= STREAM_MIN_BYTES and g.c % width == 0 and after.empty


def _tap_row(b: ir.IRBuilder, x: ir.Value, zero: ir.Value | None, g: Window, s: dict, image: ir.Value,
             oy: ir.Value, kh: int) -> ir.Value:
    """Start of the input row read by tap row ``kh`` of output row ``oy``: the zero row when it lies in
    the padding (``zero`` None: it never does)."""
    iy = b.add(b.mul(oy, i64(g.sh)), i64(kh * g.dh - g.pt))
    if zero is None:
        return gep(b, x, b.mul(b.add(b.mul(image, s["h"]), iy), s["in_row"]))
    ok = b.icmp_unsigned("<", iy, s["h"])  # a row above the image wraps to a large unsigned index
    row = gep(b, x, b.mul(b.add(b.mul(image, s["h"]), b.select(ok, iy, i64(0))), s["in_row"]))
    return b.select(ok, row, zero)


def _repack(b: ir.IRBuilder, w: ir.Value, packed: ir.Value, g: Window, s: dict, width: int) -> None:
    """packed as ``pack_weights`` lays it out from w [C, 1, kh, kw], zeros for c in [C, C')."""
    taps = g.kh * g.kw
    memset_zero(b, packed, s["repack_bytes"])
    with for_range(b, s["c"], name="rc") as c, for_range(b, taps, name="rt") as t:
        at = b.add(b.add(b.mul(b.udiv(c, i64(width)), i64(taps * width)), b.mul(t, i64(width))),
                   b.urem(c, i64(width)))
        store(b, load(b, w, b.add(b.mul(c, i64(taps)), t)), packed, at)


def _interior(r: _Row, cols: Columns) -> None:
    """The interior run: its whole blocks (a loop), then the ``rest`` pixels as a block of step/2, one of
    step/4 ... and one of 1, each taken when its bit of ``rest`` is set (three pixels cost one weight load
    per tap more than a block of three, about 1% of such a row; a block per count of pixels was 28% more
    code to compile)."""
    b, step = r.b, pixels_per_step(r.em.isa.width)
    run = Run(cols.interior, cols.interior + 1, 0, r.g.kw)
    start = i64(cols.interior)
    end = b.add(start, b.mul(r.s["blocks"], i64(step)))
    with for_range(b, end, start=start, step=step, name="ox") as ox:
        _block(r, run, ox, step)
    at, part = end, step // 2
    while part:
        bit = b.and_(r.s["rest"], i64(part))
        with b.if_then(b.icmp_unsigned("!=", bit, i64(0))):
            _block(r, run, at, part)
        at, part = b.add(at, bit), part // 2


def _sweep(r: _Row, run: Run, start: ir.Value, length: int) -> None:
    """``length`` output columns of ``run`` from ``start``: blocks of PIXELS (a loop), then one block of
    the rest."""
    b, step = r.b, pixels_per_step(r.em.isa.width)
    full, rem = divmod(length, step)
    if full == 1:
        _block(r, run, start, step)
    elif full:
        with for_range(b, b.add(start, i64(full * step)), start=start, step=step, name="ox") as ox:
            _block(r, run, ox, step)
    if rem:
        _block(r, run, b.add(start, i64(full * step)), rem)


def _block(r: _Row, run: Run, ox: ir.Value, count: int) -> None:
    """Outputs ox .. ox+count-1, one channel vector after the other (the weights in registers for each).
    The offsets that do not depend on the channel vector are computed once for the block."""
    b, gm, g, c = r.b, r.em.gemm, r.g, r.s["c"]
    taps = g.kh * g.kw
    col = b.mul(b.sub(b.mul(ox, i64(g.sw)), i64(g.pl)), c)  # input column ox*sw - pl (may be < 0)
    reach = max((count - 1) * g.sw + (run.hi - 1) * g.dw, count - 1) + 1
    times_c = [i64(0)]  # k * C for the columns the block reads and the pixels it writes
    for _ in range(1, reach):
        times_c.append(b.add(times_c[-1], c))
    out = b.mul(ox, c)

    def channel_vector(off: ir.Value, valids: list[int]) -> None:
        (valid,) = valids
        w_at = gep(b, r.wt, b.mul(off, i64(taps)))  # this vector's kh*kw weight vectors, one after the other
        weights = [[gm.vload(b, gep(b, w_at, (kh * g.kw + kw) * gm.isa.width), gm.isa.width)
                    for kw in range(g.kw)] for kh in range(g.kh)]
        start = gm.vload(b, gep(b, r.bias, off), valid) if r.bias is not None else ir.Constant(gm.vec, None)
        _pixels(r, run, count, weights, start, col, off, b.add(out, off), times_c, valid)

    channel_blocks(b, g.c, gm.isa.width, 1, channel_vector, r.s["whole_vectors"])


def _pixels(r: _Row, run: Run, count: int, weights, start: ir.Value, col: ir.Value, off: ir.Value, out: ir.Value,
            times_c: list[ir.Value], valid: int) -> None:
    """One channel vector (at ``off``) of ``count`` outputs: the input vector at column ox*sw - pl + j
    feeds every (pixel p, tap kw) with p*sw + kw*dw = j, so it is loaded once and used at once. ``col``
    is the first input pixel's offset, ``out`` the first output vector's."""
    b, gm, g = r.b, r.em.gemm, r.g
    width = gm.isa.width
    accs = [start] * count
    first = b.add(col, off)
    uses: dict[int, list[tuple[int, int]]] = {}
    for p in range(count):
        for kw in range(run.lo, run.hi):
            uses.setdefault(p * g.sw + kw * g.dw, []).append((p, kw))
    for kh in range(g.kh):
        for j in sorted(uses):
            v = gm.vload(b, gep(b, r.inputs[kh], b.add(first, times_c[j])), valid)
            for p, kw in uses[j]:
                accs[p] = gm.fma(b, v, weights[kh][kw], accs[p])
    if count == pixels_per_step(width):
        # the fresh rows' input for the block PREFETCH_BLOCKS ahead: count*sw pixels of C channels, of
        # which each channel vector takes count*sw lines (so the block's loop covers it all, in order)
        ahead = b.add(b.add(col, r.s["ahead"]), b.mul(off, i64(count * g.sw)))
        for kh in r.fresh:
            for i in range(count * g.sw):
                prefetch(b, r.inputs[kh], b.add(ahead, i64(i * width)))
    for p, acc in enumerate(accs):
        at = b.add(out, times_c[p])
        res = gm.vload(b, gep(b, r.rrow, at), valid) if r.epi.residual else None
        gm.vstore(b, apply_epilogue(b, r.epi, acc, res), gep(b, r.yrow, at), valid, r.stream)
