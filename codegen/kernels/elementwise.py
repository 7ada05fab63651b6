"""Unary activations and broadcasting n-ary arithmetic as flat native loops."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen import vecmath
from convc.codegen.llvm_utils import F32, FAST, as_i64, call_intrinsic, const_like, fmax, fmin, for_range, gep, i64, \
    load, loop_nest, memcpy, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.passes.memory import element_strides

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


def vector_map(b: ir.IRBuilder, fn: Callable[[ir.IRBuilder, list[ir.Value]], ir.Value], srcs: list[ir.Value],
               dst: ir.Value, lo, hi, width: int) -> None:
    """dst[i] = fn(b, [src[i] for src in srcs]) for i in [lo, hi): ``width`` floats at a time, then the
    remaining ones as scalars. ``fn`` is emitted twice (vector and scalar body); dst may be a src."""
    lo, hi = as_i64(b, lo), as_i64(b, hi)
    vec = ir.VectorType(F32, width)
    whole = b.sub(hi, b.urem(b.sub(hi, lo), i64(width)))
    with for_range(b, whole, start=lo, step=width, name="v") as i:
        vals = [b.load(gep(b, s, i), typ=vec, align=4) for s in srcs]
        b.store(fn(b, vals), gep(b, dst, i), align=4)
    with for_range(b, hi, start=whole, name="s") as i:
        store(b, fn(b, [load(b, s, i) for s in srcs]), dst, i)


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


def _signature(em: ModuleEmitter, op: Op, *parts) -> tuple | None:
    """What a layer's elementwise function depends on besides its sizes: ``parts`` (what it
    computes), the operands' dtypes and which arguments alias (no ``noalias`` on those); None when
    the parts cannot be compared (an attribute too large to print whole)."""
    text = repr(parts)
    if "..." in text:
        return None
    args = list(op.inputs) + list(op.outputs)
    return (text, tuple(str(em.tensor(t).dtype) for t in args), em.overlapping(args))


def _emitted_once(em: ModuleEmitter, signature: tuple | None, build: Callable[[], ir.Function]) -> ir.Function:
    """The function ``build`` writes, written once per ``signature`` in a module: the layers of an op
    read their sizes at run time, so they share one function (and the code generation of the
    others: DenseNet-121's 62 per-channel scales, 62 shifts and 62 ReLUs took 0.45 s of Python)."""
    fn = em.emitted.get(signature) if signature is not None else None
    if fn is None:
        fn = build()
        if signature is not None:
            em.emitted[signature] = fn
    return fn


def emit_map(em: ModuleEmitter, op: Op, f: Callable[[ir.IRBuilder, ir.Value], ir.Value],
             computes: tuple | None = None) -> KernelCall:
    """The kernel y = f(x) of a one-input op, in vectors of the target's width (f sees vectors, then the
    scalar tail), split between threads in whole vectors; x and y may be one buffer. The length is a
    run-time argument (``size_table``): every layer of one op is one compiled function, and with
    ``computes`` (what f computes: the op kind and attributes) one function written once."""
    def build() -> ir.Function:
        fn, b = em.function(op.name, 3, parallel=True)
        x, y, sizes = fn.args[:3]
        (n,) = em.read_sizes(b, sizes, 1)
        w = em.isa.width
        lo, hi = em.thread_range(b, fn, b.udiv(b.add(n, i64(w - 1)), i64(w)))
        hi = b.mul(hi, i64(w))
        hi = b.select(b.icmp_unsigned("<", hi, n), hi, n)
        vector_map(b, lambda b, v: f(b, v[0]), [x], y, b.mul(lo, i64(w)), hi, w)
        b.ret_void()
        return fn
    signature = None if computes is None else _signature(em, op, "map", computes)
    return KernelCall(_emitted_once(em, signature, build),
                      [op.inputs[0], op.outputs[0], em.size_table([em.tensor(op.inputs[0]).size])])


@emitter(*UNARY)
def emit_unary(em: ModuleEmitter, op: Op) -> KernelCall:
    fx = UNARY[op.kind]
    return emit_map(em, op, lambda b, v: fx(b, v, op.attrs), computes=(op.kind.value, op.attrs))


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


def operand_strides(em: ModuleEmitter, name: str, out: tuple[int, ...]) -> list[int]:
    """Element strides of operand ``name`` read as ``out``: 0 along broadcast dimensions, and the
    memory plan's row stride where it lives in rows of a Concat's output (passes/memory.py
    ``reads_strided``: DenseNet's BatchNorm after each Concat reads the Concat it is nested in)."""
    t = em.tensor(name)
    own = element_strides(t.shape, em.plan.memory.view(name, t.size))
    return [0] * (len(out) - len(t.shape)) + [st if d != 1 else 0 for st, d in zip(own, t.shape)]


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
    # libm's powf (exact for integer powers of negative bases); Pow with a small constant exponent never
    # gets here: the importer writes it as multiplications, Sqrt or Reciprocal
    OpKind.POW: lambda b, x, y: call_intrinsic(b, "llvm.pow.f32", [x, y]),
}


def emit_broadcast_map(em: ModuleEmitter, op: Op, combine: Callable[[ir.IRBuilder, list[ir.Value]], ir.Value],
                       computes: tuple | None = None) -> KernelCall:
    """out = combine(the operands' values) over the broadcast output. Threads split the outermost of the
    collapsed dimensions (for a squeeze-and-excitation scale in channels-last, x[HW, C] * s[C]: the pixels);
    the innermost loop is left to LLVM's vectorizer.

    The sizes and strides are run-time arguments (``size_table``) except each operand's innermost
    stride when it is 0 or 1 (broadcast or contiguous), which the vectorizer needs to know: the layers
    of one op with the same number of collapsed dimensions and the same innermost pattern (DenseNet-121's
    62 per-channel scales) are one compiled function, written once when ``computes`` says what
    ``combine`` computes (``emit_map``)."""
    out = em.tensor(op.outputs[0]).shape
    n = len(op.inputs)
    dims, strides = collapse(out, [operand_strides(em, t, out) for t in op.inputs] + [broadcast_strides(out, out)])
    table = list(dims)
    for st in strides:
        table += st if st[-1] not in (0, 1) else st[:-1]

    def build() -> ir.Function:
        fn, b = em.function(op.name, n + 2, parallel=True)
        sizes = iter(em.read_sizes(b, fn.args[n + 1], len(table)))
        run_dims = [next(sizes) for _ in dims]
        run_strides = [[next(sizes) for _ in st[:-1]] + [st[-1] if st[-1] in (0, 1) else next(sizes)]
                       for st in strides]
        lo, hi = em.thread_range(b, fn, run_dims[0])
        with for_range(b, hi, start=lo, name="outer") as outer:
            with loop_nest(b, run_dims[1:]) as idx:
                idx = [outer] + idx
                vals = [load(b, fn.args[k], _index(b, idx, run_strides[k])) for k in range(n)]
                store(b, combine(b, vals), fn.args[n], _index(b, idx, run_strides[n]))
        b.ret_void()
        return fn
    # the function's shape: how many collapsed dimensions, each operand's innermost stride when fixed
    shape = (len(dims), tuple((len(st), st[-1] if st[-1] in (0, 1) else None) for st in strides))
    signature = None if computes is None else _signature(em, op, "broadcast", computes, shape)
    return KernelCall(_emitted_once(em, signature, build), list(op.inputs) + [op.outputs[0], em.size_table(table)])


def _index(b: ir.IRBuilder, idx: list[ir.Value], strides: list) -> ir.Value:
    """sum(idx[i] * strides[i]) over strides that are run-time values or Python ints."""
    terms = [i if isinstance(s, int) and s == 1 else b.mul(i, as_i64(b, s), flags=("nsw",))
             for i, s in zip(idx, strides) if not (isinstance(s, int) and s == 0)]
    total = terms[0] if terms else i64(0)
    for t in terms[1:]:
        total = b.add(total, t, flags=("nsw",))
    return total


@emitter(*BINARY)
def emit_broadcast(em: ModuleEmitter, op: Op) -> KernelCall:
    pair = BINARY[op.kind]

    def combine(b: ir.IRBuilder, vals: list[ir.Value]) -> ir.Value:
        acc = vals[0]
        for v in vals[1:]:
            acc = pair(b, acc, v)
        return acc
    return emit_broadcast_map(em, op, combine, computes=(op.kind.value,))


@emitter(OpKind.EXPAND)
def emit_expand(em: ModuleEmitter, op: Op) -> KernelCall:
    """A broadcasting copy: the input read with stride 0 along the axes it is broadcast along."""
    return emit_broadcast_map(em, op, lambda b, vals: vals[0], computes=("expand",))


@emitter(OpKind.WHERE)
def emit_where(em: ModuleEmitter, op: Op) -> KernelCall:
    """mask != 0 ? x : y, a select: x and y pass bit for bit (NaN, inf and -0.0 too)."""
    def select(b: ir.IRBuilder, vals: list[ir.Value]) -> ir.Value:
        mask, x, y = vals
        return b.select(b.fcmp_unordered("!=", mask, const_like(mask, 0.0)), x, y)
    return emit_broadcast_map(em, op, select, computes=("where",))

