"""Loss kernels: softmax cross-entropy (saving the softmax), MSE and BCE, and their gradients."""
from __future__ import annotations

import math

from convc.codegen.llvm_utils import (
    F32,
    F64,
    FAST,
    I64,
    alloca_entry,
    call_intrinsic,
    f32,
    fmax,
    for_range,
    i64,
    in_range,
    load,
    store,
)
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.loss import BCE_EPS, LOG_CLAMP


def _f64(v: float) -> ir.Constant:
    return ir.Constant(F64, float(v))


def _label(b: ir.IRBuilder, labels: ir.Value, row, classes: int) -> ir.Value:
    """labels[row], or 0 when it is out of range (rejected before the call; never read out of bounds)."""
    lab = load(b, labels, row, I64)
    return b.select(in_range(b, lab, 0, classes), lab, i64(0))


@emitter(OpKind.SOFTMAX_CROSS_ENTROPY)
def emit_softmax_cross_entropy(em: ModuleEmitter, op: Op) -> KernelCall:
    n, c = em.tensor(op.inputs[0]).shape
    fn, b = em.function(op.name, 4)
    x, labels, loss, probs = fn.args
    mx = alloca_entry(b, F32, "max")
    total = alloca_entry(b, F32, "sum")
    acc = alloca_entry(b, F64, "loss")
    b.store(_f64(0.0), acc)
    with for_range(b, n, name="row") as r:
        base = b.mul(r, i64(c))
        b.store(f32(-math.inf), mx)
        with for_range(b, c, name="cls") as j:
            b.store(fmax(b, b.load(mx, typ=F32), load(b, x, b.add(base, j))), mx)
        m = b.load(mx, typ=F32)
        b.store(f32(0.0), total)
        with for_range(b, c, name="cls") as j:
            e = call_intrinsic(b, "llvm.exp.f32", [b.fsub(load(b, x, b.add(base, j)), m)])
            store(b, e, probs, b.add(base, j))
            b.store(b.fadd(b.load(total, typ=F32), e, flags=FAST), total)
        s = b.load(total, typ=F32)
        inv = b.fdiv(f32(1.0), s)
        with for_range(b, c, name="cls") as j:
            at = b.add(base, j)
            store(b, b.fmul(load(b, probs, at), inv), probs, at)
        # -log softmax[label] = log(sum) - (x[label] - max)
        picked = b.fsub(load(b, x, b.add(base, _label(b, labels, r, c))), m)
        term = b.fsub(call_intrinsic(b, "llvm.log.f32", [s]), picked)
        b.store(b.fadd(b.load(acc, typ=F64), b.fpext(term, F64)), acc)
    store(b, b.fptrunc(b.fdiv(b.load(acc, typ=F64), _f64(n)), F32), loss, 0)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs))


@emitter(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD)
def emit_softmax_cross_entropy_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    n, c = em.tensor(op.inputs[0]).shape
    fn, b = em.function(op.name, 3)
    probs, labels, dx = fn.args
    inv_n = f32(1.0 / n)
    with for_range(b, n, name="row") as r:
        base = b.mul(r, i64(c))
        with for_range(b, c, name="cls") as j:
            at = b.add(base, j)
            store(b, b.fmul(load(b, probs, at), inv_n), dx, at)
        at = b.add(base, _label(b, labels, r, c))
        store(b, b.fsub(load(b, dx, at), inv_n), dx, at)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


def _mean_loss(em: ModuleEmitter, op: Op, term) -> KernelCall:
    size = em.tensor(op.inputs[0]).size
    fn, b = em.function(op.name, 3)
    p, t, loss = fn.args
    acc = alloca_entry(b, F64, "loss")
    b.store(_f64(0.0), acc)
    with for_range(b, size) as i:
        b.store(b.fadd(b.load(acc, typ=F64), b.fpext(term(b, load(b, p, i), load(b, t, i)), F64)), acc)
    store(b, b.fptrunc(b.fdiv(b.load(acc, typ=F64), _f64(size)), F32), loss, 0)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


def _elementwise_grad(em: ModuleEmitter, op: Op, term) -> KernelCall:
    size = em.tensor(op.inputs[0]).size
    fn, b = em.function(op.name, 3)
    p, t, dx = fn.args
    with for_range(b, size) as i:
        store(b, b.fmul(term(b, load(b, p, i), load(b, t, i)), f32(1.0 / size)), dx, i)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


def _clamped_log(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    lg = call_intrinsic(b, "llvm.log.f32", [v])
    return b.select(b.fcmp_ordered("<", lg, f32(LOG_CLAMP)), f32(LOG_CLAMP), lg)


def _bce(b: ir.IRBuilder, p, t):
    lp, lq = _clamped_log(b, p), _clamped_log(b, b.fsub(f32(1.0), p))
    return b.fneg(b.fadd(b.fmul(t, lp), b.fmul(b.fsub(f32(1.0), t), lq)))


def _bce_grad(b: ir.IRBuilder, p, t):
    den = b.fmul(p, b.fsub(f32(1.0), p))
    den = b.select(b.fcmp_ordered("<", den, f32(BCE_EPS)), f32(BCE_EPS), den)
    return b.fdiv(b.fsub(p, t), den)


@emitter(OpKind.MSE_LOSS)
def emit_mse(em: ModuleEmitter, op: Op) -> KernelCall:
    return _mean_loss(em, op, lambda b, p, t: b.fmul(b.fsub(p, t), b.fsub(p, t)))


@emitter(OpKind.MSE_LOSS_GRAD)
def emit_mse_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    return _elementwise_grad(em, op, lambda b, p, t: b.fmul(f32(2.0), b.fsub(p, t)))


@emitter(OpKind.BCE_LOSS)
def emit_bce(em: ModuleEmitter, op: Op) -> KernelCall:
    return _mean_loss(em, op, _bce)


@emitter(OpKind.BCE_LOSS_GRAD)
def emit_bce_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    return _elementwise_grad(em, op, _bce_grad)
