"""BatchNormalization, inference form."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import check_model, make_model

from convc.errors import UnsupportedOpError
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind


def bn_model(opset, x_shape=(2, 3, 4, 5), outputs=("Y",), **attrs):
    c = x_shape[1]
    rng = np.random.default_rng(6)
    inits = {"scale": rng.standard_normal(c), "bias": rng.standard_normal(c), "mean": rng.standard_normal(c),
             "var": rng.uniform(0.5, 2.0, c)}
    inits = {k: v.astype(np.float32) for k, v in inits.items()}
    node = helper.make_node("BatchNormalization", ["X", "scale", "bias", "mean", "var"], list(outputs), name="bn",
                            **attrs)
    return make_model([node], {"X": list(x_shape)}, {o: 1 for o in outputs if o}, inits, opset=opset)


@pytest.mark.parametrize("opset", [7, 9, 14, 15, 22])
@pytest.mark.parametrize("x_shape", [(2, 3, 4, 5), (2, 3, 7), (4, 3)])
def test_batch_norm(opset, x_shape):
    graph = check_model(bn_model(opset, x_shape, epsilon=1e-3))
    op = graph.op("bn")
    assert op.kind is OpKind.BATCH_NORM and op.attrs.epsilon == pytest.approx(1e-3)


@pytest.mark.parametrize("opset", [14, 15])
def test_batch_norm_training_mode_imports(opset):
    """PyTorch's training-mode export: the same op (batch statistics are the training step's business)."""
    graph = import_onnx(bn_model(opset, training_mode=1, momentum=0.8))
    op = graph.op("bn")
    assert op.kind is OpKind.BATCH_NORM and op.attrs.momentum == pytest.approx(0.8)


def test_batch_norm_spatial_1_of_old_opsets():
    check_model(bn_model(7, spatial=1))


@pytest.mark.parametrize("model,reason", [
    (bn_model(7, spatial=0), "spatial=0"),
    (bn_model(9, outputs=("Y", "mean_out", "var_out")), r"optional outputs \['mean', 'var'\] are used"),
    (bn_model(14, outputs=("Y", "running_mean", "")), r"optional outputs \['running_mean'\] are used"),
])
def test_batch_norm_unsupported(model, reason):
    with pytest.raises(UnsupportedOpError, match=r"node 'bn': BatchNormalization \(opset \d+\): .*" + reason):
        import_onnx(model)


@pytest.mark.parametrize("attrs", [{"size": 3}, {"size": 5, "alpha": 2e-4, "beta": 0.5, "bias": 2.0}])
@pytest.mark.parametrize("opset", [7, 13])
def test_lrn(attrs, opset):
    node = helper.make_node("LRN", ["X"], ["Y"], name="lrn", **attrs)
    graph = check_model(make_model([node], {"X": [2, 6, 5, 5]}, ["Y"], opset=opset))
    assert graph.op("lrn").kind is OpKind.LRN and graph.op("lrn").attrs.size == attrs["size"]


def test_batch_norm_6_is_test():
    """BatchNormalization-6 (PyTorch 0.3 exports) says is_test=1 for inference; is_test=0 means training."""
    check_model(bn_model(6, is_test=1), oracle="ref")
    with pytest.raises(UnsupportedOpError, match="is_test=0"):
        import_onnx(bn_model(6))
