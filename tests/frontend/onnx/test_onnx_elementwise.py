"""Activations, broadcasting Add/Mul, variadic Sum, Identity and Dropout."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import INT64, check_model, count, make_model

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


@pytest.mark.parametrize("op_type,kind,attrs", [
    ("Relu", OpKind.RELU, {}), ("Sigmoid", OpKind.SIGMOID, {}), ("Tanh", OpKind.TANH, {}),
    ("LeakyRelu", OpKind.LEAKY_RELU, {}), ("LeakyRelu", OpKind.LEAKY_RELU, {"alpha": 0.2}),
    ("Identity", OpKind.IDENTITY, {}),
])
@pytest.mark.parametrize("opset", [7, 13, 17])
def test_unary(op_type, kind, attrs, opset):
    node = helper.make_node(op_type, ["X"], ["Y"], name="act", **attrs)
    graph = check_model(make_model([node], {"X": [2, 3, 4]}, ["Y"], opset=opset))
    assert graph.op("act").kind is kind
    if "alpha" in attrs:
        assert graph.op("act").attrs.alpha == pytest.approx(attrs["alpha"])


@pytest.mark.parametrize("op_type,kind", [("Add", OpKind.ADD), ("Mul", OpKind.MUL)])
@pytest.mark.parametrize("x_shape,b_shape", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 1)),
                                             ((2, 3, 4), ()), ((1, 3, 1), (2, 1, 4))])
def test_broadcast_binary(op_type, kind, x_shape, b_shape):
    b = np.random.default_rng(5).standard_normal(b_shape).astype(np.float32)
    node = helper.make_node(op_type, ["X", "B"], ["Y"])
    graph = check_model(make_model([node], {"X": x_shape}, ["Y"], {"B": b}))
    assert op_kinds_are(graph, [kind])


def test_binary_of_two_runtime_inputs():
    node = helper.make_node("Mul", ["X", "Z"], ["Y"])
    check_model(make_model([node], {"X": [3, 1], "Z": [1, 4]}, ["Y"], opset=7))


@pytest.mark.parametrize("n_inputs", [1, 2, 3, 4])
@pytest.mark.parametrize("opset", [7, 8, 13])
def test_sum_variadic(n_inputs, opset):
    names = [f"X{i}" for i in range(n_inputs)]
    node = helper.make_node("Sum", names, ["Y"])
    # Sum broadcasts from opset 8 on
    shapes = [[2, 3, 4], [3, 4], [1, 4], [2, 1, 1]][:n_inputs] if opset >= 8 else [[2, 3, 4]] * n_inputs
    graph = check_model(make_model([node], dict(zip(names, shapes)), ["Y"], opset=opset))
    assert len(graph.ops()[0].inputs) == n_inputs


def test_sum6_does_not_broadcast():
    node = helper.make_node("Sum", ["A", "B"], ["Y"], name="sum")
    with pytest.raises(ModelImportError, match=r"node 'sum' \(Sum, opset 7\): Sum-6 does not broadcast"):
        import_onnx(make_model([node], {"A": [2, 3], "B": [3]}, ["Y"], opset=7))


def test_integer_add_on_runtime_path_is_unsupported():
    # an int64 tensor can only come from a constant, so route a float input through Cast... which only folds:
    # the Cast is reported, the Add after it is skipped (its input is unknown)
    nodes = [helper.make_node("Cast", ["X"], ["I"], to=INT64, name="cast"),
             helper.make_node("Add", ["I", "I"], ["Y"], name="add")]
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(make_model(nodes, {"X": [2]}, {"Y": INT64}))
    assert [n[0] for n in info.value.nodes] == ["cast"]


def dropout_model(opset, ratio=None, training=None, mask_used=False, ratio_attr=None):
    inits, inputs = {}, ["X"]
    if ratio is not None or training is not None:
        inputs.append("ratio" if ratio is not None else "")
        if ratio is not None:
            inits["ratio"] = np.array(ratio, np.float32)
    if training is not None:
        inputs.append("training")
        inits["training"] = np.array(training)
    attrs = {"ratio": ratio_attr} if ratio_attr is not None else {}
    node = helper.make_node("Dropout", inputs, ["Y", "mask"] if mask_used else ["Y"], name="drop", **attrs)
    outputs = {"Y": 1, "mask": 9} if mask_used else ["Y"]
    return make_model([node], {"X": [2, 5]}, outputs, inits, opset=opset)


@pytest.mark.parametrize("opset,ratio_attr,ratio,expected", [
    (7, None, None, 0.5), (7, 0.3, None, 0.3), (10, 0.25, None, 0.25),
    (12, None, None, 0.5), (12, None, 0.2, 0.2), (13, None, 0.7, 0.7), (22, None, 0.1, 0.1),
])
def test_dropout_ratio(opset, ratio_attr, ratio, expected):
    graph = check_model(dropout_model(opset, ratio=ratio, ratio_attr=ratio_attr))
    op = graph.op("drop")
    assert op.kind is OpKind.DROPOUT and op.attrs.ratio == pytest.approx(expected)


def test_dropout_training_mode_false_imports():
    graph = check_model(dropout_model(13, ratio=0.4, training=False))
    assert count(graph, OpKind.DROPOUT) == 1


@pytest.mark.parametrize("model,reason", [
    (dropout_model(13, ratio=0.4, training=True), "training_mode=True"),
    (dropout_model(13, mask_used=True), "'mask' is used"),
    (dropout_model(7, mask_used=True), "'mask' is used"),
])
def test_dropout_unsupported(model, reason):
    with pytest.raises(UnsupportedOpError, match=r"node 'drop': Dropout \(opset \d+\): .*" + reason):
        import_onnx(model)


def op_kinds_are(graph, kinds) -> bool:
    return [op.kind for op in graph.ops()] == kinds
