"""Normalizations. BatchNormalization in training mode: one op gives dX, dscale and dB from the saved
batch statistics; with frozen statistics (the inference form) it is a per-channel affine map.
LayerNormalization (and InstanceNormalization and GroupNormalization, which import as it): the
statistics recomputed from X by reductions, then the usual formula
dX = invstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) with dxhat = dY Scale, per row; dScale = sum(dY xhat)
and dB = sum(dY) over the leading axes (InstanceNorm's and GroupNorm's per-channel scale and shift are a Mul and
an Add after it, whose rules reduce their gradients to the parameters' shapes, through the Reshape views the
importer reads them by). LRN: its window sums over channels, forward and transposed, as MatMuls by a band
matrix."""
from __future__ import annotations

import numpy as np
from convc.passes.autodiff.core import GradContext, gradient
from convc.passes.autodiff.elementwise import binary, const, reduce_to, scale
from convc.passes.autodiff.shape import along_axis

from convc.ir import Op
from convc.ops import NoAttrs, OpKind
from convc.ops.reduce import ReduceAttrs
from convc.ops.shape import ReshapeAttrs


@gradient(OpKind.BATCH_NORM_TRAIN)
def batch_norm_grad(ctx: GradContext, op: Op, dys: list) -> list:
    x, scale_ = op.inputs[:2]
    rows = list(op.inputs[3:])  # the batch's rows (a padded batch): the gradient counts them only
    _, mean, invstd = op.outputs
    dx, dscale, dbias = ctx.emit(OpKind.BATCH_NORM_GRAD, op.attrs, [x, scale_, mean, invstd, dys[0]] + rows)
    return [dx, dscale, dbias] + [None] * len(rows)


@gradient(OpKind.LAYER_NORM)
def layer_norm_grad(ctx: GradContext, op: Op, dys: list) -> list:
    x, gamma = op.inputs[0], op.inputs[1]
    shape = ctx.shape(x)
    axes = tuple(range(op.attrs.axis, len(shape)))
    keepdims = shape[:op.attrs.axis] + (1,) * len(axes)
    n = int(np.prod(shape[op.attrs.axis:], dtype=np.int64))

    def row_mean(t: str) -> str:
        return scale(ctx, ctx.emit1(OpKind.REDUCE_SUM, ReduceAttrs(axes, keepdims), [t]), 1.0 / n)

    centered = binary(ctx, OpKind.SUB, x, row_mean(x))
    variance = row_mean(binary(ctx, OpKind.MUL, centered, centered))
    std = ctx.emit1(OpKind.SQRT, NoAttrs(), [binary(ctx, OpKind.ADD, variance, const(ctx, x, op.attrs.epsilon, "eps"))])
    invstd = ctx.emit1(OpKind.RECIPROCAL, NoAttrs(), [std])
    xhat = binary(ctx, OpKind.MUL, centered, invstd)
    out: list = [None] * len(op.inputs)
    if ctx.needs(op, 0):
        dxhat = binary(ctx, OpKind.MUL, dys[0], gamma)
        projected = binary(ctx, OpKind.MUL, xhat, row_mean(binary(ctx, OpKind.MUL, dxhat, xhat)))
        inner = binary(ctx, OpKind.SUB, binary(ctx, OpKind.SUB, dxhat, row_mean(dxhat)), projected)
        out[0] = binary(ctx, OpKind.MUL, inner, invstd)
    if ctx.needs(op, 1):
        out[1] = reduce_to(ctx, binary(ctx, OpKind.MUL, dys[0], xhat), ctx.shape(gamma))
    if len(op.inputs) > 2 and ctx.needs(op, 2):
        out[2] = reduce_to(ctx, dys[0], ctx.shape(op.inputs[2]))
    return out


@gradient(OpKind.BATCH_NORM)
def frozen_batch_norm_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """The inference form, y = (x - mean) invstd scale + B with the running statistics held fixed (a model
    fine-tuned with frozen BatchNorm; the training step otherwise uses BatchNormTrain): per channel, dX =
    dY scale invstd, dscale = sum(dY xhat), dB = sum(dY). The statistics get no gradient."""
    x, gamma, beta, mean, var = op.inputs
    rank = len(ctx.shape(x))
    c = ctx.shape(x)[1]
    per_channel = (c,) + (1,) * (rank - 2)

    def channels(t: str) -> str:
        return ctx.emit1(OpKind.RESHAPE, ReshapeAttrs(per_channel), [t])

    std = ctx.emit1(OpKind.SQRT, NoAttrs(), [binary(ctx, OpKind.ADD, var, const(ctx, var, op.attrs.epsilon, "eps"))])
    invstd = channels(ctx.emit1(OpKind.RECIPROCAL, NoAttrs(), [std]))
    out: list = [None] * 5
    if ctx.needs(op, 0):
        out[0] = binary(ctx, OpKind.MUL, dys[0], binary(ctx, OpKind.MUL, channels(gamma), invstd))
    if ctx.needs(op, 1):
        xhat = binary(ctx, OpKind.MUL, binary(ctx, OpKind.SUB, x, channels(mean)), invstd)
        out[1] = ctx.emit1(OpKind.RESHAPE, ReshapeAttrs((c,)),
                           [reduce_to(ctx, binary(ctx, OpKind.MUL, dys[0], xhat), per_channel)])
    if ctx.needs(op, 2):
        out[2] = ctx.emit1(OpKind.RESHAPE, ReshapeAttrs((c,)), [reduce_to(ctx, dys[0], per_channel)])
    return out


@gradient(OpKind.LRN)
def lrn_grad(ctx: GradContext, op: Op, dys: list) -> list:
    """y_c = x_c d_c^-beta, d_c = bias + alpha/size sum over the window W(c) of x_j^2. With the 0/1 band
    matrix B[c, j] = [j in W(c)]: dx = dY d^-beta - 2 alpha beta / size x (B^T (dY x d^(-beta-1))),
    the channel sums as MatMuls along the channel axis (as the forward's window is)."""
    a, x = op.attrs, op.inputs[0]
    c = ctx.shape(x)[1]
    band = np.zeros((c, c))
    for ci in range(c):
        band[ci, max(0, ci - (a.size - 1) // 2):min(c, ci + a.size // 2 + 1)] = 1.0
    squares = binary(ctx, OpKind.MUL, x, x)
    window_sums = along_axis(ctx, squares, 1, band.T, f"{op.name}.lrn_window")
    d = binary(ctx, OpKind.ADD, scale(ctx, window_sums, a.alpha / a.size), const(ctx, x, a.bias, "bias"))
    d_pow = binary(ctx, OpKind.POW, d, const(ctx, x, -a.beta, "exponent"))   # d^-beta
    direct = binary(ctx, OpKind.MUL, dys[0], d_pow)
    t = binary(ctx, OpKind.DIV, binary(ctx, OpKind.MUL, direct, x), d)      # dY x d^(-beta-1)
    spread = along_axis(ctx, t, 1, band, f"{op.name}.lrn_window_t")
    cross = scale(ctx, binary(ctx, OpKind.MUL, x, spread), -2.0 * a.alpha * a.beta / a.size)
    return [binary(ctx, OpKind.ADD, direct, cross)]
