"""ConvTranspose import: output_shape and auto_pad resolved to pads, output_padding, groups, 1-D/2-D/3-D."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import check_model, make_model

from convc.errors import ModelImportError
from convc.frontend.onnx import import_onnx


def ct_model(x_shape, w_shape, bias=True, opset=17, **attrs):
    rng = np.random.default_rng(3)
    inits = {"W": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        inits["B"] = rng.standard_normal(w_shape[1] * attrs.get("group", 1)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["X", "W", "B"] if bias else ["X", "W"], ["Y"], name="ct", **attrs)
    return make_model([node], {"X": x_shape}, ["Y"], inits, opset=opset)


@pytest.mark.parametrize("attrs,pads,out", [
    ({}, (0, 0, 0, 0), (7, 8)),
    ({"strides": [2, 2]}, (0, 0, 0, 0), (11, 13)),
    ({"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, (1, 1, 1, 1), (10, 12)),
    ({"strides": [3, 2], "output_shape": [10, 8]}, (3, 3, 2, 2), (10, 8)),
    ({"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (0, 0, 1, 1), (10, 12)),   # out = in * stride
    ({"strides": [2, 2], "auto_pad": "SAME_LOWER"}, (1, 1, 0, 0), (10, 12)),
    ({"strides": [2, 2], "auto_pad": "VALID"}, (0, 0, 0, 0), (11, 13)),
    ({"dilations": [2, 2], "pads": [0, 1, 2, 0]}, (0, 1, 2, 0), (7, 9)),
], ids=["plain", "strided", "pads-outpad", "output-shape", "same-upper", "same-lower", "valid", "dilated"])
def test_conv_transpose_2d(attrs, pads, out):
    graph = check_model(ct_model([1, 3, 5, 6], [3, 2, 3, 3], **attrs))
    assert graph.op("ct").attrs.pads == pads and graph.tensor("Y").shape[2:] == out


def test_output_shape_beyond_the_natural_size_gives_negative_pads():
    """ONNX's own test: 3x3 input, stride (3, 2), output_shape (10, 8): one more row and column than the taps reach."""
    graph = check_model(ct_model([1, 1, 3, 3], [1, 2, 3, 3], strides=[3, 2], output_shape=[10, 8]), oracle="ref")
    assert graph.op("ct").attrs.pads == (0, 0, -1, -1)


@pytest.mark.parametrize("group,c,m", [(2, 4, 6), (4, 4, 4)])
def test_conv_transpose_groups(group, c, m):
    graph = check_model(ct_model([2, c, 4, 5], [c, m // group, 3, 3], group=group, strides=[2, 2], pads=[1, 1, 0, 0]))
    assert graph.tensor("Y").shape[1] == m


@pytest.mark.parametrize("x_shape,w_shape,attrs", [
    ([2, 3, 7], [3, 4, 3], {"strides": [2], "pads": [1, 0], "output_padding": [1]}),
    ([1, 2, 3, 4, 3], [2, 3, 2, 3, 2], {"strides": [2, 1, 2]}),
], ids=["1d", "3d"])
def test_conv_transpose_1d_3d(x_shape, w_shape, attrs):
    check_model(ct_model(x_shape, w_shape, **attrs))


@pytest.mark.parametrize("opset", [7, 11, 22])
def test_conv_transpose_opsets(opset):
    check_model(ct_model([1, 3, 4, 4], [3, 2, 4, 4], opset=opset, strides=[2, 2], pads=[1, 1, 1, 1], bias=False))


@pytest.mark.parametrize("attrs,message", [
    ({"kernel_shape": [2, 2]}, r"kernel_shape=\(2, 2\) does not match W.shape"),
    ({"group": 2}, r"group=2 does not fit"),
    ({"output_padding": [1]}, r"output_padding=\(1,\) has 1 values, expected 2"),
    ({"strides": [0, 1]}, r"strides=\(0, 1\) must be >= 1"),
])
def test_conv_transpose_bad_attributes(attrs, message):
    with pytest.raises(ModelImportError, match=r"node 'ct' \(ConvTranspose, opset 17\): " + message):
        import_onnx(ct_model([1, 3, 5, 6], [3, 2, 3, 3], **attrs))
