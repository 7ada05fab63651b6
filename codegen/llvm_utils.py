"""Small helpers over llvmlite.ir.IRBuilder: types, loops, pointers and intrinsics."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from llvmlite import ir

F32 = ir.FloatType()
F64 = ir.DoubleType()
I1 = ir.IntType(1)
I8 = ir.IntType(8)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()  # opaque pointer (LLVM >= 17)
VOID = ir.VoidType()

# fast-math lets LLVM vectorize float reductions; the tolerance of the tests (1e-4 relative) allows it
FAST = ("fast",)


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


_CONSTANTS: dict = {}


def _value_key(v):
    """``v`` as a cache key that tells apart what prints differently: 0.0 from -0.0 (equal, same
    hash), 1 from 1.0 and True."""
    if isinstance(v, float):
        return v.hex()
    if isinstance(v, tuple):
        return tuple(map(_value_key, v))
    return type(v).__name__, v


def constant(ty: ir.Type, value) -> ir.Constant:
    """One shared ``ir.Constant`` per type and value (a float, an int, None, ``ir.Undefined``, or a
    tuple of element values for a vector): llvmlite formats a constant once per object, and a
    kernel's vector constants (splats of polynomial coefficients, shuffle masks) recur thousands of
    times in a model (EfficientNet-B0: 5700 vector constants formatted, 0.2 s of its IR printing).
    Constants are immutable values, so instructions may share them."""
    key = (ty, _value_key(value))
    c = _CONSTANTS.get(key)
    if c is None:
        if len(_CONSTANTS) >= 4096:
            _CONSTANTS.clear()
        c = _CONSTANTS[key] = ir.Constant(ty, list(value) if isinstance(value, tuple) else value)
    return c


def f32(v: float) -> ir.Constant:
    return ir.Constant(F32, float(v))


def as_i64(b: ir.IRBuilder, v) -> ir.Value:
    return i64(v) if isinstance(v, int) else v


@contextmanager
def for_range(b: ir.IRBuilder, stop, start=0, step: int = 1, name: str = "i") -> Iterator[ir.Value]:
    """``for (i = start; i < stop; i += step)`` with an i64 phi induction variable."""
    start, stop = as_i64(b, start), as_i64(b, stop)
    pre = b.block
    header = b.append_basic_block(f"{name}.header")
    body = b.append_basic_block(f"{name}.body")
    end = b.append_basic_block(f"{name}.end")
    b.branch(header)
    b.position_at_end(header)
    phi = b.phi(I64, name=name)
    phi.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", phi, stop), body, end)
    b.position_at_end(body)
    yield phi
    nxt = b.add(phi, i64(step), name=f"{name}.next", flags=("nsw",))
    phi.add_incoming(nxt, b.block)
    b.branch(header)
    b.position_at_end(end)


@contextmanager
def loop_nest(b: ir.IRBuilder, stops: Sequence, name: str = "i") -> Iterator[list[ir.Value]]:
    """Nested ``for_range`` loops over ``stops``, outermost first."""
    with _nest(b, list(stops), name, []) as idx:
        yield idx


@contextmanager
def _nest(b, stops, name, acc):
    if not stops:
        yield acc
        return
    with for_range(b, stops[0], name=f"{name}{len(acc)}") as i:
        with _nest(b, stops[1:], name, acc + [i]) as idx:
            yield idx


@contextmanager
def if_then(b: ir.IRBuilder, cond: ir.Value) -> Iterator[None]:
    with b.if_then(cond):
        yield


def gep(b: ir.IRBuilder, ptr: ir.Value, index, ty: ir.Type = F32, name: str = "") -> ir.Value:
    return b.gep(ptr, [as_i64(b, index)], inbounds=True, source_etype=ty, name=name)


def load(b: ir.IRBuilder, ptr: ir.Value, index, ty: ir.Type = F32) -> ir.Value:
    return b.load(gep(b, ptr, index, ty), typ=ty)


def store(b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, index) -> None:
    b.store(value, gep(b, ptr, index, value.type))


def linear_index(b: ir.IRBuilder, idx: Sequence[ir.Value], strides: Sequence[int]) -> ir.Value:
    """sum(idx[i] * strides[i]); zero strides (broadcast dimensions) are skipped."""
    terms = [i if s == 1 else b.mul(i, i64(s), flags=("nsw",)) for i, s in zip(idx, strides) if s != 0]
    if not terms:
        return i64(0)
    total = terms[0]
    for t in terms[1:]:
        total = b.add(total, t, flags=("nsw",))
    return total


def intrinsic(module: ir.Module, name: str, ret: ir.Type, args: Sequence[ir.Type]) -> ir.Function:
    """Declare (once) an LLVM intrinsic or libm function."""
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(ret, list(args)), name=name)


def call_intrinsic(b: ir.IRBuilder, name: str, args: Sequence[ir.Value], ret: ir.Type | None = None) -> ir.Value:
    """Call an LLVM intrinsic named for f32 (``llvm.exp.f32``); on vector arguments the name is
    mangled for the vector type (``llvm.exp.v16f32``), as LLVM's overloaded intrinsics require."""
    ty = args[0].type
    if name.startswith("llvm.") and name.endswith(".f32") and isinstance(ty, ir.VectorType):
        name = f"{name[:-4]}.v{ty.count}f32"
    fn = intrinsic(b.module, name, ret or ty, [a.type for a in args])
    return b.call(fn, list(args))


def fmax(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    """max that returns NaN if either side is NaN, like numpy. Written as compare and select
    (x > y or x is NaN ? x : y), which vectorizes to vmaxps plus one fix-up; llvm.maximum is
    expanded to a longer sequence on x86 that stops the loop vectorizer."""
    return b.select(b.or_(b.fcmp_ordered(">", x, y), b.fcmp_unordered("uno", x, x)), x, y)


def fmin(b: ir.IRBuilder, x: ir.Value, y: ir.Value) -> ir.Value:
    return call_intrinsic(b, "llvm.minimum.f32", [x, y])


def memcpy(b: ir.IRBuilder, dst: ir.Value, src: ir.Value, nbytes) -> None:
    fn = intrinsic(b.module, "llvm.memcpy.p0.p0.i64", VOID, [PTR, PTR, I64, I1])
    b.call(fn, [dst, src, as_i64(b, nbytes), ir.Constant(I1, 0)])


def memset_zero(b: ir.IRBuilder, dst: ir.Value, nbytes) -> None:
    fn = intrinsic(b.module, "llvm.memset.p0.i64", VOID, [PTR, I8, I64, I1])
    b.call(fn, [dst, ir.Constant(I8, 0), as_i64(b, nbytes), ir.Constant(I1, 0)])


def alloca_entry(b: ir.IRBuilder, ty: ir.Type = F32, name: str = "") -> ir.Value:
    """A stack slot in the entry block, where mem2reg can promote it to a register."""
    here = b.block
    b.position_at_start(b.function.entry_basic_block)
    slot = b.alloca(ty, name=name)
    b.position_at_end(here)
    return slot


def select_index(b: ir.IRBuilder, cond: ir.Value, yes, no) -> ir.Value:
    return b.select(cond, as_i64(b, yes), as_i64(b, no))


def in_range(b: ir.IRBuilder, v: ir.Value, lo: int, hi: int) -> ir.Value:
    """lo <= v < hi as one unsigned compare of (v - lo)."""
    shifted = b.sub(v, i64(lo)) if lo else v
    return b.icmp_unsigned("<", shifted, i64(hi - lo))


def const_like(x: ir.Value, v: float) -> ir.Constant:
    """A float constant of x's type: a scalar, or a splat for a vector."""
    if isinstance(x.type, ir.VectorType):
        return constant(x.type, (float(v),) * x.type.count)
    return constant(x.type, float(v))


class _WrittenConstant(ir.values.FormattedConstant):
    """An aggregate constant given as its IR text, printed as llvmlite prints an ir.Constant."""
    _to_string = ir.Constant._to_string


def constant_table(b: ir.IRBuilder, values: Sequence, name: str = "table", ty: ir.Type = I64) -> ir.Value:
    """An internal constant array in the module (index or weight tables built at compile time); returns its
    address. ``ty`` is an integer type (values become ints) or F32/F64 (values become floats)."""
    module = b.module
    array_type = ir.ArrayType(ty, len(values))
    gv = ir.GlobalVariable(module, array_type, name=module.get_unique_name(name))
    gv.linkage = "internal"
    gv.global_constant = True
    if isinstance(ty, ir.IntType):  # written as text: llvmlite builds and formats a Constant per element
        gv.initializer = _WrittenConstant(array_type, f"[{', '.join(f'{ty} {int(v)}' for v in values)}]")
    else:
        gv.initializer = ir.Constant(array_type, [float(v) for v in values])
    return gv


def opaque(b: ir.IRBuilder, v) -> ir.Value:
    """``v`` unchanged, hidden from the optimizer behind an empty inline asm: a loop bounded by it is not fully
    unrolled (LLVM takes minutes to fully unroll a 60 x 80 pooling window)."""
    return b.asm(ir.FunctionType(I64, [I64]), "", "=r,0", [as_i64(b, v)], side_effect=False, name="opaque")


def prefetch(b: ir.IRBuilder, base: ir.Value, index: ir.Value) -> None:
    """Prefetch the line of float base[index] into L1 for reading (a hint: the address may lie past
    the tensor, so the pointer is computed without ``inbounds``)."""
    fn = intrinsic(b.module, "llvm.prefetch.p0", VOID, [PTR, I32, I32, I32])
    ptr = b.gep(base, [as_i64(b, index)], source_etype=F32)
    b.call(fn, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)])
