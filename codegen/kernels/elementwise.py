"""Unary activations and broadcasting n-ary arithmetic as flat native loops."""
from __future__ import annotations

from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import FAST, const_like, call_intrinsic, f32, for_range, linear_index, load, loop_nest, memcpy, \
    store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter


def relu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    # x < 0 ? 0 : x keeps NaN as NaN, like numpy
    zero = const_like(x, 0.0)
    return b.select(b.fcmp_ordered("<", x, zero), zero, x)


def leaky_relu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.select(b.fcmp_ordered("<", x, const_like(x, 0.0)), b.fmul(x, const_like(x, attrs.alpha)), x)


def sigmoid(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    e = call_intrinsic(b, "llvm.exp.f32", [b.fneg(x)])
    return b.fdiv(const_like(x, 1.0), b.fadd(const_like(x, 1.0), e))


def tanh(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return call_intrinsic(b, "tanhf", [x])  # libm: accurate near 0, where 1-2/(e^2x+1) is not


UNARY = {OpKind.RELU: relu, OpKind.LEAKY_RELU: leaky_relu, OpKind.SIGMOID: sigmoid, OpKind.TANH: tanh}


@emitter(*UNARY)
def emit_unary(em: ModuleEmitter, op: Op) -> KernelCall:
    fn, b = em.function(op.name, 2)
    x, y = fn.args
    fx = UNARY[op.kind]
    with for_range(b, em.tensor(op.inputs[0]).size) as i:
        store(b, fx(b, load(b, x, i), op.attrs), y, i)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


@emitter(OpKind.IDENTITY, OpKind.DROPOUT, OpKind.FLATTEN, OpKind.RESHAPE)
def emit_copy(em: ModuleEmitter, op: Op) -> KernelCall:
    """Views normally alias their input; a copy is needed only when the view is a graph output."""
    fn, b = em.function(op.name, 2)
    memcpy(b, fn.args[1], fn.args[0], em.tensor(op.inputs[0]).nbytes)
    b.ret_void()
    return KernelCall(fn, [op.inputs[0], op.outputs[0]])


def broadcast_strides(shape: tuple[int, ...], out: tuple[int, ...]) -> list[int]:
    """Element strides of ``shape`` read as ``out`` (0 along broadcast dimensions)."""
    shape = (1,) * (len(out) - len(shape)) + tuple(shape)
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc if d != 1 else 0)
        acc *= d
    return strides[::-1]


def collapse(out: tuple[int, ...], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Merge adjacent dimensions that every operand walks contiguously, so inner loops are long."""
    keep = [i for i, d in enumerate(out) if d != 1]
    dims = [out[i] for i in keep] or [1]
    st = [[s[i] for i in keep] or [0] for s in strides]
    merged_d, merged_s = [dims[0]], [[s[0]] for s in st]
    for k in range(1, len(dims)):
        if all(s[k - 1] == s[k] * dims[k] for s in st):
            merged_d[-1] *= dims[k]
            for ms, s in zip(merged_s, st):
                ms[-1] = s[k]
        else:
            merged_d.append(dims[k])
            for ms, s in zip(merged_s, st):
                ms.append(s[k])
    return merged_d, merged_s


BINARY = {OpKind.ADD: "fadd", OpKind.SUM: "fadd", OpKind.MUL: "fmul"}


@emitter(*BINARY)
def emit_broadcast(em: ModuleEmitter, op: Op) -> KernelCall:
    out = em.tensor(op.outputs[0]).shape
    n = len(op.inputs)
    fn, b = em.function(op.name, n + 1)
    dims, strides = collapse(out, [broadcast_strides(em.tensor(t).shape, out) for t in op.inputs]
                             + [broadcast_strides(out, out)])
    combine = getattr(b, BINARY[op.kind])
    with loop_nest(b, dims) as idx:
        acc = None
        for k in range(n):
            v = load(b, fn.args[k], linear_index(b, idx, strides[k]))
            acc = v if acc is None else combine(acc, v, flags=FAST)
        store(b, acc, fn.args[n], linear_index(b, idx, strides[n]))
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])

