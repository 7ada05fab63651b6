"""Models exported in training mode (PyTorch's ``TrainingMode.TRAINING``): BatchNormalization with
training_mode=1 and Dropout with a true training_mode input. The Trainer trains them with batch
statistics and dropout; convc.compile on the same file infers with running statistics and no dropout."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import convc
from convc.frontend.onnx import import_onnx
from convc.ops import OpKind

C, HW, CLASSES = 6, 9, 5  # odd spatial size: vector remainders in every kernel


def bn_dropout_model(training: bool, ratio: float = 0.5, opset: int = 17, batch: int = 16) -> onnx.ModelProto:
    """Conv -> BatchNormalization -> Relu -> Dropout -> GlobalAveragePool -> Flatten -> Gemm, built like
    torch.onnx.export writes it (training: BN's running-stat outputs present but unused, Dropout's
    ratio and training_mode as Constant nodes)."""
    rng = np.random.default_rng(3)
    inits = {"w": rng.standard_normal((C, 3, 3, 3)) * 0.3, "b": rng.standard_normal(C) * 0.1,
             "scale": rng.uniform(0.5, 1.5, C), "bias": rng.standard_normal(C) * 0.1,
             "mean": rng.standard_normal(C) * 0.1, "var": rng.uniform(0.5, 2.0, C),
             "fc_w": rng.standard_normal((CLASSES, C)) * 0.3, "fc_b": np.zeros(CLASSES)}
    bn_outputs = ["bn", "bn_running_mean", "bn_running_var"] if training else ["bn"]
    bn_attrs = {"epsilon": 1e-5, "momentum": 0.9} | ({"training_mode": 1} if training else {})
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["conv", "scale", "bias", "mean", "var"], bn_outputs, **bn_attrs),
        helper.make_node("Relu", ["bn"], ["relu"]),
        helper.make_node("Constant", [], ["ratio"], value=numpy_helper.from_array(np.array(ratio, np.float32))),
        helper.make_node("Constant", [], ["training_mode"], value=numpy_helper.from_array(np.array(training))),
        helper.make_node("Dropout", ["relu", "ratio", "training_mode"], ["drop", "mask"]),
        helper.make_node("GlobalAveragePool", ["drop"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bn_dropout", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, HW, HW])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, CLASSES])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    return rng.standard_normal((16, 3, HW, HW)).astype(np.float32), rng.integers(0, CLASSES, 16)


def test_training_mode_imports_as_the_inference_ops():
    graph = import_onnx(bn_dropout_model(True))
    kinds = [op.kind for op in graph.ops()]
    assert OpKind.BATCH_NORM in kinds and OpKind.DROPOUT in kinds
    assert [op for op in graph.ops() if op.kind is OpKind.DROPOUT][0].attrs.ratio == pytest.approx(0.5)


def test_inference_uses_running_statistics_and_no_dropout(data):
    """convc.compile and InferenceSession on the training-mode file compute what the eval-mode export of
    the same weights does: the running statistics, nothing dropped (checked against a numpy evaluation
    of that formula)."""
    x, _ = data
    got = convc.compile(bn_dropout_model(True)).run({"x": x})["y"]
    want = convc.compile(bn_dropout_model(False)).run({"x": x})["y"]
    np.testing.assert_array_equal(got, want)
    session = convc.InferenceSession(bn_dropout_model(True).SerializeToString())
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], got)
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in bn_dropout_model(True).graph.initializer}
    conv = np.zeros((16, C, HW, HW))
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            conv += np.einsum("nchw,oc->nohw", xp[:, :, i:i + HW, j:j + HW], w["w"][:, :, i, j])
    conv += w["b"][None, :, None, None]
    per_c = (lambda v: v[None, :, None, None])
    bn = (conv - per_c(w["mean"])) / np.sqrt(per_c(w["var"]) + 1e-5) * per_c(w["scale"]) + per_c(w["bias"])
    ref = np.maximum(bn, 0).mean(axis=(2, 3)) @ w["fc_w"].T + w["fc_b"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_trainer_drops_and_uses_batch_statistics(data):
    """lr 0: the weights stay, so the step's loss changes only through the dropout mask (drawn per step
    from the seed). Ratio 0 gives the loss of the batch-statistics forward, computed here in numpy."""
    x, y = data
    t = convc.Trainer(bn_dropout_model(True), input_shape=x.shape, optimizer=convc.optim.SGD(0.1), seed=7)
    t.lr = 0.0
    assert len({t.step(x, y) for _ in range(3)}) == 3
    t = convc.Trainer(bn_dropout_model(True, ratio=0.0), input_shape=x.shape, optimizer=convc.optim.SGD(0.1))
    t.lr = 0.0
    loss = t.step(x, y)
    w = {n: numpy_helper.to_array(v).astype(np.float64) for n, v in
         ((i.name, i) for i in bn_dropout_model(True).graph.initializer)}
    conv = convc.compile(_conv_only(bn_dropout_model(True))).run({"x": x})["conv"].astype(np.float64)
    mean, var = conv.mean(axis=(0, 2, 3)), conv.var(axis=(0, 2, 3))
    per_c = (lambda v: v[None, :, None, None])
    bn = (conv - per_c(mean)) / np.sqrt(per_c(var) + 1e-5) * per_c(w["scale"]) + per_c(w["bias"])
    logits = np.maximum(bn, 0).mean(axis=(2, 3)) @ w["fc_w"].T + w["fc_b"]
    logits -= logits.max(axis=1, keepdims=True)
    want = float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(16), y]))
    assert loss == pytest.approx(want, rel=1e-5)
    # the running statistics moved towards the batch's (momentum 0.9: 10 % of the way)
    state = t.state_dict()
    np.testing.assert_allclose(state["mean"], 0.9 * w["mean"] + 0.1 * mean, rtol=1e-4, atol=1e-6)


def _conv_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model cut after its Conv (the batch-statistics reference starts from the Conv's output)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[1:]
    del m.graph.output[:]
    m.graph.output.append(helper.make_tensor_value_info("conv", onnx.TensorProto.FLOAT, [16, C, HW, HW]))
    return m


def identity_dropout_model(ratio: float, n: int = 16, d: int = 256) -> onnx.ModelProto:
    """x -> Gemm(identity weights) -> Dropout(ratio, training_mode=True): the output is the dropped input."""
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["h"]),
             helper.make_node("Dropout", ["h", "ratio", "training_mode"], ["y"])]
    inits = [numpy_helper.from_array(np.eye(d, dtype=np.float32), "w"),
             numpy_helper.from_array(np.zeros(d, np.float32), "b"),
             numpy_helper.from_array(np.array(ratio, np.float32), "ratio"),
             numpy_helper.from_array(np.array(True), "training_mode")]
    graph = helper.make_graph(nodes, "drop", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [n, d])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [n, d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_dropout_is_inverted_and_drops_the_ratio(ratio):
    """MSE against zero targets: loss = mean(y^2). Inverted dropout keeps 1 - ratio of the elements
    scaled by 1 / (1 - ratio), so E[loss] = mean(x^2) / (1 - ratio); 4096 elements of x = 1 put the
    standard deviation of loss * (1 - ratio) at sqrt(ratio / (1 - ratio) / 4096) < 0.016 (dropping without
    the scaling would give 1 - ratio)."""
    x = np.ones((16, 256), np.float32)
    t = convc.Trainer(identity_dropout_model(ratio), input_shape=x.shape, loss="mse",
                      optimizer=convc.optim.SGD(0.1), seed=1)
    t.lr = 0.0
    for _ in range(3):
        kept = t.step(x, np.zeros_like(x)) * (1 - ratio)
        assert kept == pytest.approx(1.0, abs=0.05)
    np.testing.assert_array_equal(t.predict(x), x)  # inference drops nothing


# --- what PyTorch exports -------------------------------------------------------------------------
def torch_export_training(module, x) -> onnx.ModelProto:
    """torch.onnx.export in training mode (the TorchScript exporter: torch's default one needs onnxscript)."""
    torch = pytest.importorskip("torch")
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, torch.from_numpy(x), f, training=torch.onnx.TrainingMode.TRAINING,
                          input_names=["x"], output_names=["y"], dynamo=False, do_constant_folding=False)
    return onnx.load_from_string(f.getvalue())


def torch_bn_dropout_net():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Dropout(0.3), torch.nn.Conv2d(8, 8, 3, stride=2), torch.nn.BatchNorm2d(8),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Dropout(0.2), torch.nn.Linear(8, CLASSES))


@pytest.mark.slow
def test_pytorch_training_export_infers_like_eval(data):
    """The exported file, compiled for inference, computes PyTorch's eval() output of the same weights."""
    torch = pytest.importorskip("torch")
    x, _ = data
    net = torch_bn_dropout_net().train()
    proto = torch_export_training(net, x)
    bn = [n for n in proto.graph.node if n.op_type == "BatchNormalization"]
    assert bn and all(a.i == 1 for n in bn for a in n.attribute if a.name == "training_mode")
    assert sum(n.op_type == "Dropout" for n in proto.graph.node) == 2
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in proto.graph.initializer}
    net.load_state_dict(weights, strict=False)  # the export ran the net once in training mode
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x)).numpy()
    got = convc.compile(proto).run({"x": x})["y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
