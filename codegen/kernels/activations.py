"""Unary activations, their derivatives and clamps as IR on one value, a scalar or a vector: what
the elementwise kernels (codegen/kernels/elementwise.py) map over a tensor and fused epilogues
(kernels/epilogue.py, blas.py, winograd.py) apply to a register tile. The transcendental ones are
straight-line IR from codegen/vecmath.py."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llvmlite import ir

from convc.ops import OpKind
from convc.codegen import vecmath
from convc.codegen.llvm_utils import call_intrinsic, const_like

UnaryFn = Callable[[ir.IRBuilder, ir.Value, Any], ir.Value]
# kind -> the function computing it on one value, a scalar or (where VECTOR_UNARY says so) a vector;
# emit_unary maps it over a tensor and fused epilogues (kernels/epilogue.py, blas.py) apply it in place
UNARY: dict[OpKind, UnaryFn] = {}
# the functions that work on whole vectors: a fused epilogue applies them to a register tile, the others
# run as a scalar pass after the tile is stored (blas.split_epilogue). The transcendental ones are
# straight-line IR from codegen/vecmath.py (no libm calls), so every kernel here is one.
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
    return vecmath.sigmoid(b, x)


@unary(OpKind.SWISH, vector=True)
def swish(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    if attrs.alpha == 1.0:
        return vecmath.silu(b, x, silu_tail_call)
    return b.fmul(x, vecmath.sigmoid(b, b.fmul(x, const_like(x, attrs.alpha))))


def silu_tail_call(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """``vecmath.silu_tail(x)`` through one out-of-line function per module and vector type: SiLU's
    careful form (lanes below -80, NaN) runs behind a branch real activations never take, but inline
    it was one copy per vector a kernel applies SiLU to (each accumulator of a register tile, each
    pixel of a depthwise block), a third of EfficientNet-B0's IR and about 1 s of its LLVM CPU."""
    module = b.block.function.module
    suffix = f"v{x.type.count}f32" if isinstance(x.type, ir.VectorType) else "f32"
    name = f"convc_silu_tail_{suffix}"
    if name in module.globals:
        fn = module.globals[name]
    else:
        fn = ir.Function(module, ir.FunctionType(x.type, [x.type]), name=name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")  # cold: kept out of the kernels' hot loops
        fn.attributes.add("cold")
        inner = ir.IRBuilder(fn.append_basic_block("entry"))
        inner.ret(vecmath.silu_tail(inner, fn.args[0]))
    return b.call(fn, [x])


@derivative(OpKind.SWISH)
def swish_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    """s + alpha x s (1 - s) with s = sigmoid(alpha x)."""
    ax = b.fmul(x, const_like(x, attrs.alpha))
    s = vecmath.sigmoid(b, ax)
    return b.fadd(s, b.fmul(b.fmul(ax, s), b.fsub(const_like(x, 1.0), s)))


@unary(OpKind.TANH, vector=True)
def tanh(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.tanh(b, x)


def clamp(b: ir.IRBuilder, x: ir.Value, lo: float, hi: float) -> ir.Value:
    """min(max(x, lo), hi) with NaN kept (ordered compares are false for NaN); lo > hi gives hi."""
    x = b.select(b.fcmp_ordered("<", x, const_like(x, lo)), const_like(x, lo), x)
    return b.select(b.fcmp_ordered(">", x, const_like(x, hi)), const_like(x, hi), x)


@unary(OpKind.CLIP, vector=True)
def clip(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return clamp(b, x, attrs.min, attrs.max)


@unary(OpKind.ELU, vector=True)
def elu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    neg = b.fmul(const_like(x, attrs.alpha), vecmath.expm1(b, x))
    return b.select(b.fcmp_ordered(">", x, const_like(x, 0.0)), x, neg)


@derivative(OpKind.ELU)
def elu_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    neg = b.fmul(const_like(x, attrs.alpha), vecmath.exp(b, x))
    return b.select(b.fcmp_ordered(">", x, const_like(x, 0.0)), const_like(x, 1.0), neg)


@unary(OpKind.SELU, vector=True)
def selu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    neg = b.fmul(const_like(x, attrs.alpha), vecmath.expm1(b, x))
    return b.fmul(const_like(x, attrs.gamma), b.select(b.fcmp_ordered(">", x, const_like(x, 0.0)), x, neg))


@derivative(OpKind.SELU)
def selu_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fmul(const_like(x, attrs.gamma), elu_derivative(b, x, attrs))


@unary(OpKind.HARD_SIGMOID, vector=True)
def hard_sigmoid(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return clamp(b, b.fadd(b.fmul(x, const_like(x, attrs.alpha)), const_like(x, attrs.beta)), 0.0, 1.0)


@unary(OpKind.HARD_SWISH, vector=True)
def hard_swish(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fmul(x, clamp(b, b.fadd(b.fmul(x, const_like(x, 1.0 / 6.0)), const_like(x, 0.5)), 0.0, 1.0))


@unary(OpKind.SOFTPLUS, vector=True)
def softplus(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.softplus(b, x)


@derivative(OpKind.SOFTPLUS)
def softplus_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.sigmoid(b, x)


@unary(OpKind.SOFTSIGN, vector=True)
def softsign(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fdiv(x, b.fadd(const_like(x, 1.0), vecmath.fabs(b, x)))


@derivative(OpKind.SOFTSIGN)
def softsign_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    d = b.fadd(const_like(x, 1.0), vecmath.fabs(b, x))
    return b.fdiv(const_like(x, 1.0), b.fmul(d, d))


@unary(OpKind.ERF, vector=True)
def erf(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.erf(b, x)


@derivative(OpKind.ERF)
def erf_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fmul(const_like(x, 2.0 / math.sqrt(math.pi)), vecmath.exp(b, b.fneg(b.fmul(x, x))))


@unary(OpKind.GELU, vector=True)
def gelu(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.gelu_tanh(b, x) if attrs.approximate == "tanh" else vecmath.gelu(b, x)


@derivative(OpKind.GELU)
def gelu_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    one, half = const_like(x, 1.0), const_like(x, 0.5)
    if attrs.approximate == "tanh":  # 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3c x^2), t = tanh(k (x + c x^3))
        k, c = math.sqrt(2.0 / math.pi), 0.044715
        x2 = b.fmul(x, x)
        t = vecmath.tanh(b, b.fmul(const_like(x, k), b.fmul(x, b.fadd(one, b.fmul(const_like(x, c), x2)))))
        du = b.fmul(const_like(x, k), b.fadd(one, b.fmul(const_like(x, 3 * c), x2)))
        return b.fadd(b.fmul(half, b.fadd(one, t)), b.fmul(b.fmul(half, x), b.fmul(b.fsub(one, b.fmul(t, t)), du)))
    # Phi(x) + x phi(x), with Phi(x) = 0.5 (1 + erf(x / sqrt 2)) and phi the normal density
    phi_cdf = b.fmul(half, b.fadd(one, vecmath.erf(b, b.fmul(x, const_like(x, 1.0 / math.sqrt(2.0))))))
    density = b.fmul(const_like(x, 1.0 / math.sqrt(2.0 * math.pi)), vecmath.exp(b, b.fmul(const_like(x, -0.5),
                                                                                     b.fmul(x, x))))
    return b.fadd(phi_cdf, b.fmul(x, density))


@derivative(OpKind.CLIP)
def clip_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    """1 inside (min, max), 0 on the flat parts (PyTorch's hardtanh, i.e. ReLU6)."""
    inside = b.and_(b.fcmp_ordered(">", x, const_like(x, attrs.min)), b.fcmp_ordered("<", x, const_like(x, attrs.max)))
    return b.select(inside, const_like(x, 1.0), const_like(x, 0.0))


@derivative(OpKind.HARD_SIGMOID)
def hard_sigmoid_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    """alpha where 0 < alpha x + beta < 1, else 0."""
    v = b.fadd(b.fmul(x, const_like(x, attrs.alpha)), const_like(x, attrs.beta))
    inside = b.and_(b.fcmp_ordered(">", v, const_like(x, 0.0)), b.fcmp_ordered("<", v, const_like(x, 1.0)))
    return b.select(inside, const_like(x, attrs.alpha), const_like(x, 0.0))


@derivative(OpKind.HARD_SWISH)
def hard_swish_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    """0 below -3, x/3 + 1/2 up to 3, 1 above (PyTorch's hardswish backward)."""
    mid = b.fadd(b.fmul(x, const_like(x, 1.0 / 3.0)), const_like(x, 0.5))
    upper = b.select(b.fcmp_ordered("<=", x, const_like(x, 3.0)), mid, const_like(x, 1.0))
    return b.select(b.fcmp_ordered("<", x, const_like(x, -3.0)), const_like(x, 0.0), upper)


@unary(OpKind.NEG, vector=True)
def neg(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fneg(x)


@derivative(OpKind.NEG)
def neg_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return const_like(x, -1.0)


@unary(OpKind.ABS, vector=True)
def abs_(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.fabs(b, x)


@derivative(OpKind.ABS)
def abs_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    """sign(x): 0 at 0, as numpy and PyTorch."""
    zero = const_like(x, 0.0)
    pos = b.select(b.fcmp_ordered(">", x, zero), const_like(x, 1.0), zero)
    return b.select(b.fcmp_ordered("<", x, zero), const_like(x, -1.0), pos)


@unary(OpKind.EXP, vector=True)
def exp(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.exp(b, x)


@derivative(OpKind.EXP)
def exp_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.exp(b, x)


@unary(OpKind.LOG, vector=True)
def log(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.log(b, x)


@derivative(OpKind.LOG)
def log_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fdiv(const_like(x, 1.0), x)


@unary(OpKind.SQRT, vector=True)
def sqrt(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return call_intrinsic(b, "llvm.sqrt.f32", [x])  # vsqrtps: correctly rounded, NaN below 0


@derivative(OpKind.SQRT)
def sqrt_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fdiv(const_like(x, 0.5), call_intrinsic(b, "llvm.sqrt.f32", [x]))


@unary(OpKind.RECIPROCAL, vector=True)
def reciprocal(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fdiv(const_like(x, 1.0), x)  # a true division, not the 12-bit rcpps estimate


@derivative(OpKind.RECIPROCAL)
def reciprocal_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return b.fdiv(const_like(x, -1.0), b.fmul(x, x))


@unary(OpKind.MISH, vector=True)
def mish(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    return vecmath.mish(b, x)


@derivative(OpKind.MISH)
def mish_derivative(b: ir.IRBuilder, x: ir.Value, attrs) -> ir.Value:
    """tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x), sp = softplus(x)."""
    t = vecmath.tanh(b, vecmath.softplus(b, x))
    return b.fadd(t, b.fmul(b.fmul(x, b.fsub(const_like(x, 1.0), b.fmul(t, t))), vecmath.sigmoid(b, x)))


# Floor, Ceil and Round (half to even, as ONNX and numpy) are one roundps each with SSE4.1/AVX
for _kind, _intrinsic in [(OpKind.FLOOR, "llvm.floor.f32"), (OpKind.CEIL, "llvm.ceil.f32"),
                          (OpKind.ROUND, "llvm.roundeven.f32")]:
    unary(_kind, vector=True)(lambda b, x, attrs, _name=_intrinsic: call_intrinsic(b, _name, [x]))
    derivative(_kind)(lambda b, x, attrs: const_like(x, 0.0))
