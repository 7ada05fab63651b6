"""Softmax and LogSoftmax along every axis, and with large inputs (the max must be subtracted before exp)."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check_op

from convc.ops import OpKind
from convc.ops.softmax import SoftmaxAttrs

SHAPES = [(3, 5, 7), (2, 3, 4, 5)]
AXES = [(s, a) for s in SHAPES for a in range(len(s))]


@pytest.mark.parametrize("shape,axis", AXES, ids=[f"{s}-axis{a}".replace(" ", "") for s, a in AXES])
def test_softmax_axis(rng, shape, axis):
    y = check_op(OpKind.SOFTMAX, SoftmaxAttrs(axis), [rng.standard_normal(shape).astype(np.float32)])
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-5)


@pytest.mark.parametrize("scale", [100.0, 1000.0])
@pytest.mark.parametrize("shape,axis", [((3, 5, 7), 2), ((2, 3, 4, 5), 1), ((2, 3, 4, 5), 0)],
                         ids=["last-axis", "channels", "batch"])
def test_softmax_large_values(rng, shape, axis, scale):
    """Inputs up to ~3 * scale: exp overflows float32 beyond 88 unless the maximum is subtracted first."""
    x = (scale * rng.standard_normal(shape)).astype(np.float32)
    y = check_op(OpKind.SOFTMAX, SoftmaxAttrs(axis), [x])
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=1e-5)


def test_softmax_equal_large_values_is_uniform():
    x = np.full((2, 4), 1000.0, dtype=np.float32)
    y = check_op(OpKind.SOFTMAX, SoftmaxAttrs(1), [x])
    np.testing.assert_allclose(y, 0.25, rtol=1e-6)


def test_softmax_length_one_axis(rng):
    y = check_op(OpKind.SOFTMAX, SoftmaxAttrs(1), [rng.standard_normal((3, 1, 4)).astype(np.float32)])
    np.testing.assert_array_equal(y, 1.0)


def test_softmax_masked_with_minus_inf(rng):
    """-inf entries (a mask) get probability 0; the others still sum to 1."""
    x = rng.standard_normal((3, 6)).astype(np.float32)
    x[0, :5] = x[1, 2] = x[2, ::2] = -np.inf
    y = check_op(OpKind.SOFTMAX, SoftmaxAttrs(1), [x])
    assert np.all(y[np.isneginf(x)] == 0) and y[0, 5] == 1.0
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("shape,axis", AXES, ids=[f"{s}-axis{a}".replace(" ", "") for s, a in AXES])
def test_log_softmax_axis(rng, shape, axis):
    y = check_op(OpKind.LOG_SOFTMAX, SoftmaxAttrs(axis), [rng.standard_normal(shape).astype(np.float32)])
    np.testing.assert_allclose(np.exp(y).sum(axis=axis), 1.0, rtol=1e-5)


def test_log_softmax_large_values_stay_finite(rng):
    """x - max - log(sum exp(x - max)): finite even where exp(x - max) underflows to 0."""
    x = (1000.0 * rng.standard_normal((3, 17))).astype(np.float32)
    # onnx.reference takes log(softmax(x)), which is -inf wherever softmax underflows: numpy reference only
    y = check_op(OpKind.LOG_SOFTMAX, SoftmaxAttrs(1), [x], onnx_check=False)
    assert np.isfinite(y).all()
