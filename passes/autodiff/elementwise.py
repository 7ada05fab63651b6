"""Activations, Dropout, and the broadcasting ops (Add, Sum, Sub, Mul, Div, Pow, Max, Min, PRelu, Where).

ReLU, Sigmoid, Tanh and Clip differentiate through their output (so their input can die early), LeakyRelu
through its input, and the unary ops that declare their derivative (OpDef.derivative: Elu, Selu,
Softplus, Softsign, Exp, Log, Sqrt, ...) through UnaryGrad(X, dY) = dY * f'(X), with no rule of their
own. A broadcast operand's gradient is summed over the axes it was broadcast along. The rules that
need a comparison (Max, Min, PRelu, and ReduceMax/Min in reduce.py) build a 0/1 mask from existing
ops (``ge_mask``) rather than a comparison kernel of their own.
"""
from __future__ import annotations

import numpy as np
from convc.passes.autodiff.core import GradContext, gradient

from convc.ir import Op
from convc.ops import NoAttrs, OpGroup, OpKind, op_def
from convc.ops.elementwise import ClipAttrs
from convc.ops.elementwise_grad import UnaryGradAttrs
from convc.ops.reduce import ReduceAttrs

BY_OUTPUT = {OpKind.RELU: OpKind.RELU_GRAD, OpKind.SIGMOID: OpKind.SIGMOID_GRAD, OpKind.TANH: OpKind.TANH_GRAD}


def reduce_to(ctx: GradContext, dy: str, shape: tuple[int, ...]) -> str:
    """``dy`` summed down to ``shape`` (numpy broadcasting in reverse)."""
    full = ctx.shape(dy)
    if full == tuple(shape):
        return dy
    lead = len(full) - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape) if d == 1 and full[lead + i] != 1)
    return ctx.emit1(OpKind.REDUCE_SUM, ReduceAttrs(axes, tuple(shape)), [dy])


def const(ctx: GradContext, like: str, value, name: str = "const") -> str:
    """A constant of ``like``'s dtype."""
    data = np.asarray(value, dtype=ctx.g.tensor(like).dtype)
    return ctx.g.add_constant(ctx.g.fresh_name(f"{like}.{name}"), data).name


def binary(ctx: GradContext, kind: OpKind, a: str, b: str) -> str:
    return ctx.emit1(kind, NoAttrs(), [a, b])


def ge_mask(ctx: GradContext, a: str, b: str) -> str:
    """1.0 where a >= b, else 0.0 (broadcast): 1 + floor(clip(a - b, -1, 0)), exact in floating point
    since a - b is 0 exactly when a == b."""
    d = ctx.emit1(OpKind.CLIP, ClipAttrs(-1.0, 0.0), [binary(ctx, OpKind.SUB, a, b)])
    return binary(ctx, OpKind.ADD, ctx.emit1(OpKind.FLOOR, NoAttrs(), [d]), const(ctx, d, 1.0, "one"))


def scale(ctx: GradContext, t: str, factor: float) -> str:
    if factor == 1.0:
        return t
    c = ctx.g.add_constant(ctx.g.fresh_name(f"{t}.scale"), np.array(factor, dtype=ctx.g.tensor(t).dtype))
    return ctx.emit1(OpKind.MUL, NoAttrs(), [t, c.name])


@gradient(*BY_OUTPUT)
def activation_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(BY_OUTPUT[op.kind], NoAttrs(), [op.outputs[0], dys[0]])]


@gradient(OpKind.LEAKY_RELU)
def leaky_relu_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(OpKind.LEAKY_RELU_GRAD, op.attrs, [op.inputs[0], dys[0]])]


@gradient(*(k for k in OpGroup.UNARY if op_def(k).derivative is not None))
def declared_derivative_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """dX = dY * f'(X) for a unary op that declares its derivative (OpDef.derivative). Clip's derivative
    (1 on the open interval (min, max)) is read from its output instead: Y = clip(X) lies strictly
    inside exactly where X does, so the mask is the same and the input (a BatchNorm's output in
    MobileNets' ReLU6) need not stay alive for the backward."""
    source = op.outputs[0] if op.kind is OpKind.CLIP else op.inputs[0]
    return [ctx.emit1(OpKind.UNARY_GRAD, UnaryGradAttrs(op.kind, op.attrs), [source, dys[0]])]


@gradient(OpKind.IDENTITY, OpKind.DROPOUT)
def identity_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [dys[0]]


@gradient(OpKind.DROPOUT_TRAIN)
def dropout_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [ctx.emit1(OpKind.DROPOUT_GRAD, op.attrs, [dys[0], op.inputs[1]]), None]


@gradient(OpKind.ADD, OpKind.SUM)
def add_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [reduce_to(ctx, dys[0], ctx.shape(t)) if ctx.needs(op, i) else None for i, t in enumerate(op.inputs)]


@gradient(OpKind.SUB)
def sub_grad(ctx: GradContext, op: Op, dys: list) -> list:
    a, b = op.inputs
    out = [None, None]
    if ctx.needs(op, 0):
        out[0] = reduce_to(ctx, dys[0], ctx.shape(a))
    if ctx.needs(op, 1):
        out[1] = scale(ctx, reduce_to(ctx, dys[0], ctx.shape(b)), -1.0)
    return out


@gradient(OpKind.MUL)
def mul_grad(ctx: GradContext, op: Op, dys: list) -> list:
    a, b = op.inputs
    out = [None, None]
    for i, (mine, other) in enumerate(((a, b), (b, a))):
        if ctx.needs(op, i):
            out[i] = reduce_to(ctx, ctx.emit1(OpKind.MUL, NoAttrs(), [dys[0], other]), ctx.shape(mine))
    return out


@gradient(OpKind.EXPAND)
def expand_grad(ctx: GradContext, op: Op, dys: list) -> list:
    return [reduce_to(ctx, dys[0], ctx.shape(op.inputs[0]))]


@gradient(OpKind.WHERE)
def where_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """dX = Where(mask, dY, 0) and dY = Where(mask, 0, dY), each summed down to its operand's shape; the
    mask (a constant) has none."""
    mask, x, y = op.inputs
    zero = ctx.g.add_constant(ctx.g.fresh_name(f"{op.name}.zero"), np.zeros((), dtype=ctx.g.tensor(x).dtype)).name
    dx = ctx.emit1(OpKind.WHERE, NoAttrs(), [mask, dys[0], zero])
    dy = ctx.emit1(OpKind.WHERE, NoAttrs(), [mask, zero, dys[0]])
    return [None, reduce_to(ctx, dx, ctx.shape(x)), reduce_to(ctx, dy, ctx.shape(y))]


@gradient(OpKind.DIV)
def div_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """y = a / b: da = dY / b, db = -dY y / b."""
    a, b = op.inputs
    dy_over_b = binary(ctx, OpKind.DIV, dys[0], b)
    out = [None, None]
    if ctx.needs(op, 0):
        out[0] = reduce_to(ctx, dy_over_b, ctx.shape(a))
    if ctx.needs(op, 1):
        out[1] = scale(ctx, reduce_to(ctx, binary(ctx, OpKind.MUL, dy_over_b, op.outputs[0]), ctx.shape(b)), -1.0)
    return out


@gradient(OpKind.POW)
def pow_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """y = a ** b: da = dY b a ** (b - 1) (a constant exponent gives a constant b - 1, which the Pow kernel
    specializes), db = dY y log(a) (NaN for a < 0, as in PyTorch)."""
    a, b = op.inputs
    out = [None, None]
    if ctx.needs(op, 0):
        data = ctx.g.tensor(b).data
        b_minus_1 = const(ctx, b, np.asarray(data) - 1, "minus_one") if data is not None else \
            binary(ctx, OpKind.SUB, b, const(ctx, b, 1.0, "one"))
        slope = binary(ctx, OpKind.MUL, binary(ctx, OpKind.POW, a, b_minus_1), b)
        out[0] = reduce_to(ctx, binary(ctx, OpKind.MUL, dys[0], slope), ctx.shape(a))
    if ctx.needs(op, 1):
        log_a = ctx.emit1(OpKind.LOG, NoAttrs(), [a])
        dy_y = binary(ctx, OpKind.MUL, dys[0], op.outputs[0])
        out[1] = reduce_to(ctx, binary(ctx, OpKind.MUL, dy_y, log_a), ctx.shape(b))
    return out


@gradient(OpKind.MAX, OpKind.MIN)
def max_min_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """dY goes to the inputs equal to the result, split evenly between ties (torch.maximum's rule)."""
    y = op.outputs[0]
    if len(op.inputs) == 1:
        return [dys[0]]
    masks = [ge_mask(ctx, x, y) if op.kind is OpKind.MAX else ge_mask(ctx, y, x) for x in op.inputs]
    share = binary(ctx, OpKind.DIV, dys[0], ctx.emit1(OpKind.SUM, NoAttrs(), masks))
    return [reduce_to(ctx, binary(ctx, OpKind.MUL, share, m), ctx.shape(x)) if ctx.needs(op, i) else None
            for i, (x, m) in enumerate(zip(op.inputs, masks))]


@gradient(OpKind.PRELU)
def prelu_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """y = x (x > 0), slope x (x <= 0): dx = dY (1 + (slope - 1) [x <= 0]), dslope = dY x [x <= 0]
    (PyTorch's convention at 0)."""
    x, slope = op.inputs
    zero = const(ctx, x, 0.0, "zero")
    non_positive = ge_mask(ctx, zero, x)
    out = [None, None]
    if ctx.needs(op, 0):
        slope_minus_1 = binary(ctx, OpKind.SUB, slope, const(ctx, slope, 1.0, "one"))
        factor = binary(ctx, OpKind.ADD, binary(ctx, OpKind.MUL, non_positive, slope_minus_1),
                        const(ctx, x, 1.0, "one"))
        out[0] = binary(ctx, OpKind.MUL, dys[0], factor)
    if ctx.needs(op, 1):
        negative_part = binary(ctx, OpKind.MUL, x, non_positive)
        out[1] = reduce_to(ctx, binary(ctx, OpKind.MUL, dys[0], negative_part), ctx.shape(slope))
    return out
