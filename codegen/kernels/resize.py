"""Resize as one pass over the output: per axis, tap tables (input index and weight per output position)
built at compile time by convc.ops.resize.axis_taps; axes the resize leaves alone read the output index."""
from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.resize import ResizeAttrs, axis_taps
from convc.codegen.llvm_utils import F32, I1, I64, alloca_entry, constant_table, f32, for_range, i64, linear_index, \
    load, loop_nest, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.shape import row_major_strides


@emitter(OpKind.RESIZE)
def emit_resize(em: ModuleEmitter, op: Op) -> KernelCall:
    a: ResizeAttrs = op.attrs
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    x_strides = row_major_strides(xs)
    taps = [axis_taps(a, d, xs[d]) for d in range(len(xs))]
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    tables = {}
    for d, t in enumerate(taps):
        if t.is_identity:
            continue
        weights = None if np.all(t.weight == 1.0) else constant_table(b, t.weight.reshape(-1), f"{fn.name}_w{d}", F32)
        extrapolated = constant_table(b, t.extrapolated, f"{fn.name}_e{d}") if t.extrapolated.any() else None
        tables[d] = (constant_table(b, t.index.reshape(-1), f"{fn.name}_i{d}"), weights, extrapolated)
    acc = alloca_entry(b, F32, "acc")
    with loop_nest(b, ys, name="o") as o:
        b.store(f32(0.0), acc)
        with ExitStack() as nest:
            src, weight = i64(0), None
            for d in range(len(ys)):
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
            v = load(b, x, src)
            b.store(b.fadd(b.load(acc, typ=F32), v if weight is None else b.fmul(weight, v)), acc)
        value = b.load(acc, typ=F32)
        outside = None
        for d, (_, _, extrapolated) in tables.items():
            if extrapolated is not None:
                e = b.trunc(load(b, extrapolated, o[d], I64), I1)
                outside = e if outside is None else b.or_(outside, e)
        if outside is not None:
            value = b.select(outside, f32(a.extrapolation_value), value)
        store(b, value, y, linear_index(b, o, row_major_strides(ys)))
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
