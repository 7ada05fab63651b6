"""Resize (scales or sizes, coordinate modes, axes, aspect-ratio policies) and Upsample import."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import check_model, make_model

from convc.errors import UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


def f32(v):
    return np.array(v, np.float32)


def i64(v):
    return np.array(v, np.int64)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("coordinates", ["half_pixel", "asymmetric", "pytorch_half_pixel", "align_corners"])
def test_resize_scales(mode, coordinates):
    node = helper.make_node("Resize", ["X", "", "scales"], ["Y"], mode=mode, coordinate_transformation_mode=coordinates)
    graph = check_model(make_model([node], {"X": [1, 2, 4, 5]}, ["Y"], {"scales": f32([1, 1, 2, 3])}, opset=13))
    assert graph.tensor("Y").shape == (1, 2, 8, 15)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_sizes(mode):
    node = helper.make_node("Resize", ["X", "", "", "sizes"], ["Y"], mode=mode)
    graph = check_model(make_model([node], {"X": [1, 2, 4, 5]}, ["Y"], {"sizes": i64([1, 2, 7, 3])}, opset=13))
    assert graph.tensor("Y").shape == (1, 2, 7, 3)


@pytest.mark.parametrize("policy,expected", [("stretch", (1, 2, 8, 8)), ("not_larger", (1, 2, 6, 8)),
                                             ("not_smaller", (1, 2, 8, 11))])
def test_resize_18_axes_and_aspect_ratio(policy, expected):
    node = helper.make_node("Resize", ["X", "", "", "sizes"], ["Y"], axes=[2, 3], keep_aspect_ratio_policy=policy)
    graph = import_onnx(make_model([node], {"X": [1, 2, 3, 4]}, ["Y"], {"sizes": i64([8, 8])}, opset=18))
    assert graph.tensor("Y").shape == expected


@pytest.mark.parametrize("opset,inputs,attrs", [
    (7, ["X"], {"scales": [1.0, 1.0, 2.0, 2.0]}),
    (9, ["X", "scales"], {}),
])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample(opset, inputs, attrs, mode):
    node = helper.make_node("Upsample", inputs, ["Y"], mode=mode, **attrs)
    inits = {"scales": f32([1, 1, 2, 2])} if "scales" in inputs else {}
    graph = check_model(make_model([node], {"X": [1, 2, 3, 4]}, ["Y"], inits, opset=opset))
    assert [op.kind for op in graph.ops()] == [OpKind.RESIZE] and graph.tensor("Y").shape == (1, 2, 6, 8)


def test_resize_10_is_asymmetric():
    node = helper.make_node("Resize", ["X", "scales"], ["Y"], mode="nearest")
    graph = check_model(make_model([node], {"X": [1, 2, 3, 4]}, ["Y"], {"scales": f32([1, 1, 2, 1.5])}, opset=10))
    assert graph.ops()[0].attrs.coordinate_transformation_mode == "asymmetric"


def test_resize_with_run_time_scales_is_unsupported():
    node = helper.make_node("Resize", ["X", "", "scales"], ["Y"], name="up")
    with pytest.raises(UnsupportedOpError, match=r"'up': Resize .*must be a constant") as info:
        import_onnx(make_model([node], {"X": [1, 2, 3, 4], "scales": [4]}, ["Y"], opset=13))
    assert info.value.constant_inputs == ["scales"]
