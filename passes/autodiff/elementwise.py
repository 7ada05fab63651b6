"""Activations, Dropout, and broadcasting Add / Sum / Mul.

ReLU, Sigmoid and Tanh differentiate through their output (so their input can die early), LeakyRelu
through its input, and the unary ops that declare their derivative (OpDef.derivative: Elu, Selu,
Softplus, Softsign) through UnaryGrad(X, dY) = dY * f'(X), with no rule of their own. A broadcast
operand's gradient is summed over the axes it was broadcast along.
"""
from __future__ import annotations

import numpy as np
from convc.passes.autodiff.core import GradContext, gradient

from convc.ir import Op
from convc.ops import NoAttrs, OpGroup, OpKind, op_def
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
    """dX = dY * f'(X) for a unary op that declares its derivative (OpDef.derivative)."""
    return [ctx.emit1(OpKind.UNARY_GRAD, UnaryGradAttrs(op.kind, op.attrs), [op.inputs[0], dys[0]])]


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
