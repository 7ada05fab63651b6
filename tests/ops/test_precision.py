"""bf16 rounding (convc/ops/precision.py) and its kernel (codegen/kernels/precision.py), bit for bit.

The reference here is written independently, one value at a time on the integer bits, from the
rule: round to nearest, ties to even, on the top 16 bits; subnormals to signed zero; NaN quieted.
torch's float32 -> bfloat16 conversion (IEEE RNE) is a second oracle for every value that is not a
subnormal (torch keeps subnormals, where vcvtneps2bf16 and convc flush them).
"""
from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.errors import GraphError
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind
from convc.ops.precision import is_bf16, round_bf16


def reference_bits(b: int) -> int:
    """The bf16 pattern (16 bits) convc must give for the float32 pattern ``b``."""
    sign, exp, man = b >> 31, (b >> 23) & 0xFF, b & 0x7FFFFF
    if exp == 0xFF and man:                  # NaN: keep sign and top payload, set the quiet bit
        return (b >> 16) | 0x0040
    if exp == 0:                             # zero or subnormal: flushed, sign kept
        return sign << 15
    high, low = b >> 16, b & 0xFFFF
    if low > 0x8000 or (low == 0x8000 and high & 1):
        high += 1                            # may carry into the exponent (and up to inf): correct RNE
    return high


def as_f32(patterns) -> np.ndarray:
    return np.array(patterns, dtype=np.uint32).view(np.float32)


SPECIAL = [
    0x00000000, 0x80000000,                  # +-0
    0x3F800000, 0xBF800000,                  # +-1
    0x3F808000,                              # 1 + 2^-8: a tie, even below -> stays 1.0 (0x3f80)
    0x3F818000,                              # tie with odd high half -> rounds up to 0x3f82
    0x3F808001, 0x3F807FFF,                  # just above / below a tie
    0x3F7FFFFF,                              # carries into the exponent -> 1.0
    0x7F7FFFFF, 0xFF7FFFFF,                  # max finite float32 -> +-inf (above bf16's max)
    0x7F7F7FFF,                              # rounds down to bf16's max finite 0x7f7f
    0x7F7F8000,                              # tie at bf16's max, odd -> inf
    0x7F800000, 0xFF800000,                  # +-inf
    0x7FC00000, 0xFFC00000,                  # quiet NaNs
    0x7F800001, 0x7FBFFFFF,                  # signalling NaNs: quieted, never inf
    0x00000001, 0x000B0000, 0x007FFFFF,      # subnormals -> +0
    0x807FFFFF,                              # negative subnormal -> -0
    0x00800000, 0x00808000, 0x00818000,      # smallest normal and ties near it
]


def random_patterns(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    b[: n // 4] = (b[: n // 4] & 0xFFFF0000) | 0x8000  # many exact ties
    return b


def expected(patterns: np.ndarray) -> np.ndarray:
    return np.array([reference_bits(int(p)) for p in patterns], dtype=np.uint32)


def high16(x: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    assert not (v & 0xFFFF).any(), "the result is not a bf16 value"
    return v >> 16


def test_special_values_bit_for_bit():
    got = high16(round_bf16(as_f32(SPECIAL)))
    want = expected(np.array(SPECIAL, dtype=np.uint32))
    assert [hex(g) for g in got] == [hex(w) for w in want]
    # the cases the rule is about, spelt out
    r = dict(zip(SPECIAL, got))
    assert r[0x3F808000] == 0x3F80 and r[0x3F818000] == 0x3F82
    assert r[0x7F7FFFFF] == 0x7F80 and r[0xFF7FFFFF] == 0xFF80 and r[0x7F7F7FFF] == 0x7F7F
    assert r[0x7FC00000] == 0x7FC0 and r[0x7F800001] == 0x7FC0
    assert r[0x00000001] == 0 and r[0x807FFFFF] == 0x8000


def test_random_patterns_match_the_bit_reference():
    p = random_patterns(200_000)
    assert np.array_equal(high16(round_bf16(p.view(np.float32))), expected(p))


def test_normals_match_torch():
    torch = pytest.importorskip("torch")
    p = random_patterns(100_000, seed=1)
    p = p[((p >> 23) & 0xFF) != 0]  # no subnormals: torch rounds them, convc flushes them
    x = p.view(np.float32)
    t = torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    ours = high16(round_bf16(x))
    nan = np.isnan(x)
    assert np.array_equal(ours[~nan], t[~nan])
    assert np.isnan(round_bf16(x[nan])).all()


def test_refuses_other_dtypes():
    with pytest.raises(GraphError, match="float64"):
        round_bf16(np.zeros(3))


def rounding_model(n: int, threads: int):
    g = Graph("round_bf16")
    g.add_tensor("x", (n,), np.float32, TensorKind.INPUT)
    g.add_op(OpKind.ROUND_BF16, NoAttrs(), ["x"], ["y"])
    g.outputs = ["y"]
    return convc.compile(g, threads=threads, cache=False)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [len(SPECIAL), 16 * 1024 + 13])  # odd sizes leave a scalar remainder
def test_kernel_bit_for_bit(threads, n):
    p = np.concatenate([np.array(SPECIAL, dtype=np.uint32), random_patterns(max(0, n - len(SPECIAL)), seed=2)])[:n]
    y = rounding_model(n, threads).run({"x": p.view(np.float32)})["y"]
    assert np.array_equal(high16(y), expected(p))


def test_is_bf16():
    assert is_bf16(round_bf16(np.linspace(-3, 3, 101, dtype=np.float32)))
    assert not is_bf16(np.float32([1.0 + 2 ** -20]))
