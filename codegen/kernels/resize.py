"""Resize as one pass over the output: per axis, tap tables (input index and weight per output position)
built at compile time by convc.ops.resize.axis_taps; axes the resize leaves alone read the output index.

Trailing axes the resize leaves alone and that are contiguous on both sides (the channels of a
channels-last feature map, passes/layout.py) form a *run*: every output position of the other axes
copies (nearest) or accumulates (weighted taps) whole runs in vectors, instead of one float per
output element with its tap loops. Input and output are read and written at the strides the memory
plan gives them, so a Resize feeding a channels-last Concat writes straight into its slice."""
from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.resize import ResizeAttrs, Taps, axis_taps
from llvmlite import ir

from convc.codegen.llvm_utils import F32, I1, I64, alloca_entry, constant_table, f32, for_range, gep, i64, if_then, \
    linear_index, load, loop_nest, memcpy, memset_zero, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.elementwise import vector_map
from convc.codegen.kernels.shape import strides_of


def trailing_run(taps: list[Taps], shape: tuple[int, ...], x_strides: list[int], y_strides: list[int]) -> int:
    """How many trailing axes are left alone by the resize and contiguous in both input and output."""
    k, run = len(shape), 1
    while k > 0 and taps[k - 1].is_identity and x_strides[k - 1] == run and y_strides[k - 1] == run:
        run *= shape[k - 1]
        k -= 1
    return len(shape) - k


@emitter(OpKind.RESIZE)
def emit_resize(em: ModuleEmitter, op: Op) -> KernelCall:
    a: ResizeAttrs = op.attrs
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    x_strides, y_strides = strides_of(em, op.inputs[0]), strides_of(em, op.outputs[0])
    taps = [axis_taps(a, d, xs[d]) for d in range(len(xs))]
    inner = trailing_run(taps, ys, x_strides, y_strides)
    outer = len(ys) - inner
    run = int(np.prod(ys[outer:], dtype=np.int64))
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    tables = {}
    for d, t in enumerate(taps):
        if t.is_identity:
            continue
        weights = None if np.all(t.weight == 1.0) else constant_table(b, t.weight.reshape(-1), f"{fn.name}_w{d}", F32)
        extrapolated = constant_table(b, t.extrapolated, f"{fn.name}_e{d}") if t.extrapolated.any() else None
        tables[d] = (constant_table(b, t.index.reshape(-1), f"{fn.name}_i{d}"), weights, extrapolated)
    one_tap = all(taps[d].index.shape[1] == 1 and tables[d][1] is None for d in tables)  # nearest: a copy
    acc = alloca_entry(b, F32, "acc")
    with loop_nest(b, ys[:outer], name="o") as o:
        dst = linear_index(b, o, y_strides[:outer]) if outer else i64(0)
        if run > 1 and not one_tap:
            memset_zero(b, gep(b, y, dst), run * 4)
        else:
            b.store(f32(0.0), acc)
        with ExitStack() as nest:
            src, weight = i64(0), None
            for d in range(outer):
                if d not in tables:
                    src = b.add(src, b.mul(o[d], i64(x_strides[d])))
                    continue
                index, weights, _ = tables[d]
                width = taps[d].index.shape[1]
                t = nest.enter_context(for_range(b, width, name=f"tap{d}"))
                at = b.add(b.mul(o[d], i64(width)), t)
                src = b.add(src, b.mul(load(b, index, at, I64), i64(x_strides[d])))
                if weights is not None:
                    w = load(b, weights, at)
                    weight = w if weight is None else b.fmul(weight, w)
            if run == 1:
                v = load(b, x, src)
                b.store(b.fadd(b.load(acc, typ=F32), v if weight is None else b.fmul(weight, v)), acc)
            elif one_tap:
                memcpy(b, gep(b, y, dst), gep(b, x, src), run * 4)
            else:
                def axpy(b, v, weight=weight):
                    return b.fadd(v[0], v[1] if weight is None else b.fmul(splat(b, weight, v[1].type), v[1]))
                vector_map(b, axpy, [gep(b, y, dst), gep(b, x, src)], gep(b, y, dst), 0, run, em.isa.width)
        outside = None
        for d, (_, _, extrapolated) in tables.items():
            if extrapolated is not None:
                e = b.trunc(load(b, extrapolated, o[d], I64), I1)
                outside = e if outside is None else b.or_(outside, e)
        if run == 1:
            value = b.load(acc, typ=F32)
            if outside is not None:
                value = b.select(outside, f32(a.extrapolation_value), value)
            store(b, value, y, dst)
        elif outside is not None:
            with if_then(b, outside):
                vector_map(b, lambda b, v: splat(b, f32(a.extrapolation_value), v[0].type), [gep(b, y, dst)],
                           gep(b, y, dst), 0, run, em.isa.width)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


def splat(b: ir.IRBuilder, value: ir.Value, ty: ir.Type) -> ir.Value:
    """``value`` (a float) as ``ty``: itself for a scalar, broadcast to every lane of a vector."""
    if not isinstance(ty, ir.VectorType):
        return value
    vec = b.insert_element(ir.Constant(ty, None), value, i64(0))
    return b.shuffle_vector(vec, ir.Constant(ty, None), ir.Constant(ir.VectorType(ir.IntType(32), ty.count), None))
