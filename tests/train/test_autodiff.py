"""Whole models: compiled gradients against finite differences (convc.gradcheck), the structure of
the training graph, and the training step planned as one native function."""
from __future__ import annotations

import numpy as np
import pytest
from convc.frontend.onnx import import_onnx
from convc.passes.autodiff.training import build_training

import convc
from convc.ops import OpKind
from train import nets


@pytest.mark.parametrize("model,shape,loss", [
    (nets.digits_cnn(dropout=0.3), (4, 1, 8, 8), "cross_entropy"),
    (nets.digits_cnn(dropout=0.0, softmax=True), (3, 1, 8, 8), "cross_entropy"),
    (nets.residual_net(), (3, 2, 6, 6), "cross_entropy"),
    (nets.mlp(), (5, 3, 2, 2), "bce"),
    (nets.mlp(activation="Relu"), (5, 3, 2, 2), "mse"),
    (nets.pool_net(), (3, 1, 5, 5), "cross_entropy"),
    (nets.autoencoder(), (2, 1, 8, 8), "bce"),
], ids=["digits-dropout", "digits-softmax", "residual", "mlp-bce", "mlp-mse", "pools", "autoencoder"])
@pytest.mark.slow
def test_gradcheck(rng, model, shape, loss):
    x = rng.standard_normal(shape).astype(np.float32)
    result = convc.gradcheck(model, x, loss=loss, samples=6, step=3)
    assert result.ok, str(result)
    assert result.worst in result.errors and set(result.errors) == set(result.checked)


@pytest.mark.slow
def test_gradcheck_reports_a_wrong_gradient(rng, monkeypatch):
    """Break one rule (ReLU passing its gradient straight through): gradcheck must name a parameter
    upstream of it as the worst."""
    from convc.passes.autodiff import core
    monkeypatch.setitem(core.GRADIENTS, OpKind.RELU, lambda ctx, op, dys: [dys[0]])
    x = rng.standard_normal((4, 1, 8, 8)).astype(np.float32)
    result = convc.gradcheck(nets.digits_cnn(dropout=0.0), x, samples=6)
    assert not result.ok
    assert result.worst.startswith(("conv", "bn"))
    assert "FAILED" in str(result) and result.worst in str(result)


def test_autoencoder_trains():
    """ConvTranspose end to end: an autoencoder learns to reproduce its inputs (bce on pixels)."""
    rng = np.random.default_rng(0)
    x = (rng.uniform(0, 1, (16, 1, 8, 8)) > 0.5).astype(np.float32)
    t = convc.Trainer(nets.autoencoder(), input_shape=x.shape, loss="bce", optimizer=convc.optim.Adam(0.02))
    losses = [t.step(x, x) for _ in range(60)]
    assert losses[-1] < 0.8 * losses[0]


def test_training_graph_structure():
    g = import_onnx(nets.digits_cnn(dropout=0.25, softmax=True), batch=8)
    step = build_training(g, loss="cross_entropy", optimizer=convc.optim.Adam(1e-3))
    kinds = [op.kind for op in step.plan.order]
    # the Softmax is folded into the loss; BN and Dropout run in training mode
    assert OpKind.SOFTMAX not in kinds and OpKind.BATCH_NORM not in kinds and OpKind.DROPOUT not in kinds
    assert kinds.count(OpKind.BATCH_NORM_TRAIN) == 2 and kinds.count(OpKind.DROPOUT_TRAIN) == 1
    # conv1's input is the data: no gradient is computed for it (only conv2 needs dX)
    assert kinds.count(OpKind.CONV_GRAD_INPUT) == 1 and kinds.count(OpKind.CONV_GRAD_WEIGHT) == 2
    # 8 parameters (2 x conv weight+bias, 2 x BN scale+bias... + fc weight+bias = 10), one update each
    assert sorted(step.params) == sorted(["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight",
                                          "conv2.bias", "bn2.weight", "bn2.bias", "fc.weight", "fc.bias"])
    assert kinds.count(OpKind.ADAM_UPDATE) == 10 and kinds.count(OpKind.BATCH_NORM_RUNNING_UPDATE) == 2
    # the updates, then the running statistics, then the step counter close the step
    tail = kinds[-14:]
    assert tail[0] is OpKind.ALL_FINITE and tail[-1] is OpKind.STEP_INCREMENT
    assert step.roles["conv1.weight"] == "weight" and step.roles["conv1.bias"] == "bias"
    assert step.roles["bn1.weight"] == "norm" and step.roles["bn1.running_mean"] == "running"
    # parameters and state are inputs of the step, updated in place: each update output shares its buffer
    mem = step.plan.memory
    for op in step.plan.order:
        if op.kind is OpKind.ADAM_UPDATE:
            assert mem.buffers[op.outputs[0]] == mem.buffers[op.inputs[3]]
            assert mem.buffers[op.outputs[1]] == mem.buffers[op.inputs[5]]
            assert mem.buffers[op.inputs[3]].kind == "input"
    step.graph.verify()


def test_no_update_reads_a_stale_parameter():
    """Every op reading a parameter runs before that parameter's update (it is overwritten in place)."""
    g = import_onnx(nets.residual_net(), batch=2)
    step = build_training(g, loss="cross_entropy", optimizer=convc.optim.SGD(0.1, momentum=0.9))
    position = {op.name: i for i, op in enumerate(step.plan.order)}
    for op in step.plan.order:
        if op.kind is OpKind.MOMENTUM_UPDATE:
            p = op.inputs[3]
            readers = [r for r in step.graph.consumers(p) if r is not op]
            assert readers and all(position[r.name] < position[op.name] for r in readers)


@pytest.mark.slow
def test_fused_graph_is_unfused_for_training(rng):
    """A Graph whose Conv/Gemm already carry fused Add/Relu epilogues trains like the unfused one."""
    from convc.passes.fusion import fuse_epilogues
    g = import_onnx(nets.residual_net(), batch=3)
    fused = fuse_epilogues(g.copy())
    assert any(not op.attrs.epilogue.empty for op in fused.ops() if op.kind is OpKind.CONV)
    x = rng.standard_normal((3, 2, 6, 6)).astype(np.float32)
    y = rng.integers(0, 5, 3)
    a = convc.gradcheck(g, x, y, samples=4)
    b = convc.gradcheck(fused, x, y, samples=4)
    assert a.ok and b.ok, (str(a), str(b))
    for (p, i, got, fd), (p2, i2, got2, fd2) in zip(a.details, b.details):
        assert (p, i) == (p2, i2) and abs(got - got2) <= 1e-5 * max(1.0, abs(got))


def test_gradcheck_refuses_what_inference_refuses(rng):
    """float64 inputs, float labels for cross-entropy and float64 targets are InputErrors, as in
    inference and the Trainer: nothing is converted silently."""
    x = rng.standard_normal((3, 1, 8, 8))
    with pytest.raises(convc.InputError, match="float64, expected float32"):
        convc.gradcheck(nets.digits_cnn(dropout=0.0), x, samples=1)
    with pytest.raises(convc.InputError, match="integer class indices"):
        convc.gradcheck(nets.digits_cnn(dropout=0.0), x.astype(np.float32), np.zeros(3), samples=1)
    with pytest.raises(convc.InputError, match="targets has dtype float64"):
        convc.gradcheck(nets.mlp(), rng.standard_normal((5, 3, 2, 2)).astype(np.float32), np.zeros((5, 3)),
                        loss="mse", samples=1)


def modern_ops_net(batch: int = 16, h: int = 11, w: int = 9):
    """Conv -> PRelu -> nearest Resize x2 -> Slice (TCN's chomp of the last column) -> x / (mean over
    channels of |x|^1.5 + 1) (Pow with a constant exponent, a non-spatial ReduceMean, Div) -> LayerNorm over
    (C, H, W) -> Erf GELU -> ReduceMax over H, W -> Gemm -> LogSoftmax: the ops whose gradients are
    compositions, imported from ONNX as PyTorch writes them."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(5)
    c, hh, ww = 4, 2 * h, 2 * w - 1
    inits = {"w": rng.standard_normal((c, 3, 3, 3)) * 0.4, "slope": np.full((c, 1, 1), 0.2),
             "scales": np.array([1, 1, 2, 2]), "starts": np.array([0]), "ends": np.array([-1]),
             "axes": np.array([3]), "power": np.array(1.5), "one": np.array(1.0), "half": np.array(0.5),
             "rsqrt2": np.array(2 ** -0.5), "ln_scale": 1 + 0.1 * rng.standard_normal((c, hh, ww)),
             "fc_w": rng.standard_normal((5, c)) * 0.5, "fc_b": np.zeros(5)}
    ints = {"starts", "ends", "axes"}
    node = helper.make_node
    nodes = [node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             node("PRelu", ["conv", "slope"], ["prelu"]),
             node("Resize", ["prelu", "", "scales"], ["up"], mode="nearest"),
             node("Slice", ["up", "starts", "ends", "axes"], ["chomp"]),
             node("Abs", ["chomp"], ["magnitude"]), node("Pow", ["magnitude", "power"], ["sq"]),
             node("ReduceMean", ["sq"], ["energy"], axes=[1], keepdims=1),
             node("Add", ["energy", "one"], ["denom"]),
             node("Div", ["chomp", "denom"], ["normed"]),
             node("LayerNormalization", ["normed", "ln_scale"], ["ln"], axis=1),
             node("Mul", ["ln", "rsqrt2"], ["ln_s"]), node("Erf", ["ln_s"], ["erf"]),
             node("Add", ["erf", "one"], ["erf1"]), node("Mul", ["ln", "erf1"], ["gelu2"]),
             node("Mul", ["gelu2", "half"], ["gelu"]),
             node("ReduceMax", ["gelu"], ["peak"], axes=[2, 3], keepdims=0),
             node("Gemm", ["peak", "fc_w", "fc_b"], ["logits"], transB=1),
             node("LogSoftmax", ["logits"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "modern_ops", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 5])],
        [numpy_helper.from_array(v.astype(np.int64 if k in ints else np.float32), k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.slow
def test_gradcheck_through_composed_gradient_rules(rng):
    """Every parameter's gradient flows through the composed rules (PRelu, Resize, Slice, Pow, ReduceMean,
    Div, LayerNorm, Erf, ReduceMax, LogSoftmax), at batch 16 and odd sizes."""
    x = rng.standard_normal((16, 3, 11, 9)).astype(np.float32)
    kinds = {op.kind for op in import_onnx(modern_ops_net(), batch=16).ops()}
    assert {OpKind.PRELU, OpKind.RESIZE, OpKind.SLICE, OpKind.POW, OpKind.REDUCE_SUM, OpKind.DIV, OpKind.LAYER_NORM,
            OpKind.ERF, OpKind.REDUCE_MAX, OpKind.LOG_SOFTMAX} <= kinds
    result = convc.gradcheck(modern_ops_net(), x, samples=6)
    assert result.ok, str(result)
    assert {"w", "slope", "fc_w", "fc_b"} <= set(result.checked)  # PRelu's slopes train
