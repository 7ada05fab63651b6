"""bf16 rounding: the one definition of how convc rounds a float32 value to bfloat16.

bfloat16 keeps float32's sign and 8-bit exponent and the top 7 mantissa bits, so a bf16 value is a
float32 whose low 16 bits are zero. convc holds bf16 values in float32 storage: the product of two
such values has at most 16 significant bits and is exact in float32, so a float32 FMA over
bf16-rounded operands computes exactly the bf16 product that ``vdpbf16ps`` computes, with float32
accumulation (passes/precision.py places the rounding).

The rounding is the one ``vcvtneps2bf16`` performs (KERNELS-precision.md measured it on Zen 5):
- normals and infinities: round to nearest, ties to even (the largest finite float32 rounds to inf,
  as does everything from 0x7f7f8000 up);
- float32 subnormals (and zeros): flushed to zero of the same sign. IEEE RNE would keep some of
  them (1e-39 -> 0x000b); the instruction flushes them, and convc does the same so that a machine
  with native bf16 and one without agree. Activations and weights that small contribute nothing
  measurable to a conv's float32 sum;
- NaN: stays NaN, quieted (the instruction's rule: the top 16 bits with the quiet bit set, so the
  default NaN 0x7fc00000 gives 0x7fc0).

``RoundBF16`` (an internal op, placed only by passes/precision.py) applies this to a tensor; its
kernel is codegen/kernels/precision.py, and ``round_bf16`` below is both its numpy reference and
what rounds constant weights at compile time.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convc.ops.base import NoAttrs, OpDef, OpKind, TensorType, check_arity, register, same_type
from convc.errors import GraphError

SIGN = 0x80000000
EXPONENT = 0x7F800000
ABS = 0x7FFFFFFF
QUIET = 0x00400000
HIGH = 0xFFFF0000


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 array -> float32 array of bf16 values (the low 16 bits zero), rounded as the module
    docstring says. Other dtypes are refused rather than silently converted."""
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise GraphError(f"bf16 rounding takes float32 values, got dtype {x.dtype}")
    bits = x.view(np.uint32).astype(np.uint64)  # no wrap-around for the NaN lanes' sums
    odd = (bits >> 16) & 1
    rounded = ((bits + 0x7FFF + odd) & HIGH).astype(np.uint32)
    nan = (bits & ABS) > EXPONENT
    tiny = (bits & EXPONENT) == 0
    out = np.where(nan, (bits | QUIET) & HIGH, np.where(tiny, bits & SIGN, rounded)).astype(np.uint32)
    return out.view(np.float32).reshape(x.shape)


def is_bf16(x: np.ndarray) -> bool:
    """Every value of the float32 array ``x`` is a bf16 value (its low 16 bits are zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return bool(not (x.view(np.uint32) & 0xFFFF).any())


def _infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.ROUND_BF16, types, 1, 1)
    if types[0].dtype != np.float32:
        raise GraphError(f"RoundBF16 input has dtype {types[0].dtype}, expected float32")
    return same_type(types[0])


def _flops(a: NoAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """One rounding per element (a handful of integer ops each, counted as one)."""
    return int(np.prod(outs[0].shape, dtype=np.int64))


register(OpDef(OpKind.ROUND_BF16, NoAttrs, _infer, lambda a, x: [round_bf16(x)], flops=_flops))
