"""ReduceSum, ReduceMax, ReduceMin and ReduceProd over any set of axes.

Adjacent axes that are both reduced or both kept merge into runs; a run of reduced elements that is
contiguous in memory (the last run) folds into a register and is combined with the output once,
otherwise each input row is combined element by element into the output row it reduces onto.
"""
from __future__ import annotations

import math

from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import F32, FAST, alloca_entry, call_intrinsic, f32, for_range, i64, load, loop_nest, \
    store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter

# kind -> (the identity it starts from, how two values combine); max and min propagate NaN as numpy does
IDENTITY = {OpKind.REDUCE_SUM: 0.0, OpKind.REDUCE_MAX: -math.inf, OpKind.REDUCE_MIN: math.inf,
            OpKind.REDUCE_PROD: 1.0}


def combine(b: ir.IRBuilder, kind: OpKind, acc: ir.Value, x: ir.Value) -> ir.Value:
    if kind is OpKind.REDUCE_SUM:
        return b.fadd(acc, x, flags=FAST)
    if kind is OpKind.REDUCE_PROD:
        return b.fmul(acc, x)
    return call_intrinsic(b, "llvm.maximum.f32" if kind is OpKind.REDUCE_MAX else "llvm.minimum.f32", [acc, x])


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


@emitter(*IDENTITY)
def emit_reduce(em: ModuleEmitter, op: Op) -> KernelCall:
    kind = op.kind
    x_shape = em.tensor(op.inputs[0]).shape
    runs = reduce_runs(x_shape, op.attrs.axes)
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    with for_range(b, em.tensor(op.outputs[0]).size, name="init") as k:
        store(b, f32(IDENTITY[kind]), y, k)
    # element strides of each run in x (row-major) and in y (kept runs only)
    x_strides, y_strides, acc_x, acc_y = [], [], 1, 1
    for d, red in reversed(runs):
        x_strides.append(acc_x)
        y_strides.append(0 if red else acc_y)
        acc_x *= d
        if not red:
            acc_y *= d
    x_strides.reverse()
    y_strides.reverse()
    *outer, (last, last_red) = runs
    acc = alloca_entry(b, F32, "acc")
    with loop_nest(b, [d for d, _ in outer] or [1]) as idx:
        idx = idx if outer else []
        xo = i64(0)
        yo = i64(0)
        for v, sx, sy in zip(idx, x_strides, y_strides):
            xo = b.add(xo, b.mul(v, i64(sx)))
            if sy:
                yo = b.add(yo, b.mul(v, i64(sy)))
        if last_red:  # reduce the contiguous run into a register, then combine it once
            b.store(f32(IDENTITY[kind]), acc)
            with for_range(b, last, name="r") as j:
                b.store(combine(b, kind, b.load(acc, typ=F32), load(b, x, b.add(xo, j))), acc)
            store(b, combine(b, kind, load(b, y, yo), b.load(acc, typ=F32)), y, yo)
        else:
            with for_range(b, last, name="k") as j:
                at = b.add(yo, j)
                store(b, combine(b, kind, load(b, y, at), load(b, x, b.add(xo, j))), y, at)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])
