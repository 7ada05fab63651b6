"""Graph boundary, names, batch resolution, initializers listed as inputs, node order."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import check_model, make_model

from convc.frontend.onnx import import_onnx
from convc.ir import TensorKind
from convc.ops import OpKind


@pytest.mark.parametrize("batch,expected", [(None, 1), (1, 1), (3, 3)])
@pytest.mark.parametrize("dim", ["N", None])
def test_symbolic_batch_is_resolved(batch, expected, dim):
    node = helper.make_node("Relu", ["X"], ["Y"])
    graph = check_model(make_model([node], {"X": [dim, 3, 4]}, ["Y"]), batch=batch)
    assert graph.tensor("X").shape == (expected, 3, 4) and graph.tensor("Y").shape == (expected, 3, 4)


def test_boundary_names_and_order(tmp_path):
    nodes = [helper.make_node("Relu", ["B_in"], ["second"]), helper.make_node("Sigmoid", ["A_in"], ["first"])]
    model = make_model(nodes, {"B_in": [2], "A_in": [3]}, ["first", "second"], name="my_net")
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    for source in (model, model.SerializeToString(), path, str(path)):
        graph = import_onnx(source)
        assert graph.name == "my_net"
        assert graph.inputs == ["B_in", "A_in"] and graph.outputs == ["first", "second"]


def test_initializers_listed_as_inputs_are_overridable_constants():
    w = np.ones((2, 3), np.float32)
    node = helper.make_node("Gemm", ["X", "W", "C"], ["Y"])
    model = make_model([node], {"X": [4, 2], "W": [2, 3], "C": [3]}, ["Y"],
                       {"W": w, "C": np.zeros(3, np.float32)})
    graph = check_model(model)
    assert graph.inputs == ["X"]
    assert graph.metadata["overridable"] == ["W", "C"]
    assert graph.tensor("W").kind is TensorKind.CONSTANT
    np.testing.assert_array_equal(graph.tensor("W").data, w)


def test_unsorted_nodes_are_ordered():
    nodes = [helper.make_node("Sigmoid", ["r"], ["Y"]), helper.make_node("Relu", ["X"], ["r"])]
    graph = check_model(make_model(nodes, {"X": [2, 2]}, ["Y"]))
    assert [op.kind for op in graph.ops()] == [OpKind.RELU, OpKind.SIGMOID]


def test_node_named_like_a_tensor():
    # Caffe2-era exporters name a node after its output; ops and tensors share one namespace in the Graph
    nodes = [helper.make_node("Relu", ["X"], ["conv1"], name="conv1"),
             helper.make_node("Sigmoid", ["conv1"], ["Y"], name="Y")]
    graph = check_model(make_model(nodes, {"X": [2]}, ["Y"]))
    assert graph.tensor("conv1").kind is TensorKind.ACTIVATION and len(graph.ops()) == 2


def test_constant_and_input_as_graph_outputs():
    node = helper.make_node("Constant", [], ["K"], value=helper.make_tensor("K", 1, [2], [1.0, 2.0]))
    graph = check_model(make_model([node], {"X": [2]}, ["K", "X"]))
    assert graph.outputs == ["K", "X"] and graph.ops() == []


def test_opset_is_recorded():
    graph = import_onnx(make_model([helper.make_node("Relu", ["X"], ["Y"])], {"X": [2]}, ["Y"], opset=11))
    assert graph.metadata["onnx_opset"] == 11
