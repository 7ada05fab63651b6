"""Graph inputs that are also initializers: the initializer is the default, a fed value overrides it (ONNX).

convc compiles the defaults in as constants (folded, packed); feeding one compiles, once, a variant that
reads it at run time."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc


def model_with_defaults(batch="N"):
    w = np.ones((2, 3), np.float32)
    c = np.zeros(3, np.float32)
    node = helper.make_node("Gemm", ["X", "W", "C"], ["Y"])
    graph = helper.make_graph(
        [node], "defaults",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [batch, 2]),
         helper.make_tensor_value_info("W", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("C", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(c, "C")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


X = np.arange(8, dtype=np.float32).reshape(4, 2)


def test_defaults_are_compiled_in():
    model = convc.compile(model_with_defaults(4))
    assert [s.name for s in model.inputs] == ["X"] and model.overridable == ["W", "C"]
    np.testing.assert_allclose(model.run({"X": X})["Y"], X @ np.ones((2, 3)))


def test_fed_values_override_the_defaults():
    model = convc.compile(model_with_defaults(4))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(model.run({"X": X, "W": w})["Y"], X @ w)
    c = np.full(3, 10, np.float32)
    np.testing.assert_allclose(model.run({"X": X, "W": w, "C": c})["Y"], X @ w + c)
    np.testing.assert_allclose(model.run({"X": X})["Y"], X @ np.ones((2, 3)))  # defaults again
    np.testing.assert_allclose(model.run({"X": X, "W": 2 * w})["Y"], X @ (2 * w))  # the variant is reused
    assert len(model._overridden) == 2  # {W} and {W, C}


def test_overrides_and_new_batch_sizes_combine():
    model = convc.compile(model_with_defaults("N"))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(model.run({"X": X[:3], "W": w})["Y"], X[:3] @ w)


def test_an_unknown_name_is_still_an_error():
    model = convc.compile(model_with_defaults(4))
    with pytest.raises(convc.InputError, match=r"unknown input\(s\) \['Z'\]"):
        model.run({"X": X, "Z": X})
