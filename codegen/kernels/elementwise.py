"""Unary activations and broadcasting n-ary arithmetic as flat native loops."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import FAST, F64, const_like, call_intrinsic, fmax, fmin, for_range, linear_index, load, \
    loop_nest, memcpy, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter

UnaryFn = Callable[[ir.IRBuilder, ir.Value, Any], ir.Value]
# kind -> the function computing it on one value, a scalar or (where VECTOR_UNARY says so) a vector;
# emit_unary loops it over a tensor and fused epilogues (kernels/epilogue.py, blas.py) apply it in place
UNARY: dict[OpKind, UnaryFn] = {}
# the functions that work on whole vectors: a fused epilogue applies them to a register tile, the others
# run as a scalar pass after the tile is stored (blas.split_epilogue). tanh calls libm's scalar tanhf;
# the rest are marked False until an epilogue test covers them on vectors.
VECTOR_UNARY: set[OpKind] = set()


# kind -> f'(x) on one value, for the unary ops whose OpDef declares a derivative (UnaryGrad's kernel)
DERIVATIVE: dict[OpKind, UnaryFn] = {}


def derivative(kind: OpKind) -> Callable[[UnaryFn], UnaryFn]:
    """Register ``fn(b, x, attrs)`` as the derivative of unary op ``kind`` at ``x``."""
    def register(fn: UnaryFn) -> UnaryFn:
        if kind in DERIVATIVE:
            raise RuntimeError(f"two derivative kernels for {kind.value}")
        DERIVATIVE[kind] = fn
        return fn
    return register


def unary(kind: OpKind, *, vector: bool) -> Callable[[UnaryFn], UnaryFn]:
    """Register ``fn`` as the kernel of unary op ``kind``; ``vector``: it is correct and cheap on vectors."""
    def register(fn: UnaryFn) -> UnaryFn:
        if kind in UNARY:
            raise RuntimeError(f"two unary kernels for {kind.value}")
        UNARY[kind] = fn
        if vector:
            VECTOR_UNARY.add(kind)
        return fn
    return register


@unary(OpKind.RELU, vector=True)
def relu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    # x < 0 ? 0 : x keeps NaN as NaN, like numpy
    zero = const_like(x, 0.0)
    return b.select(b.fcmp_ordered("<", x, zero), zero, x)


@unary(OpKind.LEAKY_RELU, vector=True)
def leaky_relu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.select(b.fcmp_ordered("<", x, const_like(x, 0.0)), b.fmul(x, const_like(x, attrs.alpha)), x)


@unary(OpKind.SIGMOID, vector=True)
def sigmoid(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    e = call_intrinsic(b, "llvm.exp.f32", [b.fneg(x)])
    return b.fdiv(const_like(x, 1.0), b.fadd(const_like(x, 1.0), e))


@unary(OpKind.TANH, vector=False)
def tanh(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return call_intrinsic(b, "tanhf", [x])  # libm: accurate near 0, where 1-2/(e^2x+1) is not


def math_call(b: ir.IRBuilder, name: str, x: ir.Value) -> ir.Value:
    """``llvm.<name>`` on a float scalar or vector of any width (the intrinsic's name carries the type)."""
    if isinstance(x.type, ir.VectorType):
        suffix = f"v{x.type.count}{'f64' if isinstance(x.type.element, ir.DoubleType) else 'f32'}"
    else:
        suffix = "f64" if isinstance(x.type, ir.DoubleType) else "f32"
    return call_intrinsic(b, f"llvm.{name}.{suffix}", [x])


def _wider(x: ir.Value) -> ir.Type:
    return ir.VectorType(F64, x.type.count) if isinstance(x.type, ir.VectorType) else F64


def expm1(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """exp(x) - 1 without float32 cancellation near 0: computed in double, then rounded once."""
    d = b.fpext(x, _wider(x))
    return b.fptrunc(b.fsub(math_call(b, "exp", d), const_like(d, 1.0)), x.type)


def clamp(b: ir.IRBuilder, x: ir.Value, lo: float, hi: float) -> ir.Value:
    """min(max(x, lo), hi) with NaN kept (ordered compares are false for NaN); lo > hi gives hi."""
    x = b.select(b.fcmp_ordered("<", x, const_like(x, lo)), const_like(x, lo), x)
    return b.select(b.fcmp_ordered(">", x, const_like(x, hi)), const_like(x, hi), x)


@unary(OpKind.CLIP, vector=True)
def clip(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return clamp(b, x, attrs.min, attrs.max)


@unary(OpKind.ELU, vector=False)
def elu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    neg = b.fmul(const_like(x, attrs.alpha), expm1(b, x))
    return b.select(b.fcmp_ordered(">", x, const_like(x, 0.0)), x, neg)


@derivative(OpKind.ELU)
def elu_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    neg = b.fmul(const_like(x, attrs.alpha), math_call(b, "exp", x))
    return b.select(b.fcmp_ordered(">", x, const_like(x, 0.0)), const_like(x, 1.0), neg)


@unary(OpKind.SELU, vector=False)
def selu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    neg = b.fmul(const_like(x, attrs.alpha), expm1(b, x))
    return b.fmul(const_like(x, attrs.gamma), b.select(b.fcmp_ordered(">", x, const_like(x, 0.0)), x, neg))


@derivative(OpKind.SELU)
def selu_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fmul(const_like(x, attrs.gamma), elu_derivative(b, x, attrs))


@unary(OpKind.HARD_SIGMOID, vector=False)
def hard_sigmoid(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return clamp(b, b.fadd(b.fmul(x, const_like(x, attrs.alpha)), const_like(x, attrs.beta)), 0.0, 1.0)


@unary(OpKind.HARD_SWISH, vector=True)
def hard_swish(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fmul(x, clamp(b, b.fadd(b.fmul(x, const_like(x, 1.0 / 6.0)), const_like(x, 0.5)), 0.0, 1.0))


@unary(OpKind.SOFTPLUS, vector=False)
def softplus(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    """max(x, 0) + log1p(exp(-|x|)): never overflows; the log1p runs in double for small exp(-|x|)."""
    e = math_call(b, "exp", b.fneg(math_call(b, "fabs", x)))
    d = b.fpext(e, _wider(e))
    log1p = b.fptrunc(math_call(b, "log", b.fadd(d, const_like(d, 1.0))), x.type)
    return b.fadd(relu(b, x, None), log1p)


@derivative(OpKind.SOFTPLUS)
def softplus_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return sigmoid(b, x, None)


@unary(OpKind.SOFTSIGN, vector=False)
def softsign(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fdiv(x, b.fadd(const_like(x, 1.0), math_call(b, "fabs", x)))


@derivative(OpKind.SOFTSIGN)
def softsign_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    d = b.fadd(const_like(x, 1.0), math_call(b, "fabs", x))
    return b.fdiv(const_like(x, 1.0), b.fmul(d, d))


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


def prelu(b: ir.IRBuilder, x: ir.Value, slope: ir.Value) -> ir.Value:
    return b.select(b.fcmp_ordered("<", x, const_like(x, 0.0)), b.fmul(x, slope), x)


# how each op combines its operands, left to right; Sub and Div take no fast-math flags, which
# would let LLVM assume no infinities (x / 0 must give inf)
BINARY = {
    OpKind.ADD: lambda b, x, y: b.fadd(x, y, flags=FAST),
    OpKind.SUM: lambda b, x, y: b.fadd(x, y, flags=FAST),
    OpKind.MUL: lambda b, x, y: b.fmul(x, y, flags=FAST),
    OpKind.SUB: lambda b, x, y: b.fsub(x, y),
    OpKind.DIV: lambda b, x, y: b.fdiv(x, y),
    OpKind.MAX: fmax,
    OpKind.MIN: fmin,
    OpKind.PRELU: prelu,
}


@emitter(*BINARY)
def emit_broadcast(em: ModuleEmitter, op: Op) -> KernelCall:
    out = em.tensor(op.outputs[0]).shape
    n = len(op.inputs)
    fn, b = em.function(op.name, n + 1)
    dims, strides = collapse(out, [broadcast_strides(em.tensor(t).shape, out) for t in op.inputs]
                             + [broadcast_strides(out, out)])
    combine = BINARY[op.kind]
    with loop_nest(b, dims) as idx:
        acc = None
        for k in range(n):
            v = load(b, fn.args[k], linear_index(b, idx, strides[k]))
            acc = v if acc is None else combine(b, acc, v)
        store(b, acc, fn.args[n], linear_index(b, idx, strides[n]))
    b.ret_void()
    return KernelCall(fn, list(op.inputs) + [op.outputs[0]])

