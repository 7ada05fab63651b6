"""Data movement: Concat and Split as block copies per outer index; Transpose, Pad and StridedSlice as
loop nests over the output (Pad reads per-axis index tables built at compile time).

Concat and Transpose read and write tensors at the strides the memory plan gives them
(passes/memory.py ``View``: a Concat input produced in place lives in rows of the Concat's output);
a Concat copies only the inputs that were not produced in place."""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.shape import pad_source_index
from convc.passes.memory import element_strides
from convc.codegen.llvm_utils import I64, PTR, VOID, constant_table, f32, for_range, gep, i64, linear_index, load, \
    loop_nest, memcpy, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.elementwise import broadcast_strides, collapse


def strides_of(em: ModuleEmitter, name: str) -> list[int]:
    """Element strides of tensor ``name`` as the memory plan lays it out."""
    t = em.tensor(name)
    return element_strides(t.shape, em.plan.memory.view(name, t.size))


def copy_strided(b, dst, dst_strides: list[int], src, src_strides: list[int], shape: tuple[int, ...]) -> None:
    """dst[i] = src[i] over ``shape``; runs contiguous on both sides are one memcpy each."""
    dims, (s_src, s_dst) = collapse(shape, [src_strides, dst_strides])
    if s_src[-1] == 1 and s_dst[-1] == 1:
        run = dims[-1]
        with loop_nest(b, dims[:-1]) as idx:
            memcpy(b, gep(b, dst, linear_index(b, idx, s_dst[:-1])), gep(b, src, linear_index(b, idx, s_src[:-1])),
                   run * 4)
        return
    with loop_nest(b, dims) as idx:
        store(b, load(b, src, linear_index(b, idx, s_src)), dst, linear_index(b, idx, s_dst))


@emitter(OpKind.CONCAT)
def emit_concat(em: ModuleEmitter, op: Op) -> KernelCall:
    """Copies the inputs the memory plan did not place in their slice of the output."""
    axis = op.attrs.axis
    placed = em.plan.memory.placed
    y_strides = strides_of(em, op.outputs[0])
    copied = [(k, t) for k, t in enumerate(op.inputs) if not (t in placed and placed[t].concat == op.name)]
    fn, b = em.function(op.name, len(copied) + 1)
    y = fn.args[-1]
    starts = np.cumsum([0] + [em.tensor(t).shape[axis] for t in op.inputs])
    for arg, (k, t) in zip(fn.args, copied):
        dst = gep(b, y, i64(int(starts[k]) * y_strides[axis]))
        copy_strided(b, dst, y_strides, arg, strides_of(em, t), em.tensor(t).shape)
    b.ret_void()
    return KernelCall(fn, [t for _, t in copied] + [op.outputs[0]])


@emitter(OpKind.SPLIT)
def emit_split(em: ModuleEmitter, op: Op) -> KernelCall:
    axis = op.attrs.axis
    shape = em.tensor(op.inputs[0]).shape
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    fn, b = em.function(op.name, len(op.outputs) + 1)
    x = fn.args[0]
    offset = 0
    for k, n in enumerate(op.attrs.sizes):
        chunk = n * inner
        with for_range(b, outer, name="outer") as o:
            src = gep(b, x, b.add(b.mul(o, i64(shape[axis] * inner)), i64(offset)))
            memcpy(b, gep(b, fn.args[k + 1], b.mul(o, i64(chunk))), src, chunk * 4)
        offset += chunk
    b.ret_void()
    return KernelCall(fn, [op.inputs[0]] + list(op.outputs))


def row_major_strides(shape: tuple[int, ...]) -> list[int]:
    return broadcast_strides(shape, shape) if shape else []


@emitter(OpKind.TRANSPOSE)
def emit_transpose(em: ModuleEmitter, op: Op) -> KernelCall:
    """y[i] = x[permuted i]; output axes whose input axes stay adjacent merge into one loop."""
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    x_strides = [strides_of(em, op.inputs[0])[p] if xs[p] != 1 else 0 for p in op.attrs.perm]
    dims, (src, dst) = collapse(ys, [x_strides, strides_of(em, op.outputs[0])])
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    # a transpose proper (the output's inner dimension walks the input at a stride, an outer one
    # walks it contiguously, e.g. channels last to channels first) runs in tiles
    across = [k for k in range(len(dims) - 1) if src[k] == 1]
    # a permutation within each short row (ShuffleNet's channel shuffle channels last, (P, g, C/g) -> (P, C/g, g))
    # reads and writes whole rows: the plain loops, unrolled by LLVM over the row, beat a call per row
    row = int(np.prod(dims[-2:]))
    in_rows = len(dims) > 2 and across == [len(dims) - 2] and row <= SMALL_ROW and src[0] == dst[0] == row
    if dst[-1] == 1 and src[-1] != 1 and across and dims[across[-1]] > 1 and dims[-1] > 1 and not in_rows:
        k = across[-1]
        outer = [d for d in range(len(dims) - 1) if d != k]
        with loop_nest(b, [dims[d] for d in outer]) as idx:
            x0 = linear_index(b, idx, [src[d] for d in outer])
            y0 = linear_index(b, idx, [dst[d] for d in outer])
            b.call(transpose_tiles(em), [gep(b, x, x0), gep(b, y, y0)] + [i64(v) for v in (
                dims[k], dims[-1], src[k], src[-1], dst[k], dst[-1])])
        b.ret_void()
        return KernelCall(fn, [op.inputs[0], op.outputs[0]])
    with loop_nest(b, dims) as idx:
        store(b, load(b, x, linear_index(b, idx, src)), y, linear_index(b, idx, dst))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


SMALL_ROW = 256  # floats: a row permuted by the plain loops (see emit_transpose)
TILE_ROWS, TILE_COLS = 16, 64  # a tile reads TILE_COLS input rows of one cache line (16 floats) each


def transpose_tiles(em: ModuleEmitter) -> ir.Function:
    """void transpose_tiles(x, y, rows, cols, src0, src1, dst0, dst1):
    y[i * dst0 + j * dst1] = x[i * src0 + j * src1] for i < rows, j < cols, in tiles of
    TILE_ROWS x TILE_COLS: the TILE_COLS input lines a tile reads stay in L1 while its rows use every
    float of them, where a walk down whole columns would fetch each line again per row (a 56x56
    channels-last image: 3136 lines, more than L1 holds).

    One function for every transpose of a model, its sizes and strides arguments, kept out of line
    (``noinline``): its code is then the same in every model, compiled once and cached
    (codegen/split.py), where a copy specialized per layer cost LLVM about 0.1 s each (DenseNet-121
    has 120 layout changes). The tiles are memory-bound: constant strides made them no faster."""
    fn = em.emitted.get("transpose_tiles")
    if fn is not None:
        return fn
    fn = ir.Function(em.module, ir.FunctionType(VOID, [PTR, PTR] + [I64] * 6),
                     name=em.module.get_unique_name("transpose_tiles"))
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    x, y, rows, cols, src0, src1, dst0, dst1 = fn.args
    for a in (x, y):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))

    def bounded(lo, size: int, total):
        hi = b.add(lo, i64(size))
        return b.select(b.icmp_signed("<", hi, total), hi, total)

    with for_range(b, rows, step=TILE_ROWS, name="ti") as i0:
        i1 = bounded(i0, TILE_ROWS, rows)
        with for_range(b, cols, step=TILE_COLS, name="tj") as j0:
            j1 = bounded(j0, TILE_COLS, cols)
            with for_range(b, i1, start=i0, name="i") as i:
                xi, yi = b.mul(i, src0), b.mul(i, dst0)
                with for_range(b, j1, start=j0, name="j") as j:
                    store(b, load(b, x, b.add(xi, b.mul(j, src1))), y, b.add(yi, b.mul(j, dst1)))
    b.ret_void()
    em.emitted["transpose_tiles"] = fn
    return fn


@emitter(OpKind.STRIDED_SLICE)
def emit_strided_slice(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    xs = em.tensor(op.inputs[0]).shape
    x_strides = row_major_strides(xs)
    base = sum(start * st for start, st in zip(a.starts, x_strides))
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    with loop_nest(b, a.shape) as idx:
        src = b.add(i64(base), linear_index(b, idx, [step * st for step, st in zip(a.steps, x_strides)]))
        store(b, load(b, x, src), y, linear_index(b, idx, row_major_strides(a.shape)))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


@emitter(OpKind.PAD)
def emit_pad(em: ModuleEmitter, op: Op) -> KernelCall:
    """Every mode is one gather: per axis, a table maps the output position to the input index (-1 for the
    constant fill), so reflect/edge/wrap and cropping need no case analysis in the loop."""
    a = op.attrs
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    r = len(xs)
    x_strides = row_major_strides(xs)
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    tables = [constant_table(b, pad_source_index(a, xs[d], d, r), f"{fn.name}_axis{d}") for d in range(r)]
    with loop_nest(b, ys) as idx:
        src, ok = i64(0), None
        for d in range(r):
            v = load(b, tables[d], idx[d], I64)
            if a.mode == "constant":
                inside = b.icmp_signed(">=", v, i64(0))
                ok = inside if ok is None else b.and_(ok, inside)
                v = b.select(inside, v, i64(0))  # a clamped address: the load below stays in bounds
            src = b.add(src, b.mul(v, i64(x_strides[d])))
        value = load(b, x, src)
        if ok is not None:
            value = b.select(ok, value, f32(a.value))
        store(b, value, y, linear_index(b, idx, row_major_strides(ys)))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
