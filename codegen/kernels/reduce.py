"""ReduceSum, ReduceMax, ReduceMin and ReduceProd over any set of axes, in vector registers.

Adjacent axes that are both reduced or both kept merge into runs (size-1 axes drop out). Two forms,
by the innermost run, both split between threads by output element so no two threads write one:

- the innermost run is reduced (a row sum, LogSumExp's max over classes): each output element
  accumulates its rows ``UNROLL`` vectors at a time (independent accumulators, so the adds overlap),
  then single vectors, then scalars; the vectors meet in a horizontal reduction at the end;
- the innermost run is kept (a sum over channels or over the batch): the lanes run across adjacent
  kept elements, each lane its own output. Short rows keep a tile of up to ``UNROLL`` vectors in
  registers while the loop walks every reduced position (the odd columns at the end of a row use a
  half vector, then scalars); long rows accumulate in y, a block at a time, each reduced row
  streaming through once.

No fast-math flags: a sum or product is computed in IEEE arithmetic (inf + -inf is NaN as in numpy),
and max and min propagate NaN as numpy's do.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

from llvmlite import ir

from convc.codegen.llvm_utils import (F32, I32, alloca_entry, call_intrinsic, constant, fmax, for_range, gep, i64,
                                      loop_nest)
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.ir import Op
from convc.ops import OpKind

# kind -> the identity it starts from
IDENTITY = {OpKind.REDUCE_SUM: 0.0, OpKind.REDUCE_MAX: -math.inf, OpKind.REDUCE_MIN: math.inf,
            OpKind.REDUCE_PROD: 1.0}
UNROLL = 4  # vector accumulators per output row, or vectors per tile of kept columns
# kept rows longer than this accumulate in y, STREAM_BLOCK columns (16 KB, half of L1) at a time: a register tile
# would read every reduced row a few cache lines at a time, which the prefetchers follow worse than one stream
STREAM_ABOVE = 64
STREAM_BLOCK = 4096

Run = tuple[int, int]  # (extent, element stride in x)


def _fmin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """min that returns NaN if either side is NaN (compare and select, like llvm_utils.fmax)."""
    return b.select(b.or_(b.fcmp_ordered("<", x, y), b.fcmp_unordered("uno", x, x)), x, y)


def combine(b: ir.IRBuilder, kind: OpKind, acc: ir.Value, x: ir.Value, in_memory: bool = False) -> ir.Value:
    """acc (op) x for scalars or vectors alike. ``in_memory``: acc was loaded from where the result is
    stored; max and min are then LLVM's intrinsics, since LLVM turns a select between a loaded value and
    another into a masked store (vmaskmovps), several times slower on x86 than a load, max and store."""
    if kind is OpKind.REDUCE_SUM:
        return b.fadd(acc, x)
    if kind is OpKind.REDUCE_PROD:
        return b.fmul(acc, x)
    if in_memory:
        return call_intrinsic(b, "llvm.maximum.f32" if kind is OpKind.REDUCE_MAX else "llvm.minimum.f32", [acc, x])
    return fmax(b, acc, x) if kind is OpKind.REDUCE_MAX else _fmin(b, acc, x)


def _identity(kind: OpKind, ty: ir.Type) -> ir.Constant:
    v = IDENTITY[kind]
    return constant(ty, (float(v),) * ty.count) if isinstance(ty, ir.VectorType) else constant(F32, float(v))


def _horizontal(b: ir.IRBuilder, kind: OpKind, v: ir.Value) -> ir.Value:
    """A vector's lanes combined into one float, halving the vector each step."""
    while v.type.count > 1:
        half = v.type.count // 2
        lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half))))
        hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half, 2 * half))))
        v = combine(b, kind, lo, hi)
    return b.extract_element(v, ir.Constant(I32, 0))


def reduce_runs(shape: tuple[int, ...], axes: tuple[int, ...]) -> list[tuple[int, bool]]:
    """Merge adjacent axes that are both reduced or both kept: (extent, reduced) runs, size-1 axes dropped."""
    runs: list[tuple[int, bool]] = []
    for i, d in enumerate(shape):
        if d == 1:
            continue
        red = i in axes
        if runs and runs[-1][1] == red:
            runs[-1] = (runs[-1][0] * d, red)
        else:
            runs.append((d, red))
    return runs or [(1, False)]


def _offset(b: ir.IRBuilder, flat: ir.Value, runs: list[Run]) -> ir.Value:
    """The x offset of the row-major position ``flat`` over ``runs`` (the last varies fastest)."""
    off = i64(0)
    for d, stride in reversed(runs):
        off = b.add(off, b.mul(b.urem(flat, i64(d)), i64(stride)))
        flat = b.udiv(flat, i64(d))
    return off


@contextmanager
def _over_reduced(b: ir.IRBuilder, base: ir.Value, reduced: list[Run]) -> Iterator[ir.Value]:
    """A loop nest over the reduced runs, yielding each position's x offset (``base`` if there are none)."""
    with loop_nest(b, [d for d, _ in reduced] or [1], name="r") as idx:
        off = base
        for v, (_, stride) in zip(idx, reduced):
            off = b.add(off, b.mul(v, i64(stride)))
        yield off


def _load(b: ir.IRBuilder, x: ir.Value, at: ir.Value, ty: ir.Type) -> ir.Value:
    return b.load(gep(b, x, at), typ=ty, align=4)


def _reduce_row(b: ir.IRBuilder, kind: OpKind, x: ir.Value, base: ir.Value, outer: list[Run], length: int,
                width: int) -> ir.Value:
    """One output element: the contiguous rows of ``length`` at every position of the ``outer`` reduced runs."""
    vec = ir.VectorType(F32, width)
    n_vec = length // width
    unroll = UNROLL if n_vec >= UNROLL else 1
    whole_unrolled = length - length % (unroll * width)
    whole = length - length % width
    accs = [alloca_entry(b, vec, f"acc{u}") for u in range(unroll)] if n_vec else []
    tail = alloca_entry(b, F32, "tail")
    for a in accs:
        b.store(_identity(kind, vec), a)
    b.store(_identity(kind, F32), tail)
    with _over_reduced(b, base, outer) as row:
        if n_vec:
            with for_range(b, whole_unrolled, step=unroll * width, name="v") as j:
                for u, a in enumerate(accs):
                    at = b.add(row, b.add(j, i64(u * width)))
                    b.store(combine(b, kind, b.load(a, typ=vec), _load(b, x, at, vec)), a)
            if whole > whole_unrolled:
                with for_range(b, whole, start=whole_unrolled, step=width, name="v1") as j:
                    b.store(combine(b, kind, b.load(accs[0], typ=vec), _load(b, x, b.add(row, j), vec)), accs[0])
        if length > whole:
            with for_range(b, length, start=whole, name="s") as j:
                b.store(combine(b, kind, b.load(tail, typ=F32), _load(b, x, b.add(row, j), F32)), tail)
    result = b.load(tail, typ=F32)
    if accs:
        values = [b.load(a, typ=vec) for a in accs]
        while len(values) > 1:  # pairwise, as the lanes are
            values = [combine(b, kind, values[i], values[i + 1]) for i in range(0, len(values), 2)]
        result = combine(b, kind, _horizontal(b, kind, values[0]), result)
    return result


def _pieces(columns: int, width: int) -> list[tuple[int, ir.Type]]:
    """(column offset, type) covering ``columns`` adjacent outputs: full vectors, a half vector, scalars."""
    pieces, c = [], 0
    while columns - c >= width:
        pieces.append((c, ir.VectorType(F32, width)))
        c += width
    if width // 2 > 1 and columns - c >= width // 2:
        pieces.append((c, ir.VectorType(F32, width // 2)))
        c += width // 2
    pieces += [(k, F32) for k in range(c, columns)]
    return pieces


def _reduce_tile(b: ir.IRBuilder, kind: OpKind, x: ir.Value, y: ir.Value, base: ir.Value, y_at: ir.Value,
                 reduced: list[Run], columns: int, width: int) -> None:
    """``columns`` adjacent outputs at y[y_at...], each reducing x over ``reduced`` from base + its column."""
    pieces = _pieces(columns, width)
    accs = [alloca_entry(b, ty, f"col{c}") for c, ty in pieces]
    for a, (_, ty) in zip(accs, pieces):
        b.store(_identity(kind, ty), a)
    with _over_reduced(b, base, reduced) as at:
        for a, (c, ty) in zip(accs, pieces):
            b.store(combine(b, kind, b.load(a, typ=ty), _load(b, x, b.add(at, i64(c)), ty)), a)
    for a, (c, ty) in zip(accs, pieces):
        b.store(b.load(a, typ=ty), gep(b, y, b.add(y_at, i64(c))), align=4)


def _stream_block(b: ir.IRBuilder, kind: OpKind, x: ir.Value, y: ir.Value, base: ir.Value, y_at: ir.Value,
                  reduced: list[Run], columns: int, width: int) -> None:
    """``columns`` adjacent outputs at y[y_at...] accumulated in y itself (a block that stays in L1) while
    every reduced position's row segment streams through once, in address order."""
    vec = ir.VectorType(F32, width)
    whole = columns - columns % width
    for lo, hi, step, ty in ((0, whole, width, vec), (whole, columns, 1, F32)):
        if hi > lo:
            with for_range(b, hi, start=lo, step=step, name="init") as c:
                b.store(_identity(kind, ty), gep(b, y, b.add(y_at, c)), align=4)
    with _over_reduced(b, base, reduced) as at:
        for lo, hi, step, ty in ((0, whole, width, vec), (whole, columns, 1, F32)):
            if hi > lo:
                with for_range(b, hi, start=lo, step=step, name="c") as c:
                    dst = gep(b, y, b.add(y_at, c))
                    b.store(combine(b, kind, b.load(dst, typ=ty, align=4), _load(b, x, b.add(at, c), ty), True), dst,
                            align=4)


@emitter(*IDENTITY)
def emit_reduce(em: ModuleEmitter, op: Op) -> KernelCall:
    kind, width = op.kind, em.isa.width
    runs = reduce_runs(em.tensor(op.inputs[0]).shape, op.attrs.axes)
    strides = [math.prod(d for d, _ in runs[i + 1:]) for i in range(len(runs))]
    kept = [(d, s) for (d, red), s in zip(runs, strides) if not red]
    reduced = [(d, s) for (d, red), s in zip(runs, strides) if red]
    fn, b = em.function(op.name, 2, parallel=True)
    x, y = fn.args[:2]
    if runs[-1][1]:  # the contiguous run is reduced: threads split the output elements
        length = reduced.pop()[0]
        lo, hi = em.thread_range(b, fn, math.prod(d for d, _ in kept))
        with for_range(b, hi, start=lo, name="out") as o:
            value = _reduce_row(b, kind, x, _offset(b, o, kept), reduced, length, width)
            b.store(value, gep(b, y, o))
    else:  # the contiguous run is kept: threads split tiles of adjacent outputs
        row = kept.pop()[0]
        streaming = row > STREAM_ABOVE
        tile = STREAM_BLOCK if streaming else UNROLL * width
        reduce_block = _stream_block if streaming else _reduce_tile
        full, rest = divmod(row, tile)
        per_row = full + (rest > 0)
        lo, hi = em.thread_range(b, fn, math.prod(d for d, _ in kept) * per_row)
        with for_range(b, hi, start=lo, name="tile") as item:
            o, t = b.udiv(item, i64(per_row)), b.urem(item, i64(per_row))
            col = b.mul(t, i64(tile))
            base = b.add(_offset(b, o, kept), col)
            y_at = b.add(b.mul(o, i64(row)), col)
            if not rest:
                reduce_block(b, kind, x, y, base, y_at, reduced, tile, width)
            elif not full:
                reduce_block(b, kind, x, y, base, y_at, reduced, rest, width)
            else:
                with b.if_else(b.icmp_unsigned("<", t, i64(full))) as (whole, partial):
                    with whole:
                        reduce_block(b, kind, x, y, base, y_at, reduced, tile, width)
                    with partial:
                        reduce_block(b, kind, x, y, base, y_at, reduced, rest, width)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
