"""Conv import: explicit and automatic pads, strides, dilations, groups, 1-D and 2-D."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import check_model, count, make_model

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


def conv_model(x_shape, w_shape, bias=True, opset=17, **attrs):
    rng = np.random.default_rng(1)
    inits = {"W": rng.standard_normal(w_shape).astype(np.float32)}
    if bias:
        inits["B"] = rng.standard_normal(w_shape[0]).astype(np.float32)
    node = helper.make_node("Conv", ["X", "W", "B"] if bias else ["X", "W"], ["Y"], name="conv", **attrs)
    return make_model([node], {"X": x_shape}, ["Y"], inits, opset=opset)


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 3)])
@pytest.mark.parametrize("dilations", [(1, 1), (2, 1)])
def test_conv2d_auto_pad(auto_pad, strides, dilations):
    model = conv_model([1, 3, 9, 10], [4, 3, 3, 2], auto_pad=auto_pad, strides=strides, dilations=dilations)
    # onnxruntime rejects dilated SAME convolutions; the ONNX reference implements the spec
    dilated_same = auto_pad.startswith("SAME") and dilations != (1, 1)
    graph = check_model(model, oracle="ref" if dilated_same else "ort")
    attrs = graph.op("conv").attrs
    assert attrs.strides == strides and attrs.dilations == dilations
    if auto_pad.startswith("SAME"):
        # output = ceil(input / stride) on every axis
        assert graph.tensor("Y").shape[2:] == (-(-9 // strides[0]), -(-10 // strides[1]))


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 2, 0), (2, 0, 0, 1)])
def test_conv2d_explicit_pads(pads):
    graph = check_model(conv_model([2, 3, 7, 6], [5, 3, 3, 3], pads=pads))
    assert graph.op("conv").attrs.pads == pads


@pytest.mark.parametrize("auto_pad,pads", [("NOTSET", (1, 2)), ("NOTSET", (0, 0)), ("SAME_UPPER", None),
                                           ("SAME_LOWER", None), ("VALID", None)])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (3, 2)])
def test_conv1d(auto_pad, pads, stride, dilation):
    attrs = {"auto_pad": auto_pad, "strides": [stride], "dilations": [dilation]}
    if pads is not None:
        attrs["pads"] = pads
    dilated_same = auto_pad.startswith("SAME") and dilation != 1
    graph = check_model(conv_model([2, 4, 17], [6, 4, 3], **attrs), oracle="ref" if dilated_same else "ort")
    assert graph.op("conv").attrs.spatial_rank == 1


@pytest.mark.parametrize("c,m,group", [(4, 6, 2), (4, 8, 4), (6, 6, 6), (6, 3, 3)])
def test_conv_groups(c, m, group):
    graph = check_model(conv_model([1, c, 6, 6], [m, c // group, 3, 3], group=group, pads=[1, 1, 1, 1]))
    assert graph.op("conv").attrs.group == group


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("give_kernel_shape", [True, False])
def test_conv_bias_and_kernel_shape(bias, give_kernel_shape):
    attrs = {"kernel_shape": [3, 1]} if give_kernel_shape else {}
    graph = check_model(conv_model([1, 2, 5, 5], [3, 2, 3, 1], bias=bias, **attrs))
    assert graph.op("conv").attrs.kernel_shape == (3, 1)
    assert len(graph.op("conv").inputs) == (3 if bias else 2)


@pytest.mark.parametrize("opset", [7, 11, 22])
def test_conv_opsets(opset):
    check_model(conv_model([1, 3, 8, 8], [4, 3, 3, 3], opset=opset, strides=[2, 2], pads=[1, 0, 0, 1]))


def test_conv_runtime_weights():
    node = helper.make_node("Conv", ["X", "W"], ["Y"], pads=[1, 1, 1, 1])
    graph = check_model(make_model([node], {"X": [1, 2, 5, 5], "W": [3, 2, 3, 3]}, ["Y"]))
    assert graph.inputs == ["X", "W"] and count(graph, OpKind.CONV) == 1


@pytest.mark.parametrize("attrs", [{}, {"strides": [2, 1, 2], "pads": [1, 0, 1, 0, 1, 1], "dilations": [1, 2, 1]},
                                   {"auto_pad": "SAME_UPPER", "strides": [2, 2, 1]}, {"group": 2}])
def test_conv3d(attrs):
    w_shape = [4, 2 if attrs.get("group") else 4, 3, 2, 3]
    graph = check_model(conv_model([2, 4, 5, 6, 7], w_shape, **attrs))
    assert graph.op("conv").attrs.spatial_rank == 3


def test_conv4d_is_unsupported():
    with pytest.raises(UnsupportedOpError, match=r"'conv'.*4-D convolution"):
        import_onnx(conv_model([1, 2, 3, 3, 3, 3], [2, 2, 1, 1, 1, 1]))


@pytest.mark.parametrize("attrs,message", [
    ({"kernel_shape": [2, 2]}, r"kernel_shape=\(2, 2\) does not match W.shape=\(4, 3, 3, 3\)"),
    ({"pads": [1, -1, 0, 0]}, r"pads=\(1, -1, 0, 0\) must be non-negative"),
    ({"pads": [1, 1]}, r"pads=\(1, 1\) has 2 values, expected 4"),
    ({"strides": [1]}, r"strides=\(1,\) has 1 values, expected 2"),
    ({"strides": [0, 1]}, r"strides=\(0, 1\) must be >= 1"),
    ({"dilations": [1, 0]}, r"dilations=\(1, 0\) must be >= 1"),
    ({"group": 2}, r"group=2 does not fit X.shape=\(1, 3, 8, 8\)"),
    ({"auto_pad": "SAME"}, r"auto_pad='SAME' is not one of"),
])
def test_conv_bad_attributes(attrs, message):
    with pytest.raises(ModelImportError, match=r"node 'conv' \(Conv, opset 17\): " + message):
        import_onnx(conv_model([1, 3, 8, 8], [4, 3, 3, 3], **attrs))


def test_conv_bad_bias_shape_names_node():
    model = conv_model([1, 3, 8, 8], [4, 3, 3, 3])
    model.graph.initializer[1].CopyFrom(helper.make_tensor("B", 1, [3], [0.0, 0.0, 0.0]))
    with pytest.raises(ModelImportError, match=r"node 'conv' \(Conv.*B.shape=\(3,\), expected \(4,\)"):
        import_onnx(model)
