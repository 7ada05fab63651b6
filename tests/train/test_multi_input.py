"""Trainer on models with several inputs: an image through a conv branch and a side vector through a
Gemm, concatenated, then a linear head. x is a list (input order) or a dict by name in step,
compute_gradients, predict and evaluate; input_shape gives one shape per input."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import convc
from train import nets

FULL, PART, HW, SIDE, CLASSES = 16, 11, 8, 4, 5
SHAPES = {"image": (FULL, 3, HW, HW), "side": (FULL, SIDE)}


def two_input_net(bn: bool = False, seed: int = 0) -> onnx.ModelProto:
    """image -> conv3x3 -> [BN] -> ReLU -> global average pool; side -> Gemm -> ReLU; concat -> Gemm."""
    n = nets.Net(seed)
    a = n.conv("image", "conv", 3, 6)
    if bn:
        a = n.bn(a, "bn", 6)
    a = n.node("Flatten", [n.node("GlobalAveragePool", [n.node("Relu", [a])])], axis=1)
    b = n.node("Relu", [n.gemm("side", "side_fc", SIDE, 6)])
    out = n.gemm(n.node("Concat", [a, b], axis=1), "head", 12, CLASSES)
    n.nodes[-1].output[0] = "output"
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, HW, HW]),
              helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", SIDE])]
    g = helper.make_graph(n.nodes, "two_inputs", inputs,
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", CLASSES])],
                          initializer=n.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    assert out
    return m


def data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 3, HW, HW)).astype(np.float32), rng.standard_normal((n, SIDE)).astype(np.float32),
            rng.integers(0, CLASSES, n))


@pytest.fixture(scope="module")
def trainer():
    return convc.Trainer(two_input_net(), input_shape=SHAPES, loss="cross_entropy",
                         optimizer=convc.optim.SGD(0.1, momentum=0.9))


def reference_loss(w: dict[str, np.ndarray], image: np.ndarray, side: np.ndarray, y: np.ndarray) -> float:
    """The net without BatchNorm in float64 numpy, and its mean cross-entropy."""
    x = np.pad(image.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = sum(np.einsum("nchw,oc->nohw", x[:, :, i:i + HW, j:j + HW], w["conv.weight"][:, :, i, j])
               for i in range(3) for j in range(3)) + w["conv.bias"][None, :, None, None]
    a = np.maximum(conv, 0).mean(axis=(2, 3))
    b = np.maximum(side @ w["side_fc.weight"].T + w["side_fc.bias"], 0)
    logits = np.concatenate([a, b], 1) @ w["head.weight"].T + w["head.bias"]
    logits -= logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def test_two_inputs_gradients_match_finite_differences(trainer):
    """compute_gradients with x as a dict: every parameter's gradient against central differences
    of the float64 loss (a few entries each), and the loss itself."""
    image, side, y = data(FULL, 1)
    loss = trainer.compute_gradients({"side": side, "image": image}, y)
    weights = {k: v.astype(np.float64) for k, v in trainer.weights().items()}
    assert loss == pytest.approx(reference_loss(weights, image, side, y), rel=1e-5)
    rng = np.random.default_rng(0)
    grads, slices = trainer.gradients, trainer.gradient_slices
    assert set(slices) == set(weights)
    for name, w in weights.items():
        g = grads[slices[name]].reshape(w.shape)
        for flat in rng.choice(w.size, min(4, w.size), replace=False):
            idx, h = np.unravel_index(flat, w.shape), 1e-5
            plus, minus = dict(weights), dict(weights)
            plus[name], minus[name] = w.copy(), w.copy()
            plus[name][idx] += h
            minus[name][idx] -= h
            fd = (reference_loss(plus, image, side, y) - reference_loss(minus, image, side, y)) / (2 * h)
            assert g[idx] == pytest.approx(fd, rel=2e-3, abs=2e-5), (name, idx)
    trainer.gradients.fill(0.0)


@pytest.mark.slow
def test_two_inputs_match_pytorch(trainer):
    """Five SGD-momentum steps with x as a list (a last one of 11 samples, padded): the losses and
    weights are PyTorch's to float32 drift; predict and evaluate take the same x."""
    torch = pytest.importorskip("torch")
    assert trainer.steps_done == 0  # the other tests leave the weights and momentum as built
    w = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in trainer.weights().items()}
    opt = torch.optim.SGD(list(w.values()), lr=0.1, momentum=0.9)

    def forward(image, side):
        a = torch.relu(torch.nn.functional.conv2d(image, w["conv.weight"], w["conv.bias"], padding=1)).mean((2, 3))
        b = torch.relu(side @ w["side_fc.weight"].T + w["side_fc.bias"])
        return torch.cat([a, b], 1) @ w["head.weight"].T + w["head.bias"]
    for step in range(5):
        image, side, y = data(PART if step == 4 else FULL, 10 + step)
        ours = trainer.step([image, side], y)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(forward(torch.tensor(image, dtype=torch.float64),
                                                         torch.tensor(side, dtype=torch.float64)), torch.tensor(y))
        loss.backward()
        opt.step()
        assert ours == pytest.approx(loss.item(), rel=1e-4), step
    for name, v in trainer.weights().items():
        np.testing.assert_allclose(v, w[name].detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    image, side, y = data(PART + 9, 30)  # two chunks of 16, the last padded
    with torch.no_grad():
        expected = forward(torch.tensor(image, dtype=torch.float64), torch.tensor(side, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(trainer.predict({"image": image, "side": side}), expected, rtol=1e-4, atol=1e-5)
    metrics = trainer.evaluate([image, side], y)
    assert metrics["accuracy"] == float((expected.argmax(1) == y).mean())


@pytest.mark.slow
def test_two_inputs_partial_batch_with_batch_norm(monkeypatch):
    """A last batch of 11 on the step compiled for 16 (every input padded, BatchNorm counting 11
    samples) equals a Trainer compiled for 11, with no compile."""
    from train.test_trainer_features import CompileCounter
    model = two_input_net(bn=True)
    full = convc.Trainer(model, input_shape=[SHAPES["image"], SHAPES["side"]], optimizer=convc.optim.Adam(1e-2))
    part = convc.Trainer(model, input_shape={"image": (PART, 3, HW, HW), "side": (PART, SIDE)},
                         optimizer=convc.optim.Adam(1e-2))
    counter = CompileCounter(monkeypatch)
    for seed in range(3):
        image, side, y = data(PART, seed)
        assert full.step([image, side], y) == pytest.approx(part.step({"image": image, "side": side}, y), rel=1e-5)
    assert counter.count == 0
    a, b = full.state_dict(), part.state_dict()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=5e-5, atol=5e-6, err_msg=name)


def test_wrong_inputs_are_named(trainer):
    image, side, y = data(FULL, 2)
    with pytest.raises(convc.InputError, match=r"2 inputs \['image', 'side'\]"):
        convc.Trainer(two_input_net(), input_shape=(FULL, 3, HW, HW))
    with pytest.raises(convc.InputError, match=r"missing inputs \['side'\]"):
        convc.Trainer(two_input_net(), input_shape={"image": (FULL, 3, HW, HW)})
    with pytest.raises(convc.InputError, match=r"3 shapes, the model has 2 inputs \['image', 'side'\]"):
        convc.Trainer(two_input_net(), input_shape=[(FULL, 3, HW, HW), (FULL, SIDE), (FULL, SIDE)])
    with pytest.raises(convc.InputError, match="batch sizes differ"):
        convc.Trainer(two_input_net(), input_shape=[(FULL, 3, HW, HW), (8, SIDE)])
    with pytest.raises(convc.InputError, match=r"2 inputs \['image', 'side'\]: give x as a list"):
        trainer.step(image, y)
    with pytest.raises(convc.InputError, match=r"x has 1 arrays, the model has 2 inputs \['image', 'side'\]"):
        trainer.compute_gradients([image], y)
    with pytest.raises(convc.InputError, match=r"missing inputs \['side'\], unexpected \['sid'\]"):
        trainer.predict({"image": image, "sid": side})
    with pytest.raises(convc.InputError, match="input 'side' has a batch of 8"):
        trainer.step([image, side[:8]], y)
    with pytest.raises(convc.InputError, match=r"input 'side' has shape \(16, 5\)"):
        trainer.step([image, np.zeros((FULL, 5), np.float32)], y)
