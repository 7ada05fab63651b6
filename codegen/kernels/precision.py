"""RoundBF16: float32 values rounded to bf16 values (still in float32 storage), in target-width vectors.

The rounding is convc/ops/precision.py's, done with integer ops on the float32 bits so that it is
exact and the same on every x86 CPU: LLVM's ``fptrunc ... to bfloat`` is one ``vcvtneps2bf16`` only
where the CPU has AVX512_BF16, a ``__truncsfbf2`` libcall per element elsewhere (and that libcall
keeps subnormals, where the instruction flushes them). Six integer ops and two selects per vector
cost about as much as a copy, and this op runs once per conv input, not per multiply.
"""
from __future__ import annotations

from llvmlite import ir

from convc.codegen.kernels.elementwise import emit_map
from convc.codegen.llvm_utils import F32
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.precision import ABS, EXPONENT, HIGH, QUIET, SIGN

I32 = ir.IntType(32)


def _like(x: ir.Value, ty: ir.Type, v: int) -> ir.Constant:
    """The constant ``v`` of type ``ty``, splatted when ``x`` is a vector."""
    if isinstance(x.type, ir.VectorType):
        return ir.Constant(ir.VectorType(ty, x.type.count), [ir.Constant(ty, v)] * x.type.count)
    return ir.Constant(ty, v)


def round_bf16(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x (float or <N x float>) rounded to bf16 values: RNE for normals and infinities, subnormals to
    signed zero, NaN quieted (convc/ops/precision.py)."""
    n = x.type.count if isinstance(x.type, ir.VectorType) else None
    ity = I32 if n is None else ir.VectorType(I32, n)
    bits = b.bitcast(x, ity)
    c = lambda v: _like(x, I32, v)  # noqa: E731
    odd = b.and_(b.lshr(bits, c(16)), c(1))
    rounded = b.and_(b.add(b.add(bits, c(0x7FFF)), odd), c(HIGH))  # wraps only in NaN lanes, replaced below
    nan = b.icmp_unsigned(">", b.and_(bits, c(ABS)), c(EXPONENT))
    tiny = b.icmp_unsigned("==", b.and_(bits, c(EXPONENT)), c(0))
    out = b.select(tiny, b.and_(bits, c(SIGN)), rounded)
    out = b.select(nan, b.and_(b.or_(bits, c(QUIET)), c(HIGH)), out)
    return b.bitcast(out, x.type if n is not None else F32)


@emitter(OpKind.ROUND_BF16)
def emit_round_bf16(em: ModuleEmitter, op: Op) -> KernelCall:
    """y = round_bf16(x), split between threads in whole vectors (x and y may be one buffer)."""
    return emit_map(em, op, round_bf16, computes=("round_bf16",))
