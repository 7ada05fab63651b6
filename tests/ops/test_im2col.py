"""Im2Col: compiled vs numpy reference, and Im2Col + a 1x1 conv equals the conv it came from."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, check_op

from convc.ops import OpKind, op_def
from convc.ops.conv import ConvAttrs
from convc.ops.im2col import Im2ColAttrs

GEOMETRIES = [
    Im2ColAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),
    Im2ColAttrs((3, 2), (2, 1), (0, 1, 1, 0), (1, 1)),
    Im2ColAttrs((3, 3), (1, 2), (2, 2, 2, 2), (2, 2)),
    Im2ColAttrs((1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),
    Im2ColAttrs((3,), (1,), (2, 0), (1,)),
    Im2ColAttrs((4,), (3,), (1, 2), (2,)),
]


@pytest.mark.parametrize("a", GEOMETRIES, ids=lambda a: f"k{a.kernel_shape}s{a.strides}p{a.pads}d{a.dilations}")
def test_im2col_compiled_matches_reference(rng, a):
    x = rng.standard_normal((2, 3) + (9,) * a.spatial_rank).astype(np.float32)
    # onnx has no Im2Col op: the check against onnx.reference is the conv identity test below
    got = check_op(OpKind.IM2COL, a, [x], onnx_check=False, rtol=1e-6)
    assert got.shape[1] == 3 * a.taps


@pytest.mark.parametrize("group", [1, 3])
@pytest.mark.parametrize("a", GEOMETRIES, ids=lambda a: f"k{a.kernel_shape}s{a.strides}p{a.pads}d{a.dilations}")
def test_im2col_then_pointwise_conv_is_the_conv(rng, a, group):
    r = a.spatial_rank
    x = rng.standard_normal((2, 6) + (9,) * r).astype(np.float32)
    w = rng.standard_normal((6, 6 // group) + a.kernel_shape).astype(np.float32)
    conv = ConvAttrs(a.kernel_shape, a.strides, a.pads, a.dilations, group)
    (expected,) = op_def(OpKind.CONV).reference(conv, x, w)
    (col,) = op_def(OpKind.IM2COL).reference(a, x)
    pointwise = ConvAttrs((1,) * r, (1,) * r, (0,) * (2 * r), (1,) * r, group)
    (got,) = op_def(OpKind.CONV).reference(pointwise, col, w.reshape((6, -1) + (1,) * r))
    assert_close(got, expected, 1e-5, "Im2Col + 1x1 conv vs conv")
