"""Loss kernels and their gradients (formulas and options: convc/ops/loss.py).

Every loss reads an optional third input, ``rows``: the samples past it count for nothing (a last
batch padded to the compiled one). Sums run in double precision; the gradients in float32.
"""
from __future__ import annotations

import math

from convc.codegen.llvm_utils import (
    F32,
    F64,
    FAST,
    I64,
    alloca_entry,
    call_intrinsic,
    constant_table,
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
from convc.ops.loss import BCE_EPS, LOG_CLAMP, options


def _f64(v: float) -> ir.Constant:
    return ir.Constant(F64, float(v))


def _rows(b: ir.IRBuilder, op: Op, args, n: int) -> ir.Value:
    """The counted rows: the ``rows`` input clamped to [0, n], or n without it."""
    if len(op.inputs) < 3:
        return i64(n)
    r = load(b, args[2], 0, I64)
    r = b.select(b.icmp_signed("<", r, i64(0)), i64(0), r)
    return b.select(b.icmp_signed(">", r, i64(n)), i64(n), r)


class _Targets:
    """A cross-entropy row's weighted target distribution ``w_j t_j`` (convc/ops/loss.py)."""

    def __init__(self, em: ModuleEmitter, op: Op, b: ir.IRBuilder, y_ptr: ir.Value):
        self.a = options(op.kind, op.attrs)
        self.n, self.c = em.tensor(op.inputs[0]).shape
        self.soft = em.tensor(op.inputs[1]).dtype.kind == "f"
        self.eps = self.a.label_smoothing
        self.w = constant_table(b, self.a.weights, "class_weights", F32) if self.a.weights else None
        self.y_ptr = y_ptr

    def weight(self, b: ir.IRBuilder, j: ir.Value) -> ir.Value:
        if self.w is None:
            return f32(1.0)
        return b.load(b.gep(self.w, [i64(0), j], inbounds=True, source_etype=self.w.value_type), typ=F32)

    def label(self, b: ir.IRBuilder, r) -> tuple[ir.Value, ir.Value]:
        """(the row's class index clamped into range, whether it is a class: out of range = ignored)."""
        lab = load(b, self.y_ptr, r, I64)
        ok = in_range(b, lab, 0, self.c)
        return b.select(ok, lab, i64(0)), ok

    def wt(self, b: ir.IRBuilder, r, j, y) -> ir.Value:
        """w_j t_j of row r, class j (y: the row's clamped class for hard labels)."""
        if self.soft:
            t = load(b, self.y_ptr, b.add(b.mul(r, i64(self.c)), j))
            t = b.fadd(b.fmul(t, f32(1.0 - self.eps)), f32(self.eps / self.c)) if self.eps else t
        else:
            hit = b.icmp_signed("==", j, y)
            t = b.select(hit, f32(1.0 - self.eps + self.eps / self.c), f32(self.eps / self.c))
        return b.fmul(self.weight(b, j), t) if self.w is not None else t

    def divisor(self, b: ir.IRBuilder, rows: ir.Value) -> ir.Value:
        """The mean's divisor (double): the counted rows' weights of their classes, or (soft) their number."""
        if self.soft:
            return b.sitofp(rows, F64)
        acc = alloca_entry(b, F64, "divisor")
        b.store(_f64(0.0), acc)
        with for_range(b, rows, name="row") as r:
            y, ok = self.label(b, r)
            w = b.select(ok, b.fpext(self.weight(b, y), F64), _f64(0.0))
            b.store(b.fadd(b.load(acc, typ=F64), w), acc)
        return b.load(acc, typ=F64)


@emitter(OpKind.SOFTMAX_CROSS_ENTROPY)
def emit_softmax_cross_entropy(em: ModuleEmitter, op: Op) -> KernelCall:
    n, c = em.tensor(op.inputs[0]).shape
    fn, b = em.function(op.name, len(op.inputs) + 2)
    x, y_ptr, loss, probs = fn.args[0], fn.args[1], fn.args[-2], fn.args[-1]
    tg = _Targets(em, op, b, y_ptr)
    log_probs = tg.a.form == "log_probs"
    rows = _rows(b, op, fn.args, n)
    mx = alloca_entry(b, F32, "max")
    total = alloca_entry(b, F32, "sum")
    acc = alloca_entry(b, F64, "loss")
    row_acc = alloca_entry(b, F64, "row")
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
        log_s = call_intrinsic(b, "llvm.log.f32", [s])

        def neg_logp(j):  # -log p_j: log(sum) - (x_j - max), or -x_j for log-probabilities
            xj = load(b, x, b.add(base, j))
            return b.fneg(xj) if log_probs else b.fsub(log_s, b.fsub(xj, m))

        if tg.soft:
            counted = b.icmp_signed("<", r, rows)
            y = None
        else:
            y, ok = tg.label(b, r)
            counted = b.and_(b.icmp_signed("<", r, rows), ok)
        if tg.soft or tg.eps:  # every class has a share of the target
            b.store(_f64(0.0), row_acc)
            with for_range(b, c, name="cls") as j:
                term = b.fpext(b.fmul(tg.wt(b, r, j, y), neg_logp(j)), F64)
                b.store(b.fadd(b.load(row_acc, typ=F64), term), row_acc)
            term = b.load(row_acc, typ=F64)
        else:
            term = b.fpext(b.fmul(tg.weight(b, y), neg_logp(y)) if tg.w is not None else neg_logp(y), F64)
        b.store(b.fadd(b.load(acc, typ=F64), b.select(counted, term, _f64(0.0))), acc)
    divisor = tg.divisor(b, rows)
    mean = b.select(b.fcmp_ordered("!=", divisor, _f64(0.0)), b.fdiv(b.load(acc, typ=F64), divisor), _f64(0.0))
    store(b, b.fptrunc(mean, F32), loss, 0)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs))


@emitter(OpKind.SOFTMAX_CROSS_ENTROPY_GRAD)
def emit_softmax_cross_entropy_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    n, c = em.tensor(op.inputs[0]).shape
    fn, b = em.function(op.name, len(op.inputs) + 1)
    probs, y_ptr, dx = fn.args[0], fn.args[1], fn.args[-1]
    tg = _Targets(em, op, b, y_ptr)
    rows = _rows(b, op, fn.args, n)
    divisor = tg.divisor(b, rows)
    inv = b.select(b.fcmp_ordered("!=", divisor, _f64(0.0)), b.fptrunc(b.fdiv(_f64(1.0), divisor), F32), f32(0.0))
    mass = alloca_entry(b, F32, "mass")
    with for_range(b, n, name="row") as r:
        base = b.mul(r, i64(c))
        if tg.soft:
            y, counted = None, b.icmp_signed("<", r, rows)
        else:
            y, ok = tg.label(b, r)
            counted = b.and_(b.icmp_signed("<", r, rows), ok)
        scale = b.select(counted, inv, f32(0.0))
        if tg.a.form == "logits":  # sum_j w_j t_j, the softmax's coefficient
            if tg.soft or tg.w is not None:
                b.store(f32(0.0), mass)
                with for_range(b, c, name="cls") as j:
                    b.store(b.fadd(b.load(mass, typ=F32), tg.wt(b, r, j, y)), mass)
                a_r = b.load(mass, typ=F32)
            else:
                a_r = f32(1.0)
        with for_range(b, c, name="cls") as j:
            at = b.add(base, j)
            wt = tg.wt(b, r, j, y)
            g = b.fsub(b.fmul(a_r, load(b, probs, at)), wt) if tg.a.form == "logits" else b.fneg(wt)
            store(b, b.fmul(g, scale), dx, at)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


# --- elementwise losses -------------------------------------------------------------------------------
def _fabs(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return call_intrinsic(b, "llvm.fabs.f32", [v])


def _sign(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return b.select(b.fcmp_ordered(">", v, f32(0.0)), f32(1.0),
                    b.select(b.fcmp_ordered("<", v, f32(0.0)), f32(-1.0), f32(0.0)))


def _clamped_log(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    lg = call_intrinsic(b, "llvm.log.f32", [v])
    return b.select(b.fcmp_ordered("<", lg, f32(LOG_CLAMP)), f32(LOG_CLAMP), lg)


def _term(kind: OpKind, a, grad: bool):
    """(builder, p, t) -> the loss of one element (as double) or its derivative (float)."""
    one = f32(1.0)
    if kind is OpKind.BCE_LOSS and a.form == "logits":
        if grad:  # sigmoid(x) - t
            return lambda b, x, t: b.fsub(b.fdiv(one, b.fadd(one, call_intrinsic(b, "llvm.exp.f32", [b.fneg(x)]))), t)

        def bce_logits(b, x, t):  # max(x, 0) - x t + log(1 + exp(-|x|)), in double
            x64, t64 = b.fpext(x, F64), b.fpext(t, F64)
            soft = call_intrinsic(b, "llvm.log.f64", [b.fadd(_f64(1.0), call_intrinsic(
                b, "llvm.exp.f64", [b.fneg(call_intrinsic(b, "llvm.fabs.f64", [x64]))]))])
            relu = b.select(b.fcmp_ordered(">", x64, _f64(0.0)), x64, _f64(0.0))
            return b.fadd(b.fsub(relu, b.fmul(x64, t64)), soft)
        return bce_logits
    if kind is OpKind.BCE_LOSS:
        if grad:
            def bce_grad(b, p, t):
                den = b.fmul(p, b.fsub(one, p))
                den = b.select(b.fcmp_ordered("<", den, f32(BCE_EPS)), f32(BCE_EPS), den)
                return b.fdiv(b.fsub(p, t), den)
            return bce_grad
        return lambda b, p, t: b.fpext(b.fneg(b.fadd(b.fmul(t, _clamped_log(b, p)),
                                                     b.fmul(b.fsub(one, t), _clamped_log(b, b.fsub(one, p))))), F64)
    if a.form == "mse":
        if grad:
            return lambda b, p, t: b.fmul(f32(2.0), b.fsub(p, t))
        return lambda b, p, t: b.fpext(b.fmul(b.fsub(p, t), b.fsub(p, t)), F64)
    if a.form == "l1":
        if grad:
            return lambda b, p, t: _sign(b, b.fsub(p, t))
        return lambda b, p, t: b.fpext(_fabs(b, b.fsub(p, t)), F64)
    delta = a.delta
    scale = 1.0 if a.form == "huber" else 1.0 / delta  # smooth_l1 (beta = delta) = huber / beta

    def huber(b, p, t):
        d = b.fsub(p, t)
        small = b.fcmp_ordered("<", _fabs(b, d), f32(delta))
        if grad:
            v = b.select(small, d, b.fmul(f32(delta), _sign(b, d)))
            return b.fmul(v, f32(scale)) if scale != 1.0 else v
        d64 = b.fpext(d, F64)
        quad = b.fmul(_f64(0.5), b.fmul(d64, d64))
        lin = b.fmul(_f64(delta), b.fsub(call_intrinsic(b, "llvm.fabs.f64", [d64]), _f64(0.5 * delta)))
        v = b.select(small, quad, lin)
        return b.fmul(v, _f64(scale)) if scale != 1.0 else v
    return huber


_BASE = {OpKind.MSE_LOSS_GRAD: OpKind.MSE_LOSS, OpKind.BCE_LOSS_GRAD: OpKind.BCE_LOSS}


@emitter(OpKind.MSE_LOSS, OpKind.BCE_LOSS)
def emit_elementwise_loss(em: ModuleEmitter, op: Op) -> KernelCall:
    shape = em.tensor(op.inputs[0]).shape
    per_row = em.tensor(op.inputs[0]).size // shape[0]
    term = _term(op.kind, options(op.kind, op.attrs), grad=False)
    fn, b = em.function(op.name, len(op.inputs) + 1)
    p, t, loss = fn.args[0], fn.args[1], fn.args[-1]
    count = b.mul(_rows(b, op, fn.args, shape[0]), i64(per_row))
    acc = alloca_entry(b, F64, "loss")
    b.store(_f64(0.0), acc)
    with for_range(b, count) as i:
        b.store(b.fadd(b.load(acc, typ=F64), term(b, load(b, p, i), load(b, t, i))), acc)
    n64 = b.sitofp(count, F64)
    mean = b.select(b.icmp_signed(">", count, i64(0)), b.fdiv(b.load(acc, typ=F64), n64), _f64(0.0))
    store(b, b.fptrunc(mean, F32), loss, 0)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


@emitter(OpKind.MSE_LOSS_GRAD, OpKind.BCE_LOSS_GRAD)
def emit_elementwise_loss_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    shape = em.tensor(op.inputs[0]).shape
    size = em.tensor(op.inputs[0]).size
    term = _term(_BASE[op.kind], options(op.kind, op.attrs), grad=True)
    fn, b = em.function(op.name, len(op.inputs) + 1)
    p, t, dx = fn.args[0], fn.args[1], fn.args[-1]
    count = b.mul(_rows(b, op, fn.args, shape[0]), i64(size // shape[0]))
    inv = b.select(b.icmp_signed(">", count, i64(0)), b.fptrunc(b.fdiv(_f64(1.0), b.sitofp(count, F64)), F32),
                   f32(0.0))
    with for_range(b, size) as i:
        v = b.fmul(term(b, load(b, p, i), load(b, t, i)), inv)
        store(b, b.select(b.icmp_signed("<", i, count), v, f32(0.0)), dx, i)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])
