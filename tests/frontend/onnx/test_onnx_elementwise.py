"""Activations, broadcasting arithmetic (opset-6 broadcast attributes too), variadic Sum/Max/Min, Clip, Cast,
Identity and Dropout."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_import_helpers import INT64, assert_close, check_model, count, make_model

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind
from convc.reference import run_reference


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


@pytest.mark.parametrize("training", [False, True])
def test_dropout_training_mode_imports(training):
    """Either mode is one Dropout op: the training step drops, inference does not."""
    graph = import_onnx(dropout_model(13, ratio=0.4, training=training))
    assert count(graph, OpKind.DROPOUT) == 1 and graph.op("drop").attrs.ratio == pytest.approx(0.4)


@pytest.mark.parametrize("model,reason", [
    (dropout_model(13, ratio=0.4, training=True, mask_used=True), "training_mode=True with its mask output used"),
])
def test_dropout_unsupported(model, reason):
    with pytest.raises(UnsupportedOpError, match=r"node 'drop': Dropout \(opset \d+\): .*" + reason):
        import_onnx(model)


@pytest.mark.parametrize("opset,dtype", [(13, np.bool_), (10, np.bool_)])
def test_dropout_mask_is_a_constant_at_inference(opset, dtype):
    """Nothing is dropped at inference: the mask output is all true, folded to a constant."""
    graph = import_onnx(dropout_model(opset, mask_used=True))
    mask = graph.tensor("mask")
    assert mask.data is not None and mask.data.dtype == dtype and mask.data.all() and mask.shape == (2, 5)


def op_kinds_are(graph, kinds) -> bool:
    return [op.kind for op in graph.ops()] == kinds


# --- activations and arithmetic added for ONNX coverage ------------------------------------------
@pytest.mark.parametrize("op_type,kind,attrs", [
    ("Elu", OpKind.ELU, {}), ("Elu", OpKind.ELU, {"alpha": 0.5}),
    ("Selu", OpKind.SELU, {}), ("Selu", OpKind.SELU, {"alpha": 1.5, "gamma": 2.0}),
    ("HardSigmoid", OpKind.HARD_SIGMOID, {}), ("HardSigmoid", OpKind.HARD_SIGMOID, {"alpha": 0.3, "beta": 0.4}),
    ("Softplus", OpKind.SOFTPLUS, {}), ("Softsign", OpKind.SOFTSIGN, {}),
])
@pytest.mark.parametrize("opset", [7, 13, 22])
def test_new_unary(op_type, kind, attrs, opset):
    node = helper.make_node(op_type, ["X"], ["Y"], name="act", **attrs)
    graph = check_model(make_model([node], {"X": [2, 3, 4]}, ["Y"], opset=opset))
    assert graph.op("act").kind is kind


def test_hard_swish():
    node = helper.make_node("HardSwish", ["X"], ["Y"], name="act")
    graph = check_model(make_model([node], {"X": [2, 3, 4]}, ["Y"], opset=14))
    assert graph.op("act").kind is OpKind.HARD_SWISH


@pytest.mark.parametrize("op_type,kind", [("Sub", OpKind.SUB), ("Div", OpKind.DIV), ("Max", OpKind.MAX),
                                          ("Min", OpKind.MIN), ("PRelu", OpKind.PRELU)])
@pytest.mark.parametrize("x_shape,b_shape", [((2, 3, 4), (2, 3, 4)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 1)),
                                             ((2, 3, 4), ())])
def test_new_binary(op_type, kind, x_shape, b_shape):
    b = np.random.default_rng(5).uniform(0.5, 2.0, b_shape).astype(np.float32)
    graph = check_model(make_model([helper.make_node(op_type, ["X", "B"], ["Y"])], {"X": x_shape}, ["Y"], {"B": b}))
    assert op_kinds_are(graph, [kind])


@pytest.mark.parametrize("op_type", ["Max", "Min"])
def test_max_min_variadic_broadcast(op_type):
    node = helper.make_node(op_type, ["A", "B", "C"], ["Y"])
    check_model(make_model([node], {"A": [2, 3, 4], "B": [3, 1], "C": [4]}, ["Y"], opset=13))


@pytest.mark.parametrize("op_type", ["Max", "Min"])
def test_max6_does_not_broadcast(op_type):
    node = helper.make_node(op_type, ["A", "B"], ["Y"], name="m")
    with pytest.raises(ModelImportError, match=rf"{op_type}-6 does not broadcast"):
        import_onnx(make_model([node], {"A": [2, 3], "B": [3]}, ["Y"], opset=7))


@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("b_shape,axis,aligned", [((3,), 1, (3, 1, 1)), ((4, 5), 2, (4, 5)), ((5,), None, (5,)),
                                                  ((3, 4), 1, (3, 4, 1))])
def test_opset6_broadcast_attribute(op_type, b_shape, axis, aligned):
    """Add-6 & co. broadcast B only with broadcast=1, aligning it with A's dimensions from ``axis`` on."""
    b = np.random.default_rng(2).uniform(0.5, 2.0, b_shape).astype(np.float32)
    attrs = {"broadcast": 1} | ({"axis": axis} if axis is not None else {})
    node = helper.make_node(op_type, ["X", "B"], ["Y"], name="op", **attrs)
    graph = import_onnx(make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], {"B": b}, opset=6))
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}[op_type](x, b.reshape(aligned))
    assert_close(run_reference(graph, {"X": x})["Y"], expected)


def test_opset6_without_broadcast_needs_equal_shapes():
    node = helper.make_node("Add", ["X", "B"], ["Y"], name="add")
    with pytest.raises(ModelImportError, match=r"broadcast=0"):
        import_onnx(make_model([node], {"X": [2, 3]}, ["Y"], {"B": np.ones(3, np.float32)}, opset=6))


def test_prelu6_slope_is_per_channel():
    """PRelu-6 (PyTorch 0.3 exports) applies a slope of shape (C,) per channel of an (N, C, H, W) input."""
    slope = np.array([0.1, 0.2, 0.3], np.float32)
    node = helper.make_node("PRelu", ["X", "S"], ["Y"])
    graph = import_onnx(make_model([node], {"X": [2, 3, 4, 5]}, ["Y"], {"S": slope}, opset=6))
    x = np.random.default_rng(4).standard_normal((2, 3, 4, 5)).astype(np.float32)
    expected = np.where(x < 0, x * slope.reshape(3, 1, 1), x)
    assert_close(run_reference(graph, {"X": x})["Y"], expected)


@pytest.mark.parametrize("opset,attrs,inputs,bounds", [
    (7, {"min": -0.5, "max": 0.5}, {}, (-0.5, 0.5)),
    (7, {}, {}, (-float(np.finfo(np.float32).max), float(np.finfo(np.float32).max))),  # Clip-6's defaults
    (13, {}, {"min": 0.0, "max": 6.0}, (0.0, 6.0)),   # ReLU6
    (13, {}, {"max": 0.3}, (-np.inf, 0.3)),
    (13, {}, {"min": -0.2}, (-0.2, np.inf)),
])
def test_clip(opset, attrs, inputs, bounds):
    names = ["X"] + [k if k in inputs else "" for k in ("min", "max")]
    while names[-1] == "":
        names.pop()
    node = helper.make_node("Clip", names, ["Y"], name="clip", **attrs)
    inits = {k: np.array(v, np.float32) for k, v in inputs.items()}
    graph = check_model(make_model([node], {"X": [2, 3, 4]}, ["Y"], inits, opset=opset))
    assert (graph.op("clip").attrs.min, graph.op("clip").attrs.max) == pytest.approx(bounds)


def test_clip_bounds_fed_at_run_time_are_named_as_needed_constants():
    node = helper.make_node("Clip", ["X", "lo", "hi"], ["Y"], name="clip")
    with pytest.raises(UnsupportedOpError, match=r"'clip': Clip .*must be a constant") as info:
        import_onnx(make_model([node], {"X": [2, 3], "lo": [], "hi": []}, ["Y"], opset=13))
    assert info.value.constant_inputs == ["lo"]  # the converter stops at the first one it needs


def test_cast_float_to_float_is_identity():
    node = helper.make_node("Cast", ["X"], ["Y"], name="cast", to=TensorProto.FLOAT)
    graph = check_model(make_model([node], {"X": [2, 3]}, ["Y"], opset=13))
    assert op_kinds_are(graph, [OpKind.IDENTITY])


@pytest.mark.parametrize("to", [TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT32])
def test_cast_of_runtime_tensor_to_other_types_is_unsupported(to):
    node = helper.make_node("Cast", ["X"], ["Y"], name="cast", to=to)
    with pytest.raises(UnsupportedOpError, match=r"'cast': Cast .*convc compiles float32 tensors only"):
        import_onnx(make_model([node], {"X": [2, 3]}, {"Y": to}, opset=13))
