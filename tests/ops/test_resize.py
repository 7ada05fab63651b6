"""Resize: nearest (every rounding), linear and cubic, each coordinate transformation, up and down, sizes
that are not a multiple of the input, antialiasing, and tf_crop_and_resize's extrapolation."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import OnnxNode, check_op

from convc.ops import OpKind
from convc.ops.resize import ResizeAttrs, axis_taps

X_SHAPE = (2, 3, 5, 6)


def resize(rng, scales, mode="nearest", roi=None, **attrs) -> np.ndarray:
    """Resize X_SHAPE by ``scales`` (output floor(in * scale)); compare with numpy and onnx.reference."""
    scales = tuple(float(np.float32(s)) for s in scales)  # what the importer reads from the float32 tensor
    shape = tuple(int(s * d) for s, d in zip(scales, X_SHAPE))
    a = ResizeAttrs(shape, scales, mode, roi=tuple(roi or ()), **attrs)
    onnx_attrs = {"mode": mode, "coordinate_transformation_mode": a.coordinate_transformation_mode,
                  "cubic_coeff_a": a.cubic_coeff_a, "exclude_outside": int(a.exclude_outside),
                  "extrapolation_value": a.extrapolation_value, "antialias": int(a.antialias)}
    if a.nearest_mode != "simple":
        onnx_attrs["nearest_mode"] = a.nearest_mode
    roi_array = np.array(roi if roi else [], np.float32)
    node = OnnxNode("Resize", onnx_attrs, (roi_array, np.array(scales, np.float32)))
    return check_op(OpKind.RESIZE, a, [rng.standard_normal(X_SHAPE).astype(np.float32)], onnx_node=node)


SCALES = [(1, 1, 2, 2), (1, 1, 2, 3), (1, 1, 0.6, 0.5), (1, 1, 1.7, 0.8)]
SCALE_IDS = ["x2", "x2x3", "down", "mixed"]
COORDINATES = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric"]


@pytest.mark.parametrize("scales", SCALES, ids=SCALE_IDS)
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize("coordinates", ["half_pixel", "asymmetric", "align_corners"])
def test_nearest(rng, scales, nearest_mode, coordinates):
    resize(rng, scales, "nearest", nearest_mode=nearest_mode, coordinate_transformation_mode=coordinates)


@pytest.mark.parametrize("scales", SCALES, ids=SCALE_IDS)
@pytest.mark.parametrize("coordinates", COORDINATES)
@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_linear_and_cubic(rng, scales, coordinates, mode):
    resize(rng, scales, mode, coordinate_transformation_mode=coordinates)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("exclude_outside", [False, True])
def test_antialias_downsampling(rng, mode, exclude_outside):
    resize(rng, (1, 1, 0.6, 0.5), mode, antialias=True, exclude_outside=exclude_outside)


def test_cubic_coefficient_and_exclude_outside(rng):
    resize(rng, (1, 1, 2, 1.5), "cubic", cubic_coeff_a=-0.5, exclude_outside=True)


def test_tf_crop_and_resize_extrapolates(rng):
    y = resize(rng, (1, 1, 2, 1.5), "linear", coordinate_transformation_mode="tf_crop_and_resize",
               roi=(0, 0, -0.2, 0.3, 1, 1, 0.9, 1.4), extrapolation_value=7.0)
    assert (y == 7.0).any()


def test_nearest_needs_one_tap_per_axis():
    """Nearest keeps only the tap that weighs 1: the kernel reads one input element per output element."""
    a = ResizeAttrs((1, 1, 10, 12), (1.0, 1.0, 2.0, 2.0), "nearest")
    taps = axis_taps(a, 2, 5)
    assert taps.index.shape == (10, 1) and np.all(taps.weight == 1.0)
    assert axis_taps(a, 0, 1).is_identity
