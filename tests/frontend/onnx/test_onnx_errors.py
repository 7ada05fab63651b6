"""Malformed and unsupported models: the right exception type, naming the node and the offending values."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_import_helpers import INT64, make_model

from convc.errors import ModelImportError, UnsupportedOpError
from convc.frontend.onnx import import_onnx


def test_all_unsupported_nodes_are_reported_at_once():
    nodes = [
        helper.make_node("Relu", ["X"], ["r"], name="relu"),
        helper.make_node("LpNormalization", ["r"], ["l"], name="lpn1"),
        helper.make_node("Relu", ["l"], ["l2"], name="after_lpn"),           # skipped: reads an unknown tensor
        helper.make_node("Acos", ["l2"], ["e"], name="acos_after_lpn"),      # no converter: still listed
        helper.make_node("MeanVarianceNormalization", ["X"], ["n"], name="mvn"),
        helper.make_node("FusedConv", ["X"], ["f"], name="ms", domain="com.microsoft"),
        helper.make_node("Add", ["e", "n"], ["Y"]),
    ]
    model = make_model(nodes, {"X": [1, 2, 4, 4]}, ["Y", "f"])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    with pytest.raises(UnsupportedOpError) as info:
        import_onnx(model)
    listed = {name: (op, opset, reason) for name, op, opset, reason in info.value.nodes}
    assert list(listed) == ["lpn1", "acos_after_lpn", "mvn", "ms"]
    assert listed["lpn1"][:2] == ("LpNormalization", 17)
    assert "domain 'com.microsoft'" in listed["ms"][2]
    message = str(info.value)
    for name in listed:
        assert repr(name) in message
    assert "convc cannot compile 4 node(s)" in message


def test_dangling_input_names_node_and_tensor():
    node = helper.make_node("Add", ["X", "ghost"], ["Y"], name="add")
    with pytest.raises(ModelImportError, match=r"node 'add' \(Add\) reads tensor 'ghost', which no node produces"):
        import_onnx(make_model([node], {"X": [2]}, ["Y"]))


def test_missing_required_input():
    node = helper.make_node("Conv", ["X", ""], ["Y"], name="conv")
    with pytest.raises(ModelImportError, match=r"node 'conv' \(Conv, opset 17\): required input #1 'W' is missing"):
        import_onnx(make_model([node], {"X": [1, 1, 3, 3]}, ["Y"]))


def test_too_few_inputs():
    node = helper.make_node("Gemm", ["X"], ["Y"], name="fc")
    with pytest.raises(ModelImportError, match=r"node 'fc' \(Gemm, opset 17\): has 1 inputs, Gemm-13 needs at least 2"):
        import_onnx(make_model([node], {"X": [1, 3]}, ["Y"]))


def test_graph_output_nobody_produces():
    node = helper.make_node("Relu", ["X"], ["Y"])
    with pytest.raises(ModelImportError, match=r"graph output 'Z' is not produced by any node"):
        import_onnx(make_model([node], {"X": [2]}, ["Y", "Z"]))


@pytest.mark.parametrize("elem_type,type_name", [(TensorProto.INT64, "INT64"), (TensorProto.FLOAT16, "FLOAT16"),
                                                 (TensorProto.DOUBLE, "DOUBLE"), (TensorProto.BOOL, "BOOL")])
def test_non_float32_input(elem_type, type_name):
    node = helper.make_node("Identity", ["X"], ["Y"])
    model = make_model([node], {"X": [2]}, ["Y"], input_type=elem_type)
    with pytest.raises(ModelImportError, match=rf"graph input 'X' has element type {type_name}; .*float32 models only"):
        import_onnx(model)


@pytest.mark.parametrize("shape,message", [
    (["N", 3, "H", 4], r"graph input 'X' has a symbolic dimension 2 \('H'\) \(declared \[N, 3, H, 4\]\); give its "
                       r"shape with input_shapes=\{'X': \(1, 3, 224, 4\)\} \(on the command line: --input-shape "
                       r"X=1,3,224,4\)"),
    ([1, 3, None, 4], r"graph input 'X' has a symbolic dimension 2 \(declared \[1, 3, \?, 4\]\); give its shape"),
    (["N", "C", "H", "W"], r"graph input 'X' has symbolic dimensions 1 \('C'\), 2 \('H'\), 3 \('W'\)"),
    (None, r"graph input 'X' has no shape"),
])
def test_symbolic_non_batch_dimension(shape, message):
    node = helper.make_node("Relu", ["X"], ["Y"])
    with pytest.raises(ModelImportError, match=message):
        import_onnx(make_model([node], {"X": shape}, ["Y"]))


def test_fixed_batch_conflicts_with_requested_batch():
    node = helper.make_node("Relu", ["X"], ["Y"])
    with pytest.raises(ModelImportError, match=r"graph input 'X' has a fixed batch dimension 1, but batch=4"):
        import_onnx(make_model([node], {"X": [1, 3]}, ["Y"]), batch=4)


@pytest.mark.parametrize("attrs,message", [
    ({"alpha": 0.1, "beta": 2.0, "gamma": 1.0}, r"attribute 'gamma' is not part of Gemm-13"),
    ({"transA": 1.5}, r"attribute 'transA' has type FLOAT, expected INT"),
])
def test_bad_attribute(attrs, message):
    node = helper.make_node("Gemm", ["A", "B"], ["Y"], name="fc", **attrs)
    model = make_model([node], {"A": [2, 3], "B": [3, 4]}, ["Y"])
    with pytest.raises(ModelImportError, match=r"node 'fc' \(Gemm, opset 17\): " + message):
        import_onnx(model)


def test_missing_required_attribute():
    node = helper.make_node("Concat", ["A", "B"], ["Y"], name="cat")
    with pytest.raises(ModelImportError, match=r"node 'cat' \(Concat, opset 17\): required attribute 'axis'"):
        import_onnx(make_model([node], {"A": [2], "B": [2]}, ["Y"]))


def test_unnamed_nodes_get_op_type_and_index():
    nodes = [helper.make_node("Relu", ["X"], ["r"]),
             helper.make_node("Conv", ["r", "W"], ["Y"], kernel_shape=[5, 5])]
    model = make_model(nodes, {"X": [1, 1, 4, 4]}, ["Y"], {"W": np.zeros((1, 1, 3, 3), np.float32)})
    with pytest.raises(ModelImportError, match=r"node 'Conv_1' \(Conv, opset 17\): kernel_shape=\(5, 5\)"):
        import_onnx(model)
    graph = import_onnx(make_model(nodes[:1], {"X": [1, 1, 4, 4]}, ["r"]))
    assert [op.name for op in graph.ops()] == ["Relu_0"]


def test_shape_inference_error_names_node():
    node = helper.make_node("MatMul", ["A", "B"], ["Y"], name="mm")
    with pytest.raises(ModelImportError, match=r"node 'mm' \(MatMul, opset 17\): .*disagree on K: 3 vs 4"):
        import_onnx(make_model([node], {"A": [2, 3], "B": [4, 5]}, ["Y"]))


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_text("this is not a protobuf\n" * 10)
    with pytest.raises(ModelImportError, match=r"model.onnx is not an ONNX model"):
        import_onnx(path)
    with pytest.raises(ModelImportError, match=r"the given bytes is not an ONNX model"):
        import_onnx(b"\x00\x01garbage")
    with pytest.raises(ModelImportError, match=r"cannot read ONNX model .*missing.onnx"):
        import_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelImportError, match=r"expected a path, bytes or onnx.ModelProto, got int"):
        import_onnx(42)


def test_opset_out_of_range():
    model = make_model([helper.make_node("Relu", ["X"], ["Y"])], {"X": [2]}, ["Y"], opset=5)
    with pytest.raises(ModelImportError, match=r"opset 5 of the default domain; convc imports opsets 6 to"):
        import_onnx(model)


def test_tensor_produced_twice():
    nodes = [helper.make_node("Relu", ["X"], ["Y"], name="a"), helper.make_node("Sigmoid", ["X"], ["Y"], name="b")]
    with pytest.raises(ModelImportError, match=r"tensor 'Y' is produced twice: by node 'a' \(Relu\) and node 'b'"):
        import_onnx(make_model(nodes, {"X": [2]}, ["Y"]))


def test_cycle():
    nodes = [helper.make_node("Add", ["X", "b"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"], name="second")]
    with pytest.raises(ModelImportError, match=r"cycle through nodes 'first' \(Add\), 'second' \(Relu\)"):
        import_onnx(make_model(nodes, {"X": [2]}, ["b"]))


def test_integer_runtime_input_used_by_shape_op():
    node = helper.make_node("Reshape", ["X", "S"], ["Y"])
    model = make_model([node], {"X": [6]}, ["Y"])
    model.graph.input.append(helper.make_tensor_value_info("S", INT64, [2]))
    with pytest.raises(ModelImportError, match=r"graph input 'S' has element type INT64"):
        import_onnx(model)
