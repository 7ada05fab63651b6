"""``convc check``: every node convc cannot compile in one go, and the first layer whose numbers differ."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc.check
from convc.check import check_model, tensor_error
from convc.cli import main


def small_cnn() -> onnx.ModelProto:
    """conv1 -> relu1 -> conv2 -> relu2 -> pool -> fc: 6 layers, constant weights."""
    rng = np.random.default_rng(0)
    w = {"W1": rng.standard_normal((4, 3, 3, 3)), "B1": rng.standard_normal(4), "W2": rng.standard_normal((6, 4, 3, 3)),
         "W3": rng.standard_normal((6, 5))}
    nodes = [helper.make_node("Conv", ["X", "W1", "B1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"], name="relu1"),
             helper.make_node("Conv", ["b", "W2"], ["c"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["d"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["d"], ["e"], name="pool"),
             helper.make_node("Flatten", ["e"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "W3"], ["Y"], name="fc")]
    graph = helper.make_graph(nodes, "small_cnn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def with_two_unsupported_ops() -> onnx.ModelProto:
    """conv1 -> MaxPool whose Indices output is used (an unsupported attribute of a claimed op) -> ... -> Hardmax (no
    converter at all)."""
    model = small_cnn()
    nodes = list(model.graph.node)
    nodes[1] = helper.make_node("MaxPool", ["a"], ["b", "b_idx"], name="pool_with_indices", kernel_shape=[1, 1])
    nodes.insert(4, helper.make_node("Hardmax", ["d"], ["d_hardmax"], name="hardmax"))
    nodes[5] = helper.make_node("GlobalAveragePool", ["d_hardmax"], ["e"], name="pool")
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.output.append(helper.make_tensor_value_info("b_idx", TensorProto.INT64, None))
    return model


def test_a_good_model_matches_layer_by_layer():
    report = check_model(small_cnn())
    assert report.ok and report.compiles and report.first_bad is None
    assert [t.tensor for t in report.layers] == ["a", "b", "c", "d", "e", "f", "Y"]
    assert all(t.error <= report.tolerance for t in report.layers + report.outputs)


def test_two_unsupported_ops_are_both_listed(tmp_path, capsys):
    path = tmp_path / "bad.onnx"
    onnx.save(with_two_unsupported_ops(), path)
    assert main(["check", str(path), "-q"]) == 2  # an error in the model: exit 2, as the README's table says
    out, err = capsys.readouterr()
    assert err == f"convc: error: {path}: convc cannot compile 2 node(s), listed above\n"
    assert "convc cannot compile 2 node(s)" in out
    assert "node 'hardmax': Hardmax (opset 17): convc has no converter for Hardmax" in out
    assert "node 'pool_with_indices': MaxPool (opset 17): the optional output 'Indices' is used" in out


@pytest.mark.parametrize("wrong", ["conv2", "pool", "relu1"])
def test_a_layer_made_wrong_on_purpose_is_the_one_named(wrong):
    report = check_model(small_cnn(), perturb=wrong)
    assert not report.ok
    producer = {"conv2": "c", "pool": "e", "relu1": "b"}[wrong]
    assert report.first_bad.node == wrong and report.first_bad.tensor == producer
    earlier = [t for t in report.layers[:[t.tensor for t in report.layers].index(producer)]]
    assert all(t.error <= report.tolerance for t in earlier)
    text = report.render()
    assert f"first tensor over tolerance: '{producer}' from node '{wrong}'" in text
    for t in earlier:  # no earlier layer is named as over tolerance
        assert f"first tensor over tolerance: '{t.tensor}'" not in text


@pytest.mark.slow
def test_the_cli_names_the_perturbed_layer(tmp_path, capsys, monkeypatch):
    path = tmp_path / "cnn.onnx"
    onnx.save(small_cnn(), path)
    monkeypatch.setenv(convc.check.PERTURB_ENV, "conv2")
    assert main(["check", str(path), "-q", "--seed", "3"]) == 1
    out = capsys.readouterr().out
    assert "first tensor over tolerance: 'c' from node 'conv2' (Conv)" in out
    assert "the 2 tensor(s) computed before it match" in out
    monkeypatch.delenv(convc.check.PERTURB_ENV)
    assert main(["check", str(path), "-q"]) == 0
    assert "all 7 intermediate tensors within tolerance" in capsys.readouterr().out


@pytest.mark.slow
def test_an_error_only_the_optimized_model_makes_is_found_by_bisection(monkeypatch):
    """A wrong fused kernel: the all-outputs variant (no fusion) matches, the optimized model does not."""
    run = convc.check.run_convc

    def fused_conv2_is_wrong(model, feeds, batch, precision="float32", input_shapes=None):
        out = run(model, feeds, batch, precision, input_shapes)
        if len(model.graph.output) < 7:  # not the all-tensors variant
            out = {k: v + 1 if k in ("c", "d", "e", "f", "Y") else v for k, v in out.items()}
        return out
    monkeypatch.setattr(convc.check, "run_convc", fused_conv2_is_wrong)
    report = check_model(small_cnn())
    assert report.found_by_bisection and report.first_bad.tensor == "c" and report.first_bad.node == "conv2"


def test_tensor_error_is_scaled_by_magnitude():
    assert tensor_error(np.array([101.0]), np.array([100.0])) == pytest.approx(0.01)
    assert tensor_error(np.array([0.5]), np.array([0.0])) == pytest.approx(0.5)
    assert tensor_error(np.array([np.nan]), np.array([1.0])) == float("inf")


def test_a_model_onnxruntime_refuses_is_a_clean_error(tmp_path, capsys):
    """onnxruntime's own exception escaped from `convc check` (a traceback) for a model convc compiles."""
    model = small_cnn()
    model.ir_version = 99  # convc does not mind; onnxruntime refuses the IR version
    with pytest.raises(convc.ConvcError, match=r"onnxruntime [\d.]+ cannot run the model, so there is nothing to "
                                               r"compare convc with: .*IR version"):
        check_model(model)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert main(["check", str(path), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convc: error: onnxruntime") and "Traceback" not in err
