"""BatchNormalization (inference form) on rank 2 to 5 inputs, and LRN."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check_op

from convc.ops import OpKind
from convc.ops.norm import BatchNormAttrs, LrnAttrs


def bn_inputs(rng: np.random.Generator, shape: tuple[int, ...]) -> list[np.ndarray]:
    c = shape[1]
    return [rng.standard_normal(shape).astype(np.float32),
            rng.uniform(0.5, 2.0, c).astype(np.float32),   # scale
            rng.standard_normal(c).astype(np.float32),     # B
            rng.standard_normal(c).astype(np.float32),     # mean
            rng.uniform(0.1, 3.0, c).astype(np.float32)]   # var


@pytest.mark.parametrize("epsilon", [1e-5, 1e-3, 0.1])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 7), (2, 3, 5, 7), (1, 2, 3, 4, 5)], ids=lambda s: f"rank{len(s)}")
def test_batch_norm(rng, shape, epsilon):
    check_op(OpKind.BATCH_NORM, BatchNormAttrs(epsilon), bn_inputs(rng, shape), const=frozenset({1, 2, 3, 4}))


def test_batch_norm_statistics_as_inputs(rng):
    check_op(OpKind.BATCH_NORM, BatchNormAttrs(1e-5, 0.99), bn_inputs(rng, (3, 4, 5, 6)))


def test_batch_norm_zero_variance_uses_epsilon(rng):
    """var = 0: the output is (x - mean) * scale / sqrt(eps) + B, finite."""
    x, scale, bias, mean, var = bn_inputs(rng, (2, 3, 4, 4))
    y = check_op(OpKind.BATCH_NORM, BatchNormAttrs(1e-2), [x, scale, bias, mean, np.zeros_like(var)],
                 const=frozenset({1, 2, 3, 4}))
    assert np.isfinite(y).all()


@pytest.mark.parametrize("attrs", [LrnAttrs(3), LrnAttrs(5), LrnAttrs(5, 2e-4, 0.5, 2.0), LrnAttrs(1),
                                   LrnAttrs(9, 1e-3, 0.9, 1.5)], ids=["size3", "size5", "attrs", "size1", "wider"])
@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (1, 8, 3, 3)], ids=["c5", "c8"])
def test_lrn(rng, attrs, shape):
    check_op(OpKind.LRN, attrs, [rng.standard_normal(shape).astype(np.float32)])


@pytest.mark.parametrize("size", [2, 4])
def test_lrn_even_size(rng, size):
    """An even window reaches (size-1)//2 channels back and size//2 forward, as the ONNX spec writes it;
    onnxruntime rejects even sizes, so only the numpy reference checks it."""
    y = check_op(OpKind.LRN, LrnAttrs(size), [rng.standard_normal((1, 6, 2, 3)).astype(np.float32)], onnx_check=False)
    assert y.shape == (1, 6, 2, 3)
