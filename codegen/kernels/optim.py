"""Optimizer updates, in place, gated by the step's ``ok`` flag; AllFinite; the step counter.

The per-step scalars (learning rate, bias corrections, the first-step momentum coefficient) are
computed once per call in double precision from ``lr`` and ``step``; the loop over the parameter
then only multiplies and adds in float32. Formulas: convc/ops/optim.py.
"""
from __future__ import annotations

from convc.codegen.llvm_utils import F32, F64, I32, I64, PTR, alloca_entry, call_intrinsic, f32, for_range, i64, load, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.optim import AdagradAttrs, AdamAttrs, MomentumAttrs, RmsPropAttrs


def _f64(v: float) -> ir.Constant:
    return ir.Constant(F64, float(v))


def _sqrt(b: ir.IRBuilder, v: ir.Value) -> ir.Value:
    return call_intrinsic(b, "llvm.sqrt.f32" if v.type == F32 else "llvm.sqrt.f64", [v])


def _regularized(b: ir.IRBuilder, a, x: ir.Value, g: ir.Value) -> ir.Value:
    if a.l2:
        g = b.fadd(g, b.fmul(f32(a.l2), x))
    if a.l1:
        sign = b.select(b.fcmp_ordered(">", x, f32(0.0)), f32(1.0),
                        b.select(b.fcmp_ordered("<", x, f32(0.0)), f32(-1.0), f32(0.0)))
        g = b.fadd(g, b.fmul(f32(a.l1), sign))
    return g


def _pow(b: ir.IRBuilder, base: float, t: ir.Value) -> ir.Value:
    return call_intrinsic(b, "llvm.pow.f64", [_f64(base), t])


@emitter(OpKind.SGD_UPDATE, OpKind.MOMENTUM_UPDATE, OpKind.ADAGRAD_UPDATE, OpKind.RMSPROP_UPDATE, OpKind.ADAM_UPDATE)
def emit_update(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    n_state = len(op.inputs) - 5
    # the parameter's length is a run-time argument (ModuleEmitter.size_table): every parameter's
    # update of one optimizer is one compiled function (a CIFAR ResNet's 13 SGD updates: one)
    fn, b = em.function(op.name, len(op.inputs) + len(op.outputs) + 1)
    lr_p, step_p, ok_p, x_p, g_p = fn.args[:5]
    state_in = fn.args[5:5 + n_state]
    x_out = fn.args[5 + n_state]
    state_out = fn.args[6 + n_state:-1]
    (size,) = em.read_sizes(b, fn.args[-1], 1)
    with b.if_else(b.fcmp_unordered("une", load(b, ok_p, 0), f32(0.0))) as (then, otherwise):
        with then:
            lr64 = b.fpext(load(b, lr_p, 0), F64)
            t = load(b, step_p, 0, I64)
            t64 = b.sitofp(t, F64)
            scalars = _scalars(b, op.kind, a, lr64, t, t64)
            with for_range(b, size) as i:
                x = load(b, x_p, i)
                g = _regularized(b, a, x, load(b, g_p, i))
                state = [load(b, s, i) for s in state_in]
                new_x, new_state = _step(b, op.kind, a, scalars, x, g, state)
                store(b, new_x, x_out, i)
                for s, v in zip(state_out, new_state):
                    store(b, v, s, i)
        with otherwise:  # outputs = inputs (a no-op when the plan updates in place, as the training step does)
            copy_unchanged(b, [x_p] + list(state_in), [x_out] + list(state_out), size)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + list(op.outputs) + [em.size_table([em.tensor(op.inputs[3]).size])])


def copy_unchanged(b: ir.IRBuilder, sources, targets, size: int | ir.Value) -> None:
    for src, dst in zip(sources, targets):
        with for_range(b, size, name="keep") as i:
            store(b, load(b, src, i), dst, i)


def _scalars(b: ir.IRBuilder, kind: OpKind, a, lr64, t, t64) -> dict[str, ir.Value]:
    """Per-call float32 coefficients."""
    f = lambda v: b.fptrunc(v, F32)
    out = {"lr": f(lr64)}
    if kind is OpKind.MOMENTUM_UPDATE:
        out["beta"] = b.select(b.icmp_signed(">", t, i64(0)), f32(a.beta), f32(1.0))
    elif kind is OpKind.ADAGRAD_UPDATE:
        out["lr"] = f(b.fdiv(lr64, b.fadd(_f64(1.0), b.fmul(t64, _f64(a.decay_factor)))))
    elif kind is OpKind.ADAM_UPDATE:
        if a.torch:
            k = b.fadd(t64, _f64(1.0))
            bc1 = b.fsub(_f64(1.0), _pow(b, a.alpha, k))
            bc2 = b.fsub(_f64(1.0), _pow(b, a.beta, k))
            out["step_size"] = f(b.fdiv(lr64, bc1))
            out["inv_bc2_sqrt"] = f(b.fdiv(_f64(1.0), _sqrt(b, bc2)))
        else:
            corr = b.fdiv(_sqrt(b, b.fsub(_f64(1.0), _pow(b, a.beta, t64))), b.fsub(_f64(1.0), _pow(b, a.alpha, t64)))
            out["step_size"] = f(b.select(b.icmp_signed(">", t, i64(0)), b.fmul(lr64, corr), lr64))
        out["decay"] = f(b.fsub(_f64(1.0), b.fmul(lr64, _f64(a.weight_decay))))
    return out


def _step(b: ir.IRBuilder, kind: OpKind, a, s: dict, x, g, state: list) -> tuple[ir.Value, list[ir.Value]]:
    lr = s["lr"]
    if kind is OpKind.SGD_UPDATE:
        return b.fsub(x, b.fmul(lr, g)), []
    if kind is OpKind.MOMENTUM_UPDATE:
        assert isinstance(a, MomentumAttrs)
        v = b.fadd(b.fmul(f32(a.alpha), state[0]), b.fmul(s["beta"], g))
        d = b.fadd(g, b.fmul(f32(a.alpha), v)) if a.nesterov else v
        return b.fsub(x, b.fmul(lr, d)), [v]
    if kind is OpKind.ADAGRAD_UPDATE:
        assert isinstance(a, AdagradAttrs)
        h = b.fadd(state[0], b.fmul(g, g))
        return b.fsub(x, b.fdiv(b.fmul(lr, g), b.fadd(_sqrt(b, h), f32(a.epsilon)))), [h]
    if kind is OpKind.RMSPROP_UPDATE:
        assert isinstance(a, RmsPropAttrs)
        rest = f32(1.0 - a.alpha)
        v = b.fadd(b.fmul(f32(a.alpha), state[0]), b.fmul(rest, b.fmul(g, g)))
        new = [v]
        denom_sq = v
        k = 1
        if a.centered:
            gavg = b.fadd(b.fmul(f32(a.alpha), state[k]), b.fmul(rest, g))
            new.append(gavg)
            denom_sq = b.fsub(v, b.fmul(gavg, gavg))
            k += 1
        d = b.fdiv(g, b.fadd(_sqrt(b, denom_sq), f32(a.epsilon)))
        if a.momentum != 0.0:
            d = b.fadd(b.fmul(f32(a.momentum), state[k]), d)
            new.append(d)
        return b.fsub(x, b.fmul(lr, d)), new
    assert isinstance(a, AdamAttrs)
    if a.weight_decay:
        x = b.fmul(x, s["decay"])
    m = b.fadd(b.fmul(f32(a.alpha), state[0]), b.fmul(f32(1.0 - a.alpha), g))
    v = b.fadd(b.fmul(f32(a.beta), state[1]), b.fmul(f32(1.0 - a.beta), b.fmul(g, g)))
    if a.torch:
        denom = b.fadd(b.fmul(_sqrt(b, v), s["inv_bc2_sqrt"]), f32(a.epsilon))
    else:
        denom = b.fadd(_sqrt(b, v), f32(a.epsilon))
    x = b.fsub(x, b.fmul(s["step_size"], b.fdiv(m, denom)))
    if a.norm_coefficient_post:
        x = b.fmul(x, f32(1.0 - a.norm_coefficient_post))
    return x, [m, v]


@emitter(OpKind.ALL_FINITE)
def emit_all_finite(em: ModuleEmitter, op: Op) -> KernelCall:
    """ok = 1.0 when no element of any input has an all-ones exponent (inf or NaN), else 0.0. One
    scan function serves every input: a loop per input made LLVM vectorize the same loop once per
    parameter and gradient (a CIFAR ResNet's training step: 0.5 s of compile CPU for this kernel)."""
    fn, b = em.function(op.name, len(op.inputs) + 1)
    scan = _nonfinite_scan(em)
    bad = ir.Constant(I32, 0)
    for k, t in enumerate(op.inputs):
        bad = b.or_(bad, b.call(scan, [fn.args[k], i64(em.tensor(t).size)]))
    none = b.icmp_unsigned("==", bad, ir.Constant(I32, 0))
    store(b, b.select(none, f32(1.0), f32(0.0)), fn.args[-1], 0)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


def _nonfinite_scan(em: ModuleEmitter) -> ir.Function:
    """i32 scan(float *x, i64 n): 1 when some x[i] is inf or NaN, else 0 (emitted once per module)."""
    name = "convc_nonfinite_scan"
    if name in em.module.globals:
        return em.module.globals[name]
    fn = ir.Function(em.module, ir.FunctionType(I32, [PTR, I64]), name=name)
    fn.linkage = "internal"
    fn.attributes.add("noinline")  # one vectorized loop, not one per input
    x, n = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    bad = alloca_entry(b, I32, "bad")
    b.store(ir.Constant(I32, 0), bad)
    exp_mask = ir.Constant(I32, 0x7F800000)
    with for_range(b, n, name="i") as i:
        bits = b.and_(load(b, x, i, I32), exp_mask)
        hit = b.zext(b.icmp_unsigned("==", bits, exp_mask), I32)
        b.store(b.or_(b.load(bad, typ=I32), hit), bad)
    b.ret(b.load(bad, typ=I32))
    return fn


@emitter(OpKind.STEP_INCREMENT)
def emit_step_increment(em: ModuleEmitter, op: Op) -> KernelCall:
    fn, b = em.function(op.name, 3)
    step, ok, out = fn.args
    inc = b.zext(b.fcmp_unordered("une", load(b, ok, 0), f32(0.0)), I64)
    store(b, b.add(load(b, step, 0, I64), inc), out, 0)
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])

