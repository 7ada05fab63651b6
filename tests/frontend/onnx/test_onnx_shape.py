"""Flatten, Reshape and Concat on run-time tensors."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import INT64, check_model, make_model

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


@pytest.mark.parametrize("axis,expected", [(0, 0), (1, 1), (2, 2), (4, 4), (-1, 3), (-3, 1), (-4, 0)])
def test_flatten(axis, expected):
    node = helper.make_node("Flatten", ["X"], ["Y"], name="flat", axis=axis)
    graph = check_model(make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], opset=13))
    assert graph.op("flat").attrs.axis == expected


def test_flatten_axis_out_of_range():
    node = helper.make_node("Flatten", ["X"], ["Y"], name="flat", axis=5)
    with pytest.raises(ModelImportError, match=r"node 'flat' \(Flatten, opset 13\): axis=5 is out of range"):
        import_onnx(make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], opset=13))


RESHAPES = [([6, -1], 0, (6, 20)), ([0, 0, -1], 0, (2, 3, 20)), ([-1], 0, (120,)), ([0, 12, -1, 1], 0, (2, 12, 5, 1)),
            ([2, 3, 20], 1, (2, 3, 20)), ([2, -1, 5], 1, (2, 12, 5))]


# allowzero exists from opset 14 on
@pytest.mark.parametrize("shape,allowzero,expected,opset", [
    (shape, allowzero, expected, opset) for shape, allowzero, expected in RESHAPES for opset in (7, 13, 14, 21)
    if opset >= 14 or not allowzero])
def test_reshape(shape, allowzero, expected, opset):
    attrs = {"allowzero": allowzero} if opset >= 14 else {}
    node = helper.make_node("Reshape", ["X", "shape"], ["Y"], name="reshape", **attrs)
    model = make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], {"shape": np.array(shape, np.int64)}, opset=opset)
    graph = check_model(model)
    assert graph.op("reshape").attrs.shape == expected


def test_reshape_allowzero_keeps_a_zero_dimension():
    # allowzero=1: 0 is a real zero-size dimension, not a copy of the input's
    node = helper.make_node("Reshape", ["C", "shape"], ["Y"], allowzero=1)
    model = make_model([node], {}, ["Y"], {"C": np.zeros((0, 4), np.float32), "shape": np.array([4, 0], np.int64)},
                       opset=14)
    graph = import_onnx(model)
    assert graph.tensor("Y").shape == (4, 0) and not graph.ops()


@pytest.mark.parametrize("shape,message", [
    ([7, -1], r"cannot reshape input of shape \(2, 3, 4, 5\) \(120 elements\) into shape=\(7, -1\)"),
    ([-1, -1], r"at most one -1"), ([0, 0, 0, 0, 0], r"the 0 at index 4 copies a dimension"),
    ([5, 5], r"resolved to \(5, 5\)"),
])
def test_reshape_bad_shape(shape, message):
    node = helper.make_node("Reshape", ["X", "shape"], ["Y"], name="reshape")
    model = make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], {"shape": np.array(shape, np.int64)}, opset=13)
    with pytest.raises(ModelImportError, match=r"node 'reshape' \(Reshape, opset 13\): .*" + message):
        import_onnx(model)


def test_reshape_with_runtime_shape_is_unsupported():
    node = helper.make_node("Reshape", ["X", "S"], ["Y"], name="reshape")
    model = make_model([node], {"X": [2, 3]}, ["Y"], opset=13)
    model.graph.input.append(helper.make_tensor_value_info("S", INT64, [2]))
    with pytest.raises(ModelImportError, match=r"graph input 'S' has element type INT64"):
        import_onnx(model)


# negative axes exist from opset 11 on
@pytest.mark.parametrize("axis,expected,opset", [
    (axis, expected, opset) for axis, expected in [(0, 0), (1, 1), (2, 2), (-1, 2), (-3, 0)] for opset in (7, 11, 13)
    if axis >= 0 or opset >= 11])
def test_concat(axis, expected, opset):
    shapes = [[2, 3, 4], [2, 3, 4], [2, 3, 4]]
    node = helper.make_node("Concat", ["A", "B", "C"], ["Y"], name="cat", axis=axis)
    graph = check_model(make_model([node], dict(zip("ABC", shapes)), ["Y"], opset=opset))
    assert graph.op("cat").attrs.axis == expected


def test_concat_with_a_constant_input():
    node = helper.make_node("Concat", ["A", "K"], ["Y"], name="cat", axis=1)
    k = np.arange(6, dtype=np.float32).reshape(2, 3)
    graph = check_model(make_model([node], {"A": [2, 2]}, ["Y"], {"K": k}))
    assert graph.op("cat").kind is OpKind.CONCAT and graph.tensor("K").data is not None


def test_concat_of_mismatched_shapes_names_node():
    node = helper.make_node("Concat", ["A", "B"], ["Y"], name="cat", axis=1)
    with pytest.raises(ModelImportError, match=r"node 'cat' \(Concat.*all other dimensions must match"):
        import_onnx(make_model([node], {"A": [2, 3], "B": [3, 3]}, ["Y"]))


def test_unsupported_runtime_gather_is_reported():
    node = helper.make_node("Gather", ["X", "idx"], ["Y"], name="gather")
    model = make_model([node], {"X": [4, 3]}, ["Y"], {"idx": np.array([0, 2], np.int64)})
    with pytest.raises(UnsupportedOpError, match=r"'gather': Gather .*only supported on constants.*'X'"):
        import_onnx(model)
