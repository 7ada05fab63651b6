"""float32 transcendental functions in LLVM IR, on a scalar or a vector of any width.

Every function here is straight-line IR (range reduction, a polynomial, integer tricks on the bits
and selects for the special cases), so the same code runs in a standalone elementwise kernel, in a
Conv/Gemm epilogue on a register tile and in a scalar loop. LLVM's ``llvm.exp``/``llvm.log`` and
libm's ``tanhf`` are calls to scalar libm on x86: on a vector LLVM splits them into one call per
lane (EfficientNet-B0's 49 standalone Sigmoid layers took 58% of its run time that way).

Accuracy is measured by tests/codegen/test_vecmath.py against float64 references over a dense sweep
of float32 bit patterns (every 4093rd of the 2**32, about a million values: both signs, denormals,
the largest finite values) plus the special values, in units in the last place of the correctly
rounded result (the ulp of a denormal is 2**-149). ``MAX_ULP`` is the bound the test asserts for each
function; the maxima measured on that sweep are in each function's docstring.

Polynomials: exp and log are Cephes' (``expf``, ``logf``); the tanh polynomial for |x| < 0.625 is
Cephes' ``tanhf``; the erf/erfc polynomials were fitted for convc (weighted least squares in float64,
coefficients rounded to float32 one at a time, lowest first, refitting the rest after each).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

from llvmlite import ir

from convc.codegen.llvm_utils import F64, I32, call_intrinsic, const_like, constant

# the bound test_vecmath asserts per function, in float32 ulps over the whole line (see module docstring)
MAX_ULP = {"exp": 2, "log": 1, "log1p": 3, "expm1": 3, "sigmoid": 3, "tanh": 2, "erf": 2, "silu": 4, "gelu": 6,
           "gelu_tanh": 4, "softplus": 3, "mish": 5}


# --- small builders ---------------------------------------------------------------------------------
def _int_type(x: ir.Value) -> ir.Type:
    return ir.VectorType(I32, x.type.count) if isinstance(x.type, ir.VectorType) else I32


def _ic(x: ir.Value, v: int) -> ir.Constant:
    """An i32 constant shaped like x's integer type (a splat for a vector)."""
    ty = _int_type(x)
    return constant(ty, (v,) * ty.count) if isinstance(ty, ir.VectorType) else constant(ty, v)


def _c(x: ir.Value, v: float) -> ir.Constant:
    return const_like(x, v)


def fmuladd(b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    """x * y + z, fused where the CPU has FMA (llvm.fmuladd never becomes a libm call)."""
    return call_intrinsic(b, "llvm.fmuladd.f32", [x, y, z])


def horner(b: ir.IRBuilder, x: ir.Value, coeffs: Sequence[float]) -> ir.Value:
    """coeffs[0] * x**(n-1) + ... + coeffs[-1], highest power first."""
    acc = _c(x, coeffs[0])
    for c in coeffs[1:]:
        acc = fmuladd(b, acc, x, _c(x, c))
    return acc


def fabs(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return call_intrinsic(b, "llvm.fabs.f32", [x])


def copysign(b: ir.IRBuilder, magnitude: ir.Value, sign: ir.Value) -> ir.Value:
    return call_intrinsic(b, "llvm.copysign.f32", [magnitude, sign])


def is_nan(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    return b.fcmp_unordered("uno", x, x)


def _clamp(b: ir.IRBuilder, x: ir.Value, lo: float, hi: float) -> ir.Value:
    """min(max(x, lo), hi) with ordered compares: NaN stays NaN."""
    x = b.select(b.fcmp_ordered("<", x, _c(x, lo)), _c(x, lo), x)
    return b.select(b.fcmp_ordered(">", x, _c(x, hi)), _c(x, hi), x)


def _pow2(b: ir.IRBuilder, n: ir.Value, like: ir.Value) -> ir.Value:
    """2**n as a float for integer n in [-126, 127]: the exponent field written directly."""
    return b.bitcast(b.shl(b.add(n, _ic(like, 127)), _ic(like, 23)), like.type)


# --- exp and log ---------------------------------------------------------------------------------------
LN2_HI, LN2_LO = 0.693359375, -2.12194440e-4  # ln 2 split so that n * LN2_HI is exact for |n| < 2**15
EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def exp(b: ir.IRBuilder, x: ir.Value, scale: ir.Value | None = None) -> ir.Value:
    """e**x: x = n ln2 + r with |r| <= ln2/2, e**r by a degree-7 polynomial, times 2**n.

    2**n is applied as 2**(n>>1) * 2**(n - (n>>1)), both normal floats, so results that overflow
    (x > 88.72) become inf and those in the denormal range (x < -87.34) round once, correctly,
    to a denormal or zero. Measured: 1.23 ulp. ``scale`` (i32, 0 to 64 per lane) returns
    e**x * 2**scale instead, for callers that multiply a tiny e**x by more before rounding to a
    denormal (x * sigmoid(x) at x = -100 would otherwise round twice: 52 ulps)."""
    nan = is_nan(b, x)
    xc = b.select(nan, _c(x, 0.0), _clamp(b, x, -150.0, 89.0))  # beyond: 0 and inf exactly, lifted or not
    n = call_intrinsic(b, "llvm.rint.f32", [b.fmul(xc, _c(x, 1.0 / math.log(2.0)))])
    r = fmuladd(b, n, _c(x, -LN2_HI), xc)
    r = fmuladd(b, n, _c(x, -LN2_LO), r)
    p = fmuladd(b, b.fmul(r, r), horner(b, r, EXP_POLY), b.fadd(r, _c(x, 1.0)))
    ni = b.fptosi(n, _int_type(x))
    if scale is not None:
        ni = b.add(ni, scale)
    n1 = b.ashr(ni, _ic(x, 1))
    y = b.fmul(b.fmul(p, _pow2(b, n1, x)), _pow2(b, b.sub(ni, n1), x))
    return b.select(nan, x, y)


LOG_POLY = (7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
            -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1)


def log(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """Natural log: x = m 2**e with m in [sqrt(1/2), sqrt(2)), log(m) = f - f^2/2 + f^3 P(f) with
    f = m - 1. Denormals are scaled by 2**23 first; log(0) = -inf, log(x < 0) = NaN, log(inf) = inf.
    Measured: 0.75 ulp."""
    it = _int_type(x)
    tiny = b.fcmp_ordered("<", x, _c(x, 1.1754943508222875e-38))
    xs = b.select(tiny, b.fmul(x, _c(x, 8388608.0)), x)
    bits = b.bitcast(xs, it)
    e = b.sitofp(b.sub(b.lshr(bits, _ic(x, 23)), _ic(x, 126)), x.type)
    e = b.fsub(e, b.select(tiny, _c(x, 23.0), _c(x, 0.0)))
    m = b.bitcast(b.or_(b.and_(bits, _ic(x, 0x007FFFFF)), _ic(x, 0x3F000000)), x.type)  # in [0.5, 1)
    low = b.fcmp_ordered("<", m, _c(x, 0.707106781186547524))
    e = b.fsub(e, b.select(low, _c(x, 1.0), _c(x, 0.0)))
    f = b.fsub(b.select(low, b.fadd(m, m), m), _c(x, 1.0))
    z = b.fmul(f, f)
    y = b.fmul(b.fmul(f, z), horner(b, f, LOG_POLY))
    y = fmuladd(b, e, _c(x, LN2_LO), y)
    y = fmuladd(b, z, _c(x, -0.5), y)
    y = fmuladd(b, e, _c(x, LN2_HI), b.fadd(f, y))
    y = b.select(b.fcmp_ordered("==", x, _c(x, math.inf)), x, y)
    y = b.select(b.fcmp_ordered("==", x, _c(x, 0.0)), _c(x, -math.inf), y)
    return b.select(b.fcmp_unordered("<", x, _c(x, 0.0)), _c(x, math.nan), y)  # x < 0 or NaN


def log1p(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """log(1 + x) for x > -1 without cancellation: log(u) * x / (u - 1) with u = 1 + x rounded
    (the rounding error of u cancels in the ratio; Goldberg 1991, thm. 4). Measured: 2.22 ulp."""
    u = b.fadd(x, _c(x, 1.0))
    d = b.fsub(u, _c(x, 1.0))
    y = b.fmul(log(b, u), b.fdiv(x, d))  # x / d ~ 1: no overflow for large x
    y = b.select(b.fcmp_ordered("==", d, _c(x, 0.0)), x, y)
    return b.select(b.fcmp_ordered("==", u, _c(x, math.inf)), u, y)


def expm1(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """e**x - 1 without cancellation near 0: (u - 1) * x / log(u) with u = e**x (Kahan's trick).
    Measured: 2.38 ulp."""
    u = exp(b, x)
    d = b.fsub(u, _c(x, 1.0))
    y = b.fmul(d, b.fdiv(x, log(b, u)))
    y = b.select(b.fcmp_ordered("==", u, _c(x, 1.0)), x, y)
    y = b.select(b.fcmp_ordered("==", d, _c(x, -1.0)), d, y)
    return b.select(b.fcmp_ordered("==", u, _c(x, math.inf)), u, y)


# --- logistic, tanh and erf ---------------------------------------------------------------------------
SCALE_BITS = 64  # how far the scaled forms below lift a result that would be denormal


def _scaled(b: ir.IRBuilder, neg: ir.Value, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """(the i32 exponent lift, the float factor that undoes it) for lanes where ``neg`` is true."""
    return (b.select(neg, _ic(x, SCALE_BITS), _ic(x, 0)),
            b.select(neg, _c(x, 2.0 ** -SCALE_BITS), _c(x, 1.0)))


def sigmoid_scaled(b: ir.IRBuilder, x: ir.Value, x_lo: ir.Value | None = None) -> tuple[ir.Value, ir.Value]:
    """(q, s) with sigmoid(x + x_lo) = q * s: for x < 0, q is lifted by 2**64 so that y * q * s rounds
    once where sigmoid(x) is denormal (see ``sigmoid``). ``x_lo``: a small correction to x (the low
    half of an argument computed in double)."""
    neg = b.fcmp_ordered("<", x, _c(x, 0.0))
    lift, undo = _scaled(b, neg, x)
    e_lifted = exp(b, b.fneg(fabs(b, x)), lift)
    if x_lo is not None:  # e**-|x + lo| = e**-|x| (1 -+ lo)
        e_lifted = b.fmul(e_lifted, b.fsub(_c(x, 1.0), b.select(neg, b.fneg(x_lo), x_lo)))
    e = b.fmul(e_lifted, undo)
    num = b.select(neg, e_lifted, _c(x, 1.0))
    return b.fdiv(num, b.fadd(e, _c(x, 1.0))), undo


def sigmoid(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """1 / (1 + e**-x), written with e = e**-|x| as (x >= 0 ? 1 : e) / (1 + e): one exp that never
    overflows, and exact down to the denormals for negative x (where 1 / (1 + e**-x) is 0 from
    x < -88). Measured: 2.54 ulp."""
    e = exp(b, b.fneg(fabs(b, x)))
    num = b.select(b.fcmp_ordered(">=", x, _c(x, 0.0)), _c(x, 1.0), e)
    return b.fdiv(num, b.fadd(e, _c(x, 1.0)))


TANH_POLY = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)


def tanh(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x + x^3 P(x^2) for |x| < 0.625 (where 1 - 2 / (e**2x + 1) cancels), else that formula with the
    sign of x; e**2x overflows to inf past |x| = 44, which gives exactly +-1. Measured: 1.32 ulp."""
    a = fabs(b, x)
    z = b.fmul(x, x)
    small = fmuladd(b, b.fmul(z, x), horner(b, z, TANH_POLY), x)
    e = exp(b, b.fadd(a, a))
    big = copysign(b, b.fsub(_c(x, 1.0), b.fdiv(_c(x, 2.0), b.fadd(e, _c(x, 1.0)))), x)
    return b.select(b.fcmp_ordered("<", a, _c(x, 0.625)), small, big)


ERF_SPLIT = 0.875  # |x| below: erf(x) = x (c0 + x^2 Q(x^2)); above: 1 - erfc(|x|)
TWO_OVER_SQRT_PI_HI, TWO_OVER_SQRT_PI_LO = 1.128379225730896, -5.8635382771399236e-08
ERF_SMALL_POLY = (8.897410589270294e-05, -0.0008260303293354809, 0.005210837349295616, -0.026863155886530876,
                  0.11283760517835617, -0.37612637877464294)
# erfc(a) e**(a^2) as a polynomial in t = 1 / (1 + a/2) on a in [0.875, 10.6] (relative error 5e-9 in float64)
ERFC_TAIL_POLY = (-0.06284428387880325, 0.30887407064437866, -0.5438269376754761, 0.34606584906578064,
                  -0.07433837652206421, 0.22320839762687683, 0.2376701533794403, 0.28323009610176086,
                  0.28201398253440857, 2.5137412649200996e-06)


def _erf_small(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """erf(x) for |x| < ERF_SPLIT; 2/sqrt(pi) split in two floats (rounded to one it is 5e-8 off)."""
    t = b.fmul(x, x)
    tail = fmuladd(b, t, horner(b, t, ERF_SMALL_POLY), _c(x, TWO_OVER_SQRT_PI_LO))
    return fmuladd(b, x, _c(x, TWO_OVER_SQRT_PI_HI), b.fmul(x, tail))


def erfc_tail(b: ir.IRBuilder, a: ir.Value, a2_hi: ir.Value, a2_lo: ir.Value, lift: ir.Value | None = None) -> ir.Value:
    """erfc(a) for a >= ERF_SPLIT, given a^2 = a2_hi + a2_lo exactly (a2_lo from an FMA): e**-a^2 is
    taken as e**-a2_hi (1 - a2_lo), since rounding a^2 once would cost up to a^2/2 ulps of the result
    (50 ulps at a = 10). Zero once e**-a^2 underflows; callers clamp a (a^2 must not overflow, or
    the FMA's a2_lo is inf). Measured through erf and gelu."""
    t = b.fdiv(_c(a, 1.0), fmuladd(b, a, _c(a, 0.5), _c(a, 1.0)))
    r = horner(b, t, ERFC_TAIL_POLY)
    return b.fmul(exp(b, b.fneg(a2_hi), lift), b.fmul(r, b.fsub(_c(a, 1.0), a2_lo)))


def _square(b: ir.IRBuilder, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """x^2 as hi + lo, both floats (Dekker's product with one FMA)."""
    hi = b.fmul(x, x)
    return hi, call_intrinsic(b, "llvm.fma.f32", [x, x, b.fneg(hi)])


def erf(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """The error function. Past |x| = 3.9 it is +-1 in float32. Measured: 1.55 ulp."""
    a = _clamp(b, fabs(b, x), 0.0, 16.0)
    hi, lo = _square(b, a)
    big = copysign(b, b.fsub(_c(x, 1.0), erfc_tail(b, a, hi, lo)), x)
    return b.select(b.fcmp_ordered("<", a, _c(x, ERF_SPLIT)), _erf_small(b, x), big)


# --- activations built on them ------------------------------------------------------------------------
def silu(b: ir.IRBuilder, x: ir.Value, tail_fn=None) -> ir.Value:
    """x * sigmoid(x) (SiLU, Swish with beta 1). -inf gives NaN, as the unfused Mul(x, Sigmoid(x)) does.
    Measured: 2.91 ulp. ``tail_fn(b, x)``: what computes ``silu_tail`` (default: inline; a kernel that
    applies SiLU to many vectors calls one out-of-line copy instead).

    Every conv of a YOLO or EfficientNet ends in it, so its cost is a layer's: x / (1 + e**-x) with
    e**-x clamped to normal floats (2**n written into the exponent, no NaN or denormal selects) costs
    about half of the careful form. That form (``silu_tail``) is still needed where x * sigmoid(x)
    is denormal or below (x < SILU_TAIL), and for -inf: those lanes take it, behind a branch that
    real activations never take."""
    fast = _silu_fast(b, x)
    lanes = b.fcmp_unordered("<", x, _c(x, SILU_TAIL))  # also NaN: either form gives NaN
    tail = lanes
    if isinstance(x.type, ir.VectorType):
        tail = call_intrinsic(b, f"llvm.vector.reduce.or.v{x.type.count}i1", [lanes], ir.IntType(1))
    before = b.block
    with b.if_then(tail, likely=False):
        careful = b.select(lanes, (tail_fn or silu_tail)(b, x), fast)  # per lane: never depends on neighbours
        tail_block = b.block
    y = b.phi(x.type)
    y.add_incoming(fast, before)
    y.add_incoming(careful, tail_block)
    return y


SILU_TAIL = -80.0  # below: e**-x nears the float32 range and x * sigmoid(x) the denormals


def _silu_fast(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x / (1 + e**-x) for x >= SILU_TAIL; above 87.3, e**-x would be denormal and 1 + it is 1 anyway."""
    t = b.fmul(x, _c(x, -1.0))
    t = b.select(b.fcmp_ordered(">", t, _c(x, -87.3)), t, _c(x, -87.3))
    t = b.select(b.fcmp_ordered("<", t, _c(x, 88.0)), t, _c(x, 88.0))
    n = call_intrinsic(b, "llvm.rint.f32", [b.fmul(t, _c(x, 1.0 / math.log(2.0)))])
    r = fmuladd(b, n, _c(x, -LN2_HI), t)
    r = fmuladd(b, n, _c(x, -LN2_LO), r)
    e = fmuladd(b, b.fmul(r, r), horner(b, r, EXP_POLY), b.fadd(r, _c(x, 1.0)))
    e = b.fmul(e, _pow2(b, b.fptosi(n, _int_type(x)), x))  # n in [-126, 127]
    return b.fdiv(x, b.fadd(e, _c(x, 1.0)))


def silu_tail(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x * sigmoid(x) rounded once down to the denormals (``sigmoid_scaled``)."""
    q, undo = sigmoid_scaled(b, x)
    return b.fmul(b.fmul(x, q), undo)


def gelu(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x * Phi(x) with Phi the normal CDF, 0.5 * (1 + erf(x / sqrt 2)) (ONNX Gelu, approximate="none").

    For x < -1.24 that sum cancels (GELU(-5) = -1.4e-6 from 1 - 0.9999994), so Phi(x) is taken as
    erfc(-x / sqrt 2) / 2 there, with (x / sqrt 2)^2 = x^2 / 2 split exactly. Past |x| = 16, Phi is
    0 or 1 in float32 (x is clamped to 20, where even the lifted Phi is 0); -inf gives NaN like the
    formula. Measured: 5.26 ulp."""
    xs = _clamp(b, x, -20.0, 20.0)
    z = b.fmul(xs, _c(x, 1.0 / math.sqrt(2.0)))
    a = fabs(b, z)
    hi, lo = _square(b, xs)
    is_small = b.fcmp_ordered("<", a, _c(x, ERF_SPLIT))
    lifted = b.and_(b.fcmp_ordered("<", xs, _c(x, 0.0)), b.not_(is_small))  # Phi(x) from the tail alone
    lift, undo = _scaled(b, lifted, x)
    tail = b.fmul(erfc_tail(b, a, b.fmul(hi, _c(x, 0.5)), b.fmul(lo, _c(x, 0.5)), lift), _c(x, 0.5))
    big = b.select(lifted, tail, b.fsub(_c(x, 1.0), tail))  # tail is Phi(-|x|), lifted where x < 0
    small = fmuladd(b, _erf_small(b, z), _c(x, 0.5), _c(x, 0.5))
    return b.fmul(b.fmul(x, b.select(is_small, small, big)), undo)


def gelu_tanh(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (ONNX Gelu, approximate="tanh"), computed as
    x * sigmoid(2 sqrt(2/pi) (x + 0.044715 x^3)): the same value without 1 + tanh's cancellation for
    negative x. The argument is computed in double: at x = -10 it is -88, and rounding it to float
    would cost ~100 ulps of the result (e**-88 magnifies its absolute error). Measured: 3.90 ulp."""
    xs = _clamp(b, x, -16.0, 16.0)
    wide = ir.VectorType(F64, x.type.count) if isinstance(x.type, ir.VectorType) else F64
    xd = b.fpext(xs, wide)
    inner = b.fmul(b.fadd(b.fmul(b.fmul(b.fmul(xd, xd), xd), const_like(xd, 0.044715)), xd),
                   const_like(xd, 2.0 * math.sqrt(2.0 / math.pi)))
    hi = b.fptrunc(inner, x.type)
    lo = b.fptrunc(b.fsub(inner, b.fpext(hi, wide)), x.type)
    q, undo = sigmoid_scaled(b, hi, lo)
    return b.fmul(b.fmul(x, q), undo)


def softplus(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """log(1 + e**x) as max(x, 0) + log1p(e**-|x|): never overflows. Measured: 2.89 ulp."""
    pos = b.select(b.fcmp_ordered("<", x, _c(x, 0.0)), _c(x, 0.0), x)  # NaN stays NaN
    return b.fadd(pos, log1p(b, exp(b, b.fneg(fabs(b, x)))))


def mish(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    """x * tanh(softplus(x)) = x * n / (n + 2) with n = e**x (e**x + 2), which is exact arithmetic on
    one exp (and has no cancellation for negative x); past x = 20 the ratio is 1. Measured: 4.16 ulp."""
    lift, undo = _scaled(b, b.fcmp_ordered("<", x, _c(x, 0.0)), x)
    e_lifted = exp(b, _clamp(b, x, -150.0, 20.0), lift)
    e = b.fmul(e_lifted, undo)
    n_lifted = b.fmul(e_lifted, b.fadd(e, _c(x, 2.0)))
    n = b.fmul(n_lifted, undo)
    return b.fmul(b.fmul(x, b.fdiv(n_lifted, b.fadd(n, _c(x, 2.0)))), undo)
