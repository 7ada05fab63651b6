"""Activation and Softmax gradients, training-mode Dropout and Slice as native loops."""
from __future__ import annotations

import numpy as np
from convc.codegen.llvm_utils import (
    F32,
    FAST,
    I64,
    alloca_entry,
    f32,
    for_range,
    gep,
    i64,
    load,
    memcpy,
    store,
)
from convc.codegen.kernels.activations import DERIVATIVE
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.elementwise_grad import FMIX1, FMIX2, GOLDEN, MASK64, SALT_MUL, SEED_MUL, UNIFORM_BITS, DropoutTrainAttrs


def _relu_grad(b: ir.IRBuilder, y, dy, attrs):
    return b.select(b.fcmp_ordered(">", y, f32(0.0)), dy, f32(0.0))


def _leaky_relu_grad(b: ir.IRBuilder, x, dy, attrs):
    return b.select(b.fcmp_ordered(">=", x, f32(0.0)), dy, b.fmul(dy, f32(attrs.alpha)))


def _sigmoid_grad(b: ir.IRBuilder, y, dy, attrs):
    return b.fmul(dy, b.fmul(y, b.fsub(f32(1.0), y)))


def _tanh_grad(b: ir.IRBuilder, y, dy, attrs):
    return b.fmul(dy, b.fsub(f32(1.0), b.fmul(y, y)))


def _unary_grad(b: ir.IRBuilder, x, dy, attrs):
    return b.fmul(dy, DERIVATIVE[attrs.kind](b, x, attrs.attrs))


PAIR = {OpKind.RELU_GRAD: _relu_grad, OpKind.LEAKY_RELU_GRAD: _leaky_relu_grad,
        OpKind.SIGMOID_GRAD: _sigmoid_grad, OpKind.TANH_GRAD: _tanh_grad, OpKind.UNARY_GRAD: _unary_grad}


@emitter(*PAIR)
def emit_activation_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    """dX from the activation's input or output and dY, element by element; the length is a run-time
    size (``ModuleEmitter.size_table``), so one op's gradients at every layer are one function."""
    fn, b = em.function(op.name, 4, parallel=True)
    s, dy, dx, sizes = fn.args[:4]
    f = PAIR[op.kind]
    (n,) = em.read_sizes(b, sizes, 1)
    lo, hi = em.thread_range(b, fn, n)
    with for_range(b, hi, start=lo) as i:
        store(b, f(b, load(b, s, i), load(b, dy, i), op.attrs), dx, i)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.inputs[1], op.outputs[0], em.size_table([em.tensor(op.inputs[1]).size])])


@emitter(OpKind.SOFTMAX_GRAD)
def emit_softmax_grad(em: ModuleEmitter, op: Op) -> KernelCall:
    shape = em.tensor(op.inputs[0]).shape
    axis = op.attrs.axis
    outer, length, inner = int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1:]))
    fn, b = em.function(op.name, 3)
    y, dy, dx = fn.args
    acc = alloca_entry(b, F32, "dot")
    with for_range(b, outer, name="outer") as o, for_range(b, inner, name="inner") as i:
        base = b.add(b.mul(o, i64(length * inner)), i)

        def at(l):
            return b.add(base, b.mul(l, i64(inner)))
        b.store(f32(0.0), acc)
        with for_range(b, length, name="l") as l:
            prod = b.fmul(load(b, y, at(l)), load(b, dy, at(l)))
            b.store(b.fadd(b.load(acc, typ=F32), prod, flags=FAST), acc)
        dot = b.load(acc, typ=F32)
        with for_range(b, length, name="l") as l:
            store(b, b.fmul(load(b, y, at(l)), b.fsub(load(b, dy, at(l)), dot)), dx, at(l))
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])


# --- dropout --------------------------------------------------------------------------------------
def fmix64(b: ir.IRBuilder, z: ir.Value) -> ir.Value:
    z = b.mul(b.xor(z, b.lshr(z, i64(30))), i64(_signed(FMIX1)))
    z = b.mul(b.xor(z, b.lshr(z, i64(27))), i64(_signed(FMIX2)))
    return b.xor(z, b.lshr(z, i64(31)))


def _signed(v: int) -> int:
    """A 64-bit pattern as the signed value llvmlite's i64 constant takes."""
    v &= MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


@emitter(OpKind.DROPOUT_TRAIN, OpKind.DROPOUT_GRAD)
def emit_dropout(em: ModuleEmitter, op: Op) -> KernelCall:
    """y = keep(seed, salt, step, i) ? x * scale : 0, with the generator of convc/ops/elementwise_grad.py."""
    a: DropoutTrainAttrs = op.attrs
    fn, b = em.function(op.name, 3, parallel=True)
    x, step, y = fn.args[:3]
    base = (a.seed * SEED_MUL + a.salt * SALT_MUL) & MASK64
    key = fmix64(b, b.add(i64(_signed(base)), b.load(step, typ=I64)))
    threshold = i64(a.threshold)
    scale = f32(float(np.float32(a.scale)))
    lo, hi = em.thread_range(b, fn, em.tensor(op.inputs[0]).size)
    with for_range(b, hi, start=lo) as i:
        z = fmix64(b, b.add(key, b.mul(b.add(i, i64(1)), i64(_signed(GOLDEN)))))
        keep = b.icmp_unsigned(">=", b.lshr(z, i64(64 - UNIFORM_BITS)), threshold)
        store(b, b.select(keep, b.fmul(load(b, x, i), scale), f32(0.0)), y, i)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.inputs[1], op.outputs[0]])


# --- Slice ----------------------------------------------------------------------------------------
@emitter(OpKind.SLICE)
def emit_slice(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    shape = em.tensor(op.inputs[0]).shape
    outer, inner = int(np.prod(shape[:a.axis])), int(np.prod(shape[a.axis + 1:]))
    length = a.stop - a.start
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    with for_range(b, outer, name="outer") as o:
        src = gep(b, x, b.add(b.mul(o, i64(shape[a.axis] * inner)), i64(a.start * inner)))
        memcpy(b, gep(b, y, b.mul(o, i64(length * inner))), src, length * inner * 4)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])

