"""Constant folding at import: shape arithmetic becomes constants and never reaches the compiled graph."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_import_helpers import FLOAT, INT64, assert_close, check_model, make_model, random_inputs, run_onnx

from convc.errors import ModelImportError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind
from convc.reference import run_reference

INT64_MIN = np.iinfo(np.int64).min


def const(name: str, value) -> helper.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name, TensorProto.INT64 if np.asarray(value).dtype.kind == "i" else TensorProto.FLOAT,
        np.asarray(value).shape, np.asarray(value).reshape(-1).tolist()))


def check_folded(model, feeds=None):
    """Import, assert nothing but convc ops remain, and compare every output (constant or not) with onnxruntime."""
    graph = import_onnx(model, batch=2)
    graph.verify()
    assert all(isinstance(op.kind, OpKind) for op in graph.ops())
    feeds = feeds if feeds is not None else random_inputs(model, batch=2)
    ours = run_reference(graph, feeds)
    for name, expected in run_onnx(model, feeds).items():
        assert_close(np.asarray(ours[name]), expected, name=name)
    return graph


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_flatten_by_shape_arithmetic(opset):
    # what torch.flatten(x, 1) / x.view(x.size(0), -1) exports: Shape -> Gather -> Unsqueeze -> Concat -> Reshape
    unsqueeze = (helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]) if opset >= 13
                 else helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]))
    nodes = [helper.make_node("Shape", ["X"], ["s"]), const("zero", np.array(0)),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0), unsqueeze,
             const("minus1", np.array([-1])), helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["X", "target"], ["Y"], name="view")]
    inits = {"axes0": np.array([0], np.int64)} if opset >= 13 else {}
    model = make_model(nodes, {"X": ["N", 3, 4, 5]}, ["Y"], inits, opset=opset)
    graph = check_folded(model)
    assert [op.kind for op in graph.ops()] == [OpKind.RESHAPE]
    assert graph.op("view").attrs.shape == (2, 60)
    assert not any(t.dtype == np.int64 for t in graph.tensors()), "folded shapes must not linger in the graph"


def pad_chain(opset: int = 13) -> list:
    """torch.onnx's F.pad(x, (2, 0)) on a rank-3 x: turns the torch pad list into ONNX begins/ends order."""
    return [
        const("pad", np.array([2, 0])),
        helper.make_node("Shape", ["pad"], ["pad_len_1d"]),
        helper.make_node("Shape", ["X"], ["x_shape"]),
        helper.make_node("Shape", ["x_shape"], ["rank_1d"]),
        const("two", np.array(2)),
        helper.make_node("Mul", ["rank_1d", "two"], ["rank2"]),
        helper.make_node("Sub", ["rank2", "pad_len_1d"], ["extension"]),
        helper.make_node("Cast", ["pad"], ["pad64"], to=TensorProto.INT64),
        helper.make_node("ConstantOfShape", ["extension"], ["zeros"],
                         value=helper.make_tensor("v", TensorProto.INT64, [1], [0])),
        helper.make_node("Concat", ["pad64", "zeros"], ["padding"], axis=0),
        const("pairs_shape", np.array([-1, 2])),
        helper.make_node("Reshape", ["padding", "pairs_shape"], ["pairs"]),
        const("starts", np.array([-1])), const("ends", np.array([INT64_MIN])), const("axes", np.array([0])),
        const("steps", np.array([-1])),
        helper.make_node("Slice", ["pairs", "starts", "ends", "axes", "steps"], ["reversed"]),
        helper.make_node("Transpose", ["reversed"], ["transposed"], perm=[1, 0]),
        const("flat_shape", np.array([-1])),
        helper.make_node("Reshape", ["transposed", "flat_shape"], ["pads_flat"]),
        helper.make_node("Cast", ["pads_flat"], ["onnx_pads"], to=TensorProto.INT64),
    ]


def test_pytorch_pad_chain_folds_to_onnx_pads():
    model = make_model(pad_chain(), {"X": ["N", 3, 7]}, {"onnx_pads": INT64})
    graph = check_folded(model)
    assert graph.ops() == []
    np.testing.assert_array_equal(graph.tensor("onnx_pads").data, [0, 0, 2, 0, 0, 0])


def test_pytorch_pad_chain_feeding_reshape():
    # the padded shape (x_shape + begins + ends) is the target of a Reshape of a run-time tensor
    nodes = pad_chain() + [
        const("zero", np.array([0])), const("three", np.array([3])), const("six", np.array([6])),
        helper.make_node("Slice", ["onnx_pads", "zero", "three"], ["begins"]),
        helper.make_node("Slice", ["onnx_pads", "three", "six"], ["ends_"]),
        helper.make_node("Add", ["x_shape", "begins"], ["grown"]),
        helper.make_node("Add", ["grown", "ends_"], ["padded_shape"]),
        helper.make_node("Reshape", ["Z", "padded_shape"], ["Y"], name="view"),
    ]
    model = make_model(nodes, {"X": ["N", 3, 7], "Z": ["N", 27]}, ["Y"])
    graph = check_folded(model)
    assert [op.kind for op in graph.ops()] == [OpKind.RESHAPE]
    assert graph.op("view").attrs.shape == (2, 3, 9)


def test_pad_after_the_chain_is_the_only_compiled_op():
    """PyTorch's F.pad(x, (2, 0)): the chain folds to the pads of one Pad (2 zeros before the last axis)."""
    nodes = pad_chain() + [helper.make_node("Pad", ["X", "onnx_pads"], ["Y"], name="pad")]
    graph = check_model(make_model(nodes, {"X": ["N", 3, 7]}, ["Y"]))
    (pad,) = graph.ops()
    assert pad.kind is OpKind.PAD and pad.attrs.pads == (0, 0, 2, 0, 0, 0)


def fold_cases():
    """(id, opset, nodes, initializers, output) for one folder each; the output is compared with onnxruntime."""
    a = np.array([[1, -7, 3], [4, 5, -6]], np.int64)
    f = np.array([[1.5, -2.5, 0.2], [-0.7, 3.0, 2.0]], np.float32)
    n = helper.make_node
    cases = [
        ("gather_axis1_negative", 13, [n("Gather", ["a", "i"], ["y"], axis=1)], {"a": a, "i": np.array([-1, 0])}),
        ("gather_scalar", 13, [n("Gather", ["a", "i"], ["y"])], {"a": a, "i": np.array(1)}),
        ("unsqueeze_attr", 11, [n("Unsqueeze", ["a"], ["y"], axes=[0, -1])], {"a": a}),
        ("unsqueeze_input", 13, [n("Unsqueeze", ["a", "ax"], ["y"])], {"a": a, "ax": np.array([3, 1])}),
        ("squeeze_attr", 11, [n("Squeeze", ["a"], ["y"], axes=[0])], {"a": a[None]}),
        ("squeeze_all", 11, [n("Squeeze", ["a"], ["y"])], {"a": a[None, :, None]}),
        ("squeeze_input", 13, [n("Squeeze", ["a", "ax"], ["y"])], {"a": a[None, :, None], "ax": np.array([0, -2])}),
        ("squeeze_no_axes_13", 13, [n("Squeeze", ["a"], ["y"])], {"a": a[None, :, None]}),
        ("concat_neg_axis", 13, [n("Concat", ["a", "a"], ["y"], axis=-1)], {"a": a}),
        ("constant_of_shape_default", 9, [n("ConstantOfShape", ["s"], ["y"])], {"s": np.array([2, 3])}),
        ("constant_of_shape_int", 13, [n("ConstantOfShape", ["s"], ["y"],
                                         value=helper.make_tensor("v", TensorProto.INT32, [1], [7]))],
         {"s": np.array([3])}),
        ("cast_to_float", 13, [n("Cast", ["a"], ["y"], to=TensorProto.FLOAT)], {"a": a}),
        ("cast_to_int32", 13, [n("Cast", ["f"], ["y"], to=TensorProto.INT32)], {"f": f}),
        ("slice_attrs", 9, [n("Slice", ["a"], ["y"], starts=[0, 1], ends=[1, 1000], axes=[0, 1])], {"a": a}),
        ("slice_steps", 13, [n("Slice", ["a", "st", "en", "ax", "sp"], ["y"])],
         {"a": a, "st": np.array([-1, 2]), "en": np.array([INT64_MIN, -10]), "ax": np.array([0, 1]),
          "sp": np.array([-1, -2])}),
        ("slice_no_axes", 10, [n("Slice", ["a", "st", "en"], ["y"])], {"a": a, "st": np.array([1]),
                                                                       "en": np.array([2])}),
        ("reshape", 13, [n("Reshape", ["a", "s"], ["y"])], {"a": a.reshape(1, 6), "s": np.array([0, 2, -1])}),
        ("range_int", 11, [n("Range", ["s", "l", "d"], ["y"])], {"s": np.array(10), "l": np.array(-3),
                                                                  "d": np.array(-4)}),
        ("range_float", 11, [n("Range", ["s", "l", "d"], ["y"])], {"s": np.array(0.5, np.float32),
                                                                    "l": np.array(3.0, np.float32),
                                                                    "d": np.array(0.75, np.float32)}),
        ("add_int", 13, [n("Add", ["a", "b"], ["y"])], {"a": a, "b": np.array([10, 20, 30])}),
        ("sub_int", 13, [n("Sub", ["a", "b"], ["y"])], {"a": a, "b": np.array([[1], [2]])}),
        ("mul_int", 13, [n("Mul", ["a", "b"], ["y"])], {"a": a, "b": np.array(-3)}),
        ("div_int_truncates", 13, [n("Div", ["a", "b"], ["y"])], {"a": a, "b": np.array([2, 2, -4])}),
        ("div_float", 13, [n("Div", ["f", "g"], ["y"])], {"f": f, "g": np.float32(0.3) + np.abs(f)}),
        ("add_float", 7, [n("Add", ["f", "f"], ["y"])], {"f": f}),
        ("equal", 13, [n("Equal", ["a", "b"], ["y"])], {"a": a, "b": np.array([1, 5, 3])}),
        ("where", 13, [n("Where", ["c", "a", "b"], ["y"])], {"c": a > 0, "a": a, "b": -a}),
        ("expand", 13, [n("Expand", ["a", "s"], ["y"])], {"a": a[:, :1], "s": np.array([3, 2, 1])}),
        ("transpose_default", 13, [n("Transpose", ["a"], ["y"])], {"a": a}),
        ("transpose_perm", 13, [n("Transpose", ["a"], ["y"], perm=[1, 0, 2])], {"a": a[None]}),
        ("identity", 13, [n("Identity", ["a"], ["y"])], {"a": a}),
        ("floor", 13, [n("Floor", ["f"], ["y"])], {"f": f}),
        ("ceil", 13, [n("Ceil", ["f"], ["y"])], {"f": f}),
        ("neg", 13, [n("Neg", ["a"], ["y"])], {"a": a}),
        ("shape_start_end", 15, [n("Shape", ["a"], ["y"], start=-1)], {"a": a[None]}),
        ("shape_end", 15, [n("Shape", ["a"], ["y"], start=0, end=2)], {"a": a[None]}),
        ("size", 13, [n("Size", ["a"], ["y"])], {"a": a}),
        ("relu_of_constant", 13, [n("Relu", ["f"], ["y"])], {"f": f}),
        ("softmax_of_constant", 11, [n("Softmax", ["f"], ["y"], axis=0)], {"f": f}),
        ("constant_value_floats", 13, [n("Constant", [], ["y"], value_floats=[1.0, 2.5])], {}),
        ("constant_value_int", 13, [n("Constant", [], ["y"], value_int=4)], {}),
        ("constant_value_float", 13, [n("Constant", [], ["y"], value_float=0.5)], {}),
        ("constant_value_ints", 13, [n("Constant", [], ["y"], value_ints=[1, 2])], {}),
    ]
    return [pytest.param(opset, nodes, {k: np.asarray(v) for k, v in inits.items()}, id=name)
            for name, opset, nodes, inits in cases]


@pytest.mark.parametrize("opset,nodes,inits", fold_cases())
def test_fold(opset, nodes, inits):
    # the reference evaluator tells the output type, which onnxruntime needs declared
    expected = run_onnx(make_model(nodes, {}, {"y": FLOAT}, inits, opset=opset), {}, oracle="ref")["y"]
    elem = helper.np_dtype_to_tensor_dtype(expected.dtype)
    model = make_model(nodes, {}, {"y": elem}, inits, opset=opset)
    graph = check_folded(model, feeds={})
    assert graph.ops() == [] and graph.outputs == ["y"]


def test_fold_error_names_node():
    node = helper.make_node("Gather", ["a", "i"], ["y"], name="pick")
    model = make_model([node], {}, {"y": INT64}, {"a": np.arange(3), "i": np.array([5])})
    with pytest.raises(ModelImportError, match=r"node 'pick' \(Gather, opset 17\): indices \[5\] are out of range"):
        import_onnx(model)


def test_constant_node_feeds_a_compiled_op():
    nodes = [helper.make_node("Constant", [], ["w"], value=helper.make_tensor("w", FLOAT, [3], [1.0, -2.0, 0.5])),
             helper.make_node("Mul", ["X", "w"], ["Y"])]
    graph = check_model(make_model(nodes, {"X": [2, 3]}, ["Y"]))
    assert graph.tensor("w").data.tolist() == [1.0, -2.0, 0.5]


def test_float_chain_on_constants_folds_before_compiled_ops():
    # (W * 2) + 1 on constants folds; only the Conv reading the folded weights is compiled
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Mul", ["W", "two"], ["W2"]), helper.make_node("Add", ["W2", "one"], ["W3"]),
             helper.make_node("Conv", ["X", "W3"], ["Y"])]
    inits = {"W": rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "two": np.float32(2), "one": np.float32(1)}
    graph = check_model(make_model(nodes, {"X": [1, 3, 5, 5]}, ["Y"], inits))
    assert [op.kind for op in graph.ops()] == [OpKind.CONV]
    assert [t.name for t in graph.constants()] == ["W3"]
