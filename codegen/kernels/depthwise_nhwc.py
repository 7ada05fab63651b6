"""Channels-last (NHWC) depthwise convolution (one filter per channel), vectorized over channels.

W [C, 1, kh, kw] is repacked at compile time to [kh, kw, C'] (C' = C rounded up to the vector width,
zero-filled), so a tap's weights for a channel vector are one load. An output row is computed PIXELS
outputs at a time; for each channel vector of such a block, the kh*kw weight vectors and the bias are
loaded into registers once and an input vector that several of the outputs read (stride < kernel) is
loaded once. Input rows in the vertical padding are read from a per-thread zero row, so only the
columns near the left and right edges differ from the interior: ``column_runs`` gives them their own
code with their in-bounds taps, the interior has no checks at all. The epilogue (residual, then an
activation) runs on the vectors before the store; an activation with no vector form (Tanh...) runs as
a pass over the finished row. The N*OH output rows are split between threads.

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
from convc.codegen.llvm_utils import I64, for_range, gep, i64, load, memset_zero, prefetch, store
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.codegen.kernels.blas import split_epilogue
from convc.codegen.kernels.epilogue import apply_epilogue, epilogue_pass
from convc.codegen.kernels.pool_nhwc import Run, Window, channel_blocks, column_runs, fill_bytes, tap_rows

# MobileNetV2 at batch 16 (29 MB outputs at 56x56x144): 0.65x the time of cached stores; at batch 1 its
# outputs (at most 4.8 MB) stay in the last-level cache for the next layer, so they are stored as usual
STREAM_MIN_BYTES = 8 << 20
PREFETCH_BLOCKS = 2  # measured on [16, 144, 56, 56]: 1 to 4 blocks ahead do about as well; none is ~30% slower


def pixels_per_step(width: int) -> int:
    """Outputs per block: 8 accumulators beside 9 weight vectors fit AVX-512's 32 registers; AVX2 and
    SSE have 16."""
    return 8 if width >= 16 else 4


def pack_weights(weight: np.ndarray, kh: int, kw: int, width: int) -> np.ndarray:
    """[C, 1, kh, kw] -> [kh, kw, C'] with C' = C rounded up to ``width``, zeros past C."""
    c = weight.shape[0]
    packed = np.zeros((kh, kw, -(-c // width) * width), dtype=np.float32)
    packed[:, :, :c] = weight.reshape(c, kh, kw).transpose(1, 2, 0)
    return packed


@dataclass
class _Row:
    """What the code for one output row works with."""
    em: ModuleEmitter
    b: ir.IRBuilder
    g: Window
    cp: int                  # packed weights' channel stride
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
    cp = -(-g.c // width) * width
    weight = em.tensor(w_name).data
    # weights fed at run time (training graphs) are repacked by each thread into its scratch
    repack_bytes = 0 if weight is not None else g.kh * g.kw * cp * 4
    zero_bytes = fill_bytes(g)
    args: list = [x_name, w_name if weight is None else em.derived_constant(pack_weights(weight, g.kh, g.kw, width))]
    args += [t for t in (b_name, r_name) if t is not None] + [op.outputs[0]]
    if zero_bytes + repack_bytes:
        args.append(em.scratch(zero_bytes + repack_bytes, per_thread=True))
    fn, b = em.function(op.name, len(args), parallel=True)
    x, wt = fn.args[0], fn.args[1]
    bias = fn.args[2] if b_name is not None else None
    residual = fn.args[2 + (b_name is not None)] if r_name is not None else None
    y = fn.args[2 + (b_name is not None) + (r_name is not None)]
    zero = None
    if zero_bytes + repack_bytes:
        mine = em.thread_scratch(b, fn.args[len(args) - 1], zero_bytes + repack_bytes, fn.args[-2])
        if zero_bytes:
            zero = mine
            memset_zero(b, zero, g.w * g.c * 4)
        if repack_bytes:
            wt = gep(b, mine, zero_bytes // 4)
            _repack(b, fn.args[1], wt, g, cp)
    in_kernel, after = split_epilogue(a.epilogue)
    runs = column_runs(g)
    # rows past the previous output row's last: the last kernel row with stride 1, the last two with 2...
    fresh = [kh for kh in range(g.kh) if kh * g.dh > (g.kh - 1) * g.dh - g.sh]
    lo, hi = em.thread_range(b, fn, g.n * g.oh)

    def rows(stream: bool) -> None:
        with for_range(b, hi, start=lo, name="row") as row:
            image, oy = b.udiv(row, i64(g.oh)), b.urem(row, i64(g.oh))
            y_off = b.mul(row, i64(g.ow * g.c))
            r = _Row(em, b, g, cp, [tap_rows(b, x, zero, g, image, oy, kh) for kh in range(g.kh)], fresh, wt, bias,
                     gep(b, y, y_off), gep(b, residual, y_off) if residual is not None else None, in_kernel, stream)
            for run in runs:
                _sweep(r, run)
            epilogue_pass(b, after, r.yrow, None, g.ow * g.c)

    if streams_output(g, width, after):
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


def _repack(b: ir.IRBuilder, w: ir.Value, packed: ir.Value, g: Window, cp: int) -> None:
    """packed[kh, kw, c] = w[c, 0, kh, kw], zeros for c in [C, C')."""
    taps = g.kh * g.kw
    memset_zero(b, packed, taps * cp * 4)
    with for_range(b, g.c, name="rc") as c, for_range(b, taps, name="rt") as t:
        store(b, load(b, w, b.add(b.mul(c, i64(taps)), t)), packed, b.add(b.mul(t, i64(cp)), c))


def _sweep(r: _Row, run: Run) -> None:
    """The output columns of ``run``: blocks of PIXELS (a loop), then one block of the rest."""
    b, step = r.b, pixels_per_step(r.em.isa.width)
    full, rem = divmod(run.stop - run.start, step)
    if full == 1:
        _block(r, run, i64(run.start), step)
    elif full:
        with for_range(b, run.start + full * step, start=run.start, step=step, name="ox") as ox:
            _block(r, run, ox, step)
    if rem:
        _block(r, run, i64(run.start + full * step), rem)


def _block(r: _Row, run: Run, ox: ir.Value, count: int) -> None:
    """Outputs ox .. ox+count-1, one channel vector after the other (the weights in registers for each)."""
    b, gm, g = r.b, r.em.gemm, r.g

    def channel_vector(off: ir.Value, valids: list[int]) -> None:
        (valid,) = valids
        taps = [[gm.vload(b, gep(b, r.wt, b.add(off, i64((kh * g.kw + kw) * r.cp))), gm.isa.width)
                 for kw in range(g.kw)] for kh in range(g.kh)]
        start = gm.vload(b, gep(b, r.bias, off), valid) if r.bias is not None else ir.Constant(gm.vec, None)
        _pixels(r, run, ox, count, taps, start, off, valid)

    channel_blocks(b, g.c, gm.isa.width, 1, channel_vector)


def _pixels(r: _Row, run: Run, ox: ir.Value, count: int, taps, start: ir.Value, off: ir.Value, valid: int) -> None:
    """One channel vector of outputs ox .. ox+count-1: the input vector at column ox*sw - pl + j feeds
    every (pixel p, tap kw) with p*sw + kw*dw = j, so it is loaded once and used at once."""
    b, gm, g = r.b, r.em.gemm, r.g
    width = gm.isa.width
    accs = [start] * count
    col = b.add(b.mul(b.sub(b.mul(ox, i64(g.sw)), i64(g.pl)), i64(g.c)), off)  # index arithmetic: may be < 0
    uses: dict[int, list[tuple[int, int]]] = {}
    for p in range(count):
        for kw in range(run.lo, run.hi):
            uses.setdefault(p * g.sw + kw * g.dw, []).append((p, kw))
    for kh in range(g.kh):
        for j in sorted(uses):
            v = gm.vload(b, gep(b, r.inputs[kh], b.add(col, i64(j * g.c))), valid)
            for p, kw in uses[j]:
                accs[p] = gm.fma(b, v, taps[kh][kw], accs[p])
    if count == pixels_per_step(width):
        # the fresh rows' input for the block PREFETCH_BLOCKS ahead: count*sw pixels of C channels, of
        # which each channel vector takes count*sw lines (so the block's loop covers it all, in order)
        ahead = b.add(b.sub(col, off), b.mul(off, i64(count * g.sw)))
        for kh in r.fresh:
            for i in range(count * g.sw):
                prefetch(b, r.inputs[kh], b.add(ahead, i64(PREFETCH_BLOCKS * count * g.sw * g.c + i * width)))
    out = b.add(b.mul(ox, i64(g.c)), off)
    for p, acc in enumerate(accs):
        at = b.add(out, i64(p * g.c))
        res = gm.vload(b, gep(b, r.rrow, at), valid) if r.epi.residual else None
        gm.vstore(b, apply_epilogue(b, r.epi, acc, res), gep(b, r.yrow, at), valid, r.stream)
