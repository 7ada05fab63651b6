"""convc.backend: the onnx.backend.base.Backend interface (prepare, run_model, run_node, supports_device)."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx.backend.base import Backend, BackendRep

import convc.backend
from convc.backend import ConvcBackend, ConvcRep


def relu_model():
    graph = helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "relu",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_is_an_onnx_backend():
    assert issubclass(ConvcBackend, Backend) and issubclass(ConvcRep, BackendRep)
    assert convc.backend.supports_device("CPU") and not convc.backend.supports_device("CUDA")
    with pytest.raises(ValueError, match="CPU"):
        convc.backend.prepare(relu_model(), "CUDA")


def test_prepare_and_run_model():
    x = np.array([[-1, 2, -3], [4, -5, 6]], np.float32)
    rep = convc.backend.prepare(relu_model())
    (y,) = rep.run([x])
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(rep.run({"X": x})["Y"], np.maximum(x, 0))  # named outputs too
    np.testing.assert_array_equal(convc.backend.run_model(relu_model(), [x])[0], np.maximum(x, 0))


def test_run_node():
    node = helper.make_node("LeakyRelu", ["a"], ["b"], alpha=0.5)
    (y,) = convc.backend.run_node(node, [np.array([-2.0, 3.0], np.float32)])
    np.testing.assert_array_equal(y, [-1.0, 3.0])


def test_compile_time_inputs_are_bound_and_variants_cached():
    """Reshape's shape (int64) and Clip's bounds (float, needed as constants) are compiled in at run()."""
    nodes = [helper.make_node("Reshape", ["X", "S"], ["R"]), helper.make_node("Clip", ["R", "lo", "hi"], ["Y"])]
    graph = helper.make_graph(nodes, "shapes", [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 6]),
        helper.make_tensor_value_info("S", TensorProto.INT64, [2]),
        helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("hi", TensorProto.FLOAT, [])], [helper.make_tensor_value_info("Y", 1, ["a", "b"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rep = convc.backend.prepare(model)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    lo, hi = np.array(2.0, np.float32), np.array(9.0, np.float32)
    (y,) = rep.run([x, np.array([3, 4]), lo, hi])
    np.testing.assert_array_equal(y, np.clip(x.reshape(3, 4), 2, 9))
    (y,) = rep.run([x + 1, np.array([3, 4]), lo, hi])   # same compile-time values: the same variant
    (z,) = rep.run([x, np.array([4, 3]), lo, hi])       # a new shape: a second variant
    assert y.shape == (3, 4) and z.shape == (4, 3) and len(rep._compiled) == 2
    assert rep._constant_inputs == {"lo", "hi"}


def test_unsupported_model_raises_at_run():
    graph = helper.make_graph([helper.make_node("Hardmax", ["X"], ["Y"])], "hardmax",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [2])])
    rep = convc.backend.prepare(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(convc.UnsupportedOpError, match="Hardmax"):
        rep.run([np.zeros(2, np.float32)])


@pytest.mark.slow  # BackendTest generates every ONNX node case (about 15 s)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the case generators overflow casts on purpose
def test_onnx_backend_test_runner_drives_it():
    """onnx.backend.test.BackendTest runs ONNX node cases through this backend (two of them here)."""
    import unittest

    import onnx.backend.test
    suite = onnx.backend.test.BackendTest(ConvcBackend, __name__)
    suite.include(r"^test_relu_cpu$|^test_conv_with_strides_padding_cpu$")
    loader = unittest.defaultTestLoader
    tests = unittest.TestSuite(loader.loadTestsFromTestCase(case) for case in suite.test_cases.values())
    result = unittest.TextTestRunner(verbosity=0).run(tests)
    assert result.wasSuccessful(), result.failures + result.errors
    assert result.testsRun - len(result.skipped) == 2


def ir3_conv_model():
    """An IR-3 model as caffe2's converter writes them: every initializer is also a graph input,
    listed before the data input."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], rng.standard_normal(108).astype(np.float32))
    b = helper.make_tensor("b", TensorProto.FLOAT, [4], rng.standard_normal(4).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("Conv", ["data", "w", "b"], ["y"], pads=[1, 1, 1, 1])], "ir3",
        [helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [4]),
         helper.make_tensor_value_info("data", TensorProto.FLOAT, [2, 3, 9, 11])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 9, 11])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 8)])
    model.ir_version = 3
    return model


def test_positional_inputs_feed_the_inputs_that_are_not_initializers():
    import onnxruntime as ort
    model = ir3_conv_model()
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 11)).astype(np.float32)
    (y,) = convc.backend.prepare(model).run([x])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["data"]  # onnxruntime's view of the same model
    np.testing.assert_allclose(y, sess.run(None, {"data": x})[0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_light_model_shipped_with_onnx_runs_positionally():
    import os

    import onnx
    import onnxruntime as ort
    path = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_squeezenet.onnx")
    if not os.path.exists(path):
        pytest.skip("this onnx package ships no light models")
    model = onnx.load(path)
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32)
    (y,) = convc.backend.prepare(model).run([x])
    (ref,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"data_0": x})
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5 * float(np.abs(ref).max()))
