"""codegen/vecmath.py against float64 references, in float32 ulps, over a dense sweep of the whole line.

The sweep takes every 4093rd float32 bit pattern (about 1.05 million values, both signs, denormals,
the largest finite values) plus the special values and the points where each function switches
method. Each function runs through ``vector_map``, so most values go through the 8-wide vector body
and the odd tail through the scalar one; a second run over a short odd-length slice checks both
give the same bits. The error bound asserted is ``vecmath.MAX_ULP``.
"""
from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
from llvmlite import ir
from scipy import special

from convc.codegen import vecmath
from convc.codegen.jit import JitEngine
from convc.codegen.kernels.elementwise import vector_map
from convc.codegen.llvm_utils import I64, PTR, VOID

WIDTH = 8


def _phi(x):
    return 0.5 * special.erfc(-x / np.sqrt(2.0))


def _gelu_tanh(x):
    inner = np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)
    return x * special.expit(2.0 * inner)


# name -> (vecmath function, float64 reference, domain: values outside give NaN in both)
FUNCTIONS = {
    "exp": (vecmath.exp, np.exp),
    "log": (vecmath.log, np.log),
    "log1p": (vecmath.log1p, np.log1p),
    "expm1": (vecmath.expm1, np.expm1),
    "sigmoid": (vecmath.sigmoid, special.expit),
    "tanh": (vecmath.tanh, np.tanh),
    "erf": (vecmath.erf, special.erf),
    "silu": (vecmath.silu, lambda x: x * special.expit(x)),
    "gelu": (vecmath.gelu, lambda x: x * _phi(x)),
    "gelu_tanh": (vecmath.gelu_tanh, _gelu_tanh),
    "softplus": (vecmath.softplus, lambda x: np.logaddexp(x, 0.0)),
    "mish": (vecmath.mish, lambda x: x * np.tanh(np.logaddexp(x, 0.0))),
}
SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38, 3.4028235e38,
           -3.4028235e38, 0.625, -0.625, 0.875, -0.875, 88.72, 88.73, -87.33, -87.34, -103.9, -104.1, 20.0, 16.0,
           -16.0, 9.0, -9.0, 1.0, -1.0, 0.5, 2.0, -2.0, 1e-7, -1e-7, -1.24, -1.25, 3.9, -3.9]


def sweep() -> np.ndarray:
    bits = np.arange(0, 2 ** 32, 4093, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    x = np.concatenate([x, np.array(SPECIAL, np.float32), np.linspace(-20, 20, 200_001, dtype=np.float32)])
    return x


def build(names: list[str]):
    """One JIT module with ``void name(float *x, float *y, int64 n)`` per function: y = f(x) via vector_map."""
    module = ir.Module("vecmath_test")
    for name in names:
        f = ir.Function(module, ir.FunctionType(VOID, [PTR, PTR, I64]), name=name)
        b = ir.IRBuilder(f.append_basic_block())
        x, y, n = f.args
        vector_map(b, lambda b, v, fn=FUNCTIONS[name][0]: fn(b, v[0]), [x], y, 0, n, WIDTH)
        b.ret_void()
    engine = JitEngine(str(module))
    proto = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    return engine, {name: proto(engine.address(name)) for name in names}


@pytest.fixture(scope="module")
def kernels():
    return build(list(FUNCTIONS))


def run(kernels, name: str, x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    y = np.full_like(x, 12345.0)
    kernels[1][name](x.ctypes.data, y.ctypes.data, x.size)
    return y


def ulp_error(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """|y - ref| in ulps of the float32 nearest ref (2**-149 for denormals); NaN and inf must match."""
    with np.errstate(invalid="ignore", over="ignore"):
        r32 = ref.astype(np.float32)
        unit = np.spacing(np.abs(r32)).astype(np.float64)
        err = np.abs(y.astype(np.float64) - ref) / unit
    same_special = (np.isnan(y) & np.isnan(ref)) | (np.isinf(r32) & (y == r32))
    err = np.where(same_special, 0.0, err)
    return np.where(np.isnan(err) | np.isnan(y) != np.isnan(ref), np.inf, err)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_max_ulp_error_over_the_float32_line(kernels, name):
    x = sweep()
    with np.errstate(all="ignore"):
        ref = FUNCTIONS[name][1](x.astype(np.float64))
    y = run(kernels, name, x)
    err = ulp_error(y, ref)
    worst = int(np.argmax(err))
    assert err[worst] <= vecmath.MAX_ULP[name], \
        f"{name}({x[worst]!r}) = {y[worst]!r}, float64 says {ref[worst]!r}: {err[worst]:.2f} ulp"


@pytest.mark.parametrize("name", list(FUNCTIONS))
@pytest.mark.parametrize("n", [1, 7, 8, 9, 13, 1001])
def test_vector_and_scalar_bodies_agree(kernels, name, n):
    """Odd lengths run the scalar remainder; element i must not depend on which body computed it."""
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n + 8) * 6).astype(np.float32)
    whole = run(kernels, name, x)
    tail = run(kernels, name, x[:n])  # with n < 8 every element takes the scalar body
    np.testing.assert_array_equal(tail, whole[:n])


def test_silu_lanes_in_its_tail_do_not_change_their_neighbours(kernels):
    """silu takes its careful form behind a branch for vectors with a lane below SILU_TAIL (denormal
    results, -inf, NaN); every lane must still give the value it gives among ordinary lanes."""
    ordinary = np.linspace(-79.0, 20.0, 64, dtype=np.float32)
    alone = run(kernels, "silu", ordinary)
    mixed = ordinary.copy()
    tails = np.array([-80.5, -95.0, -104.0, -np.inf, np.nan, -1e30, -87.0, -150.0], np.float32)
    mixed[3::8] = tails
    y = run(kernels, "silu", mixed)
    keep = np.ones(64, bool)
    keep[3::8] = False
    np.testing.assert_array_equal(y[keep], alone[keep])
    with np.errstate(all="ignore"):
        ref = tails.astype(np.float64) * special.expit(tails.astype(np.float64))
    assert ulp_error(y[3::8], ref).max() <= vecmath.MAX_ULP["silu"]


def test_specials(kernels):
    """The edges spelled out: what each function gives at 0, +-inf and NaN."""
    x = np.array([0.0, np.inf, -np.inf, np.nan], np.float32)
    expect = {
        "exp": [1.0, np.inf, 0.0, np.nan], "log": [-np.inf, np.inf, np.nan, np.nan],
        "sigmoid": [0.5, 1.0, 0.0, np.nan], "tanh": [0.0, 1.0, -1.0, np.nan], "erf": [0.0, 1.0, -1.0, np.nan],
        "softplus": [math.log(2.0), np.inf, 0.0, np.nan],
        # x * f(x) forms: -inf * 0 is NaN, as the unfused graph (Mul(x, Sigmoid(x))) computes
        "silu": [0.0, np.inf, np.nan, np.nan], "gelu": [0.0, np.inf, np.nan, np.nan],
        "mish": [0.0, np.inf, np.nan, np.nan],
    }
    for name, want in expect.items():
        np.testing.assert_allclose(run(kernels, name, x), np.array(want, np.float32), rtol=1e-6, err_msg=name)
