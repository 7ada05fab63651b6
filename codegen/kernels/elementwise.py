"""Unary activations (codegen/kernels/activations.py) and broadcasting n-ary arithmetic as flat native loops."""
from __future__ import annotations

from collections.abc import Callable

from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import F32, FAST, as_i64, call_intrinsic, const_like, fmax, fmin, for_range, gep, i64, \
    load, loop_nest, memcpy, store
from convc.codegen.kernels.activations import UNARY
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.passes.memory import element_strides


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

