"""Graph boundary, names, batch resolution, initializers listed as inputs, node order."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_import_helpers import INT64, check_model, make_model

import convc
from convc.errors import ModelImportError
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


def gemm_with_default_weights():
    w = np.ones((2, 3), np.float32)
    node = helper.make_node("Gemm", ["X", "W", "C"], ["Y"])
    return make_model([node], {"X": [4, 2], "W": [2, 3], "C": [3]}, ["Y"], {"W": w, "C": np.zeros(3, np.float32)})


def test_initializer_inputs_are_recorded():
    graph = import_onnx(gemm_with_default_weights())
    assert graph.metadata["initializer_inputs"] == ["W", "C"]


def test_runtime_turns_initializer_inputs_into_inputs():
    graph = check_model(gemm_with_default_weights())
    runtime = import_onnx(gemm_with_default_weights(), runtime=["W"])
    assert runtime.inputs == ["X", "W"] and runtime.tensor("W").kind is TensorKind.INPUT
    assert runtime.tensor("W").shape == (2, 3) and graph.tensor("W").kind is TensorKind.CONSTANT


@pytest.mark.parametrize("runtime,message", [(["Z"], r"runtime=\['Z'\]: not graph inputs"),
                                             (["X"], r"runtime=\['X'\]: only initializers listed as graph inputs")])
def test_runtime_names_must_be_initializer_inputs(runtime, message):
    with pytest.raises(ModelImportError, match=message):
        import_onnx(gemm_with_default_weights(), runtime=runtime)


def test_bind_compiles_inputs_in_as_constants():
    """Reshape's shape fed as a graph input (as ONNX's backend tests do) imports once its value is bound."""
    node = helper.make_node("Reshape", ["X", "S"], ["Y"])
    model = make_model([node], {"X": [2, 6]}, ["Y"])
    model.graph.input.append(helper.make_tensor_value_info("S", INT64, [2]))
    graph = import_onnx(model, bind={"S": np.array([3, 4], np.int64)})
    assert graph.inputs == ["X"] and graph.tensor("Y").shape == (3, 4)
    with pytest.raises(ModelImportError, match=r"bind=\['nope'\]: not graph inputs"):
        import_onnx(model, bind={"nope": np.zeros(1)})


def test_a_bound_value_is_the_graphs_own():
    """A value bound to a graph input is compiled in as it was at the import, whatever the caller
    does to their array afterwards."""
    model = make_model([helper.make_node("Add", ["X", "B"], ["Y"])], {"X": [4]}, ["Y"])
    model.graph.input.append(helper.make_tensor_value_info("B", TensorProto.FLOAT, [4]))
    b = np.arange(4, dtype=np.float32)
    graph = import_onnx(model, bind={"B": b})
    b[:] = 9
    np.testing.assert_array_equal(graph.tensor("B").data, np.arange(4, dtype=np.float32))


def test_several_graph_outputs_an_intermediate_and_an_input():
    """An output that another op also reads, the final one, and a graph input passed through."""
    nodes = [helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Sigmoid", ["r"], ["s"])]
    model = make_model(nodes, {"X": [2, 3]}, ["r", "s", "X"])
    graph = check_model(model)
    assert graph.outputs == ["r", "s", "X"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    r, s_, x_out = convc.compile(model)(x)
    np.testing.assert_array_equal(r, np.maximum(x, 0))
    np.testing.assert_array_equal(x_out, x)
    np.testing.assert_allclose(s_, 1 / (1 + np.exp(-np.maximum(x, 0))), rtol=1e-6)


def test_schema_defaults_are_each_nodes_own():
    """An op's attribute defaults are read from onnx's schema once, not per node; each node gets
    its own values, which a converter may change without changing the next node's."""
    import onnx

    from convc.frontend.onnx.importer import _Importer
    schema = onnx.defs.get_schema("MeanVarianceNormalization", 17)
    importer = _Importer(onnx.GraphProto(), 17, 1)
    first = importer._attributes("m1", helper.make_node("MeanVarianceNormalization", ["x"], ["y"]), schema)
    assert first == {"axes": [0, 2, 3]}
    first["axes"].append(9)
    assert importer._attributes("m2", helper.make_node("MeanVarianceNormalization", ["x"], ["y"]), schema) == \
        {"axes": [0, 2, 3]}
    assert importer._attributes("m3", helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=[1]),
                                schema) == {"axes": [1]}
