"""MaxPool / AveragePool (1-D, 2-D and 3-D, pads, dilations, ceil_mode, count_include_pad), LpPool and global pools."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import check_op

from convc.ops import OpKind
from convc.ops.pool import GlobalPoolAttrs, LpPoolAttrs, PoolAttrs

WINDOWS_2D = [((2, 2), (2, 2)), ((3, 3), (1, 1)), ((3, 3), (2, 2)), ((2, 3), (1, 2))]
PADS_2D = {"nopad": (0, 0, 0, 0), "sym": (1, 1, 1, 1), "asym": (0, 1, 1, 0), "end": (0, 0, 1, 1)}
# 8 and 9 make ceil_mode add a last window that overhangs the padded input for several windows above
SPATIAL_2D = (8, 9)


def window_ids(w) -> str:
    (kh, kw), (sh, sw) = w
    return f"k{kh}x{kw}-s{sh}x{sw}"


def pool2d(kernel, strides, pads, dilations=(1, 1), ceil_mode=False, count_include_pad=False) -> PoolAttrs:
    return PoolAttrs(kernel, strides, pads, dilations, ceil_mode, count_include_pad)


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("pads", PADS_2D.values(), ids=PADS_2D.keys())
@pytest.mark.parametrize("window", WINDOWS_2D, ids=window_ids)
def test_max_pool_2d(rng, window, pads, ceil_mode):
    x = rng.standard_normal((2, 3) + SPATIAL_2D).astype(np.float32)
    check_op(OpKind.MAX_POOL, pool2d(*window, pads, ceil_mode=ceil_mode), [x])


@pytest.mark.parametrize("count_include_pad", [False, True], ids=["exclude-pad", "include-pad"])
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("pads", list(PADS_2D.values())[:3], ids=list(PADS_2D)[:3])
@pytest.mark.parametrize("window", WINDOWS_2D[1:], ids=window_ids)
def test_average_pool_2d(rng, window, pads, ceil_mode, count_include_pad):
    x = rng.standard_normal((1, 3) + SPATIAL_2D).astype(np.float32)
    check_op(OpKind.AVERAGE_POOL, pool2d(*window, pads, ceil_mode=ceil_mode, count_include_pad=count_include_pad),
             [x])


@pytest.mark.parametrize("kernel,pads", [((3, 3), (0, 1, 1, 0)), ((4, 4), (1, 1, 1, 1)), ((2, 2), (0, 0, 0, 0))])
@pytest.mark.parametrize("kind,count_include_pad", [(OpKind.MAX_POOL, False), (OpKind.AVERAGE_POOL, False),
                                                    (OpKind.AVERAGE_POOL, True)], ids=["max", "avg", "avg-include-pad"])
def test_pool_stride3_ceil_overhang(rng, kind, count_include_pad, kernel, pads):
    """Stride 3 with ceil_mode: the last window can reach 2 taps past the end padding."""
    x = rng.standard_normal((1, 2) + SPATIAL_2D).astype(np.float32)
    check_op(kind, pool2d(kernel, (3, 3), pads, ceil_mode=True, count_include_pad=count_include_pad), [x])


def test_average_pool_ceil_overhang_counts_pads_not_overhang():
    """1-D, 4 ones, k=3, s=2, pads (1, 1), ceil: windows start at -1, 1, 3; the last covers x[3], the end pad
    and one overhang tap past it. count_include_pad counts the pad (2 taps), never the overhang."""
    x = np.ones((1, 1, 4), dtype=np.float32)
    y = check_op(OpKind.AVERAGE_POOL, PoolAttrs((3,), (2,), (1, 1), (1,), True, True), [x])
    np.testing.assert_allclose(y.ravel(), [2 / 3, 1.0, 1 / 2], rtol=1e-6)
    y = check_op(OpKind.AVERAGE_POOL, PoolAttrs((3,), (2,), (1, 1), (1,), True, False), [x])
    np.testing.assert_allclose(y.ravel(), [1.0, 1.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("kernel,strides,pads,dilations", [
    ((2, 2), (1, 1), (0, 0, 0, 0), (2, 2)),
    ((3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),
    ((3, 2), (2, 1), (1, 0, 2, 1), (2, 2)),
    ((2, 3), (2, 2), (0, 0, 0, 0), (1, 2)),
])
@pytest.mark.parametrize("kind", [OpKind.MAX_POOL, OpKind.AVERAGE_POOL])
def test_pool_2d_dilations(rng, kind, kernel, strides, pads, dilations, ceil_mode):
    """ONNX AveragePool has dilations from opset 19; onnx.reference implements them (checked by check_op)."""
    x = rng.standard_normal((1, 2) + SPATIAL_2D).astype(np.float32)
    check_op(kind, pool2d(kernel, strides, pads, dilations, ceil_mode, kind is OpKind.AVERAGE_POOL), [x])


@pytest.mark.parametrize("kernel,stride,pads,dilation,ceil_mode", [
    (2, 1, (0, 0), 1, False),
    (2, 2, (0, 1), 1, True),
    (3, 1, (1, 1), 1, False),
    (3, 2, (1, 1), 1, False),
    (3, 2, (1, 1), 1, True),
    (3, 2, (0, 2), 1, True),
    (3, 1, (2, 1), 2, False),
    (2, 2, (1, 0), 2, True),
])
@pytest.mark.parametrize("kind", [OpKind.MAX_POOL, OpKind.AVERAGE_POOL])
def test_pool_1d(rng, kind, kernel, stride, pads, dilation, ceil_mode):
    x = rng.standard_normal((2, 3, 10)).astype(np.float32)
    check_op(kind, PoolAttrs((kernel,), (stride,), pads, (dilation,), ceil_mode, bool(pads[0])), [x])


@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (2, 0, 0, 2)], ids=["sym", "asym"])
def test_max_pool_all_negative_padding_never_wins(rng, pads, ceil_mode):
    x = (-1.0 - rng.random((1, 2) + SPATIAL_2D)).astype(np.float32)
    y = check_op(OpKind.MAX_POOL, pool2d((3, 3), (2, 2), pads, ceil_mode=ceil_mode), [x])
    assert np.all(y <= -1.0)


def test_max_pool_propagates_nan():
    x = np.arange(2 * 16, dtype=np.float32).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = np.nan
    # ONNX leaves NaN in MaxPool unspecified: onnx.reference and onnxruntime keep or drop it depending on
    # where it sits in the window. convc propagates it, like numpy's maximum (and its own reference).
    y = check_op(OpKind.MAX_POOL, pool2d((2, 2), (2, 2), (0, 0, 0, 0)), [x], onnx_check=False)
    assert np.isnan(y[0, 0, 0, 0]) and np.isnan(y).sum() == 1


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 5, 7), (1, 2, 3, 4, 5), (3, 4, 1, 1)])
@pytest.mark.parametrize("kind", [OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL])
def test_global_pool(rng, kind, shape):
    check_op(kind, GlobalPoolAttrs(), [rng.standard_normal(shape).astype(np.float32)])


def test_global_max_pool_all_negative(rng):
    x = (-1.0 - rng.random((2, 3, 5, 7))).astype(np.float32)
    y = check_op(OpKind.GLOBAL_MAX_POOL, GlobalPoolAttrs(), [x])
    np.testing.assert_array_equal(y, x.max(axis=(2, 3), keepdims=True))


def test_global_average_pool_large_plane(rng):
    """A 64x64 plane sums 4096 values: a naive float32 accumulation would drift past the tolerance."""
    x = (10.0 + rng.standard_normal((1, 2, 64, 64))).astype(np.float32)
    check_op(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [x])


# --- 3-D pools and LpPool (the rank-generic kernel, codegen/kernels/pool_nd.py) ---------------------
@pytest.mark.parametrize("attrs", [
    PoolAttrs((2, 2, 2), (2, 2, 2), (0,) * 6, (1, 1, 1)),
    PoolAttrs((3, 3, 3), (1, 2, 1), (1, 0, 1, 1, 1, 0), (1, 1, 2)),
    PoolAttrs((3, 3, 2), (2, 2, 2), (1, 1, 1, 1, 1, 1), (1, 1, 1), ceil_mode=True),
    PoolAttrs((3, 2, 3), (2, 1, 2), (1, 0, 1, 0, 1, 1), (1, 1, 1), count_include_pad=True),
], ids=["k2s2", "dilated-asym", "ceil", "count-pads"])
@pytest.mark.parametrize("kind", [OpKind.MAX_POOL, OpKind.AVERAGE_POOL])
def test_pool_3d(rng, kind, attrs):
    check_op(kind, attrs, [rng.standard_normal((2, 3, 5, 6, 7)).astype(np.float32)])


@pytest.mark.parametrize("kind", [OpKind.MAX_POOL, OpKind.AVERAGE_POOL])
def test_pool_2d_window_too_big_to_unroll(rng, kind):
    """A 12 x 15 dilated window (PyTorch's MaxPool2d conformance model has 60 x 80): loops, not unrolled taps."""
    attrs = pool2d((12, 15), (3, 3), (2, 4, 2, 4), (2, 2))
    check_op(kind, attrs, [rng.standard_normal((1, 2, 40, 50)).astype(np.float32)])


@pytest.mark.parametrize("p", [1, 2, 3])
@pytest.mark.parametrize("attrs", [
    LpPoolAttrs((3, 3), (1, 1), (0, 0, 0, 0), (1, 1)),
    LpPoolAttrs((3, 2), (2, 1), (1, 0, 1, 1), (1, 2)),
    LpPoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), ceil_mode=True),
], ids=["k3", "pads-dilated", "ceil"])
def test_lp_pool_2d(rng, attrs, p):
    attrs = LpPoolAttrs(attrs.kernel_shape, attrs.strides, attrs.pads, attrs.dilations, attrs.ceil_mode, p)
    check_op(OpKind.LP_POOL, attrs, [rng.standard_normal((2, 3, 7, 8)).astype(np.float32)])


@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 11), LpPoolAttrs((3,), (2,), (1, 1), (1,))),
    ((1, 2, 4, 5, 6), LpPoolAttrs((2, 2, 2), (1, 2, 2), (0, 1, 0, 1, 0, 1), (1, 1, 1))),
], ids=["1d", "3d"])
def test_lp_pool_1d_3d(rng, shape, attrs):
    check_op(OpKind.LP_POOL, attrs, [rng.standard_normal(shape).astype(np.float32)])
