"""The CIFAR ResNet of the wrong-gradient report, at the size it was reported: width 8, stages
(2, 1), batch 16, 3x32x32, BatchNorm in training mode, cross-entropy, SGD; given as ONNX (the path
a PyTorch export takes) to the Trainer and to gradcheck.

The report: the gradients of the first stage came out 2.5e-3 to 1.5e-2 off PyTorch's float64
ones on an AVX-512 machine, while convc's reference of the same graph was right; smaller sizes were
right. The same symptom shows here with stages (2, 2) on the first input of the harness's seed: a
ReLU input whose float64 value is -4.97e-7, in a tensor whose values reach 7.9 (half a float32
ulp), comes out +5.96e-7 in float32, so the compiled step takes the ReLU's other branch at that one
element; BatchNorm's backward then carries it into every gradient upstream (5e-3). That is a
valid float32 result (PyTorch's float32 step rounds such elements either way too), not a
code-generation fault: with the reference taking the same branch the step agrees to 2e-6, and other
inputs agree outright. The harness now tries such branches before it fails a step.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest

import convc
from tests.differential import harness, zoo

SHAPE = (16, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("resnet") / "resnet.onnx"
    zoo.build("resnet", 8).to_onnx(path, SHAPE)
    return str(path)


def batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE).astype(np.float32), rng.integers(0, 10, SHAPE[0])


@pytest.mark.parametrize("layout", [(2, 1), pytest.param((2,), marks=pytest.mark.slow)])
def test_every_gradient_and_update_matches_the_reference(monkeypatch, layout):
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    convc.nn.manual_seed(0)
    model = zoo.ResNet(8, layout)
    harness.training(model, SHAPE, loss="cross_entropy", threads=2).check()
    harness.training(model, SHAPE, loss="cross_entropy", threads=1,
                     optimizer=convc.optim.SGD(0.1, momentum=0.9)).check()


@pytest.mark.slow
def test_a_relu_rounding_across_zero_is_the_reported_difference():
    """Stages (2, 2), batch 16, 32x32, the harness's first input: one ReLU element takes the other
    branch in float32, and that alone explains the 5e-3 gradient difference."""
    convc.nn.manual_seed(0)
    model = zoo.ResNet(8, (2, 2))
    result = harness.training(model, SHAPE, loss="cross_entropy", threads=1)
    assert result.flipped == ["layers.3.relu_1_out[4, 2, 6, 10]"]
    assert result.worst < 1e-5
    assert harness.training(model, SHAPE, loss="cross_entropy", threads=1, seed=1).flipped == []


@pytest.mark.slow
def test_one_trainer_step_applies_the_reference_gradients(resnet_onnx):
    """Trainer (the fused step, default threads) on the ONNX model: with SGD and lr=1, the change
    of every parameter is minus its gradient in the float64 reference of the training graph."""
    from convc.passes.autodiff.training import build_training

    from convc.reference import run_reference
    from convc.driver import load_forward
    x, y = batch()
    trainer = convc.Trainer(resnet_onnx, input_shape=SHAPE, optimizer=convc.optim.SGD(1.0))
    before = trainer.weights()
    trainer.step(x, y)
    after = trainer.weights()
    step = build_training(load_forward(resnet_onnx, SHAPE), loss="cross_entropy")
    feeds = {n: np.asarray(v, np.float64) if np.asarray(v).dtype == np.float32 else v
             for n, v in step.initial.items()}
    feeds.update({step.x: x.astype(np.float64), step.labels: y, step.lr: np.zeros(1)})
    ref = run_reference(step.plan.graph, feeds)
    top = max(np.abs(ref[step.grads[p]]).max() for p in step.params)
    for p in step.params:
        g = ref[step.grads[p]]
        err = np.abs((before[p] - after[p]).astype(np.float64) - g).max() / max(np.abs(g).max(), 1e-3 * top)
        assert err < 1e-4, f"{p}: the step moved it by -grad with a relative error of {err:.2e}"


@pytest.mark.slow
def test_gradcheck_at_the_size_people_train(resnet_onnx):
    """gradcheck samples coordinates, so it runs at the batch and image size of training."""
    x, y = batch(1)
    result = convc.gradcheck(resnet_onnx, x, y, samples=3)
    assert result.ok, str(result)
    assert sum(result.checked.values()) == 3 * len(result.checked)


@pytest.mark.slow
def test_against_pytorch_float64(resnet_onnx):
    """The same weights in PyTorch (float64, training mode): every gradient within float32 error."""
    torch = pytest.importorskip("torch")
    from onnx import numpy_helper
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(resnet_onnx).graph.initializer}
    x, y = batch()
    tensors = {n: torch.tensor(v.astype(np.float64), requires_grad=True) for n, v in weights.items()
               if not n.endswith(("running_mean", "running_var"))}
    F = torch.nn.functional

    def bn(h, name):
        return F.batch_norm(h, None, None, tensors[f"{name}.weight"], tensors[f"{name}.bias"], training=True,
                            eps=1e-5)

    def conv(h, name, stride=1, pad=1):
        return F.conv2d(h, tensors[f"{name}.weight"], stride=stride, padding=pad)

    h = F.relu(bn(conv(torch.tensor(x, dtype=torch.float64), "conv1"), "bn1"))
    for i, stride in enumerate((1, 1, 2)):
        p = f"layers.{i}"
        o = F.relu(bn(conv(h, f"{p}.conv1", stride), f"{p}.bn1"))
        o = bn(conv(o, f"{p}.conv2"), f"{p}.bn2")
        short = bn(conv(h, f"{p}.short", stride, 0), f"{p}.short_bn") if f"{p}.short.weight" in tensors else h
        h = F.relu(o + short)
    logits = F.linear(h.mean((2, 3)), tensors["fc.weight"], tensors["fc.bias"])
    F.cross_entropy(logits, torch.tensor(y)).backward()
    trainer = convc.Trainer(resnet_onnx, input_shape=SHAPE, optimizer=convc.optim.SGD(1.0))
    before = trainer.weights()
    trainer.step(x, y)
    after = trainer.weights()
    top = max(float(t.grad.abs().max()) for t in tensors.values())
    for name, t in tensors.items():
        g = t.grad.numpy()
        err = np.abs((before[name] - after[name]).astype(np.float64) - g).max() / max(np.abs(g).max(), 1e-3 * top)
        assert err < 1e-4, f"{name}: relative error {err:.2e} against PyTorch float64"
