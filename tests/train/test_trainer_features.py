"""convc.Trainer features: partial batches without a compile, the losses of convc.Loss end to end."""
from __future__ import annotations

import numpy as np
import pytest

import convc
import convc.train
from convc import checkpoint
from train import nets
from train.test_gradient_api import CLASSES, HW, batch, small_cnn

FULL, PART = 16, 11


class CompileCounter:
    """Counts the models the Trainer compiles (convc.train.compile_bound, the driver's entry)."""

    def __init__(self, monkeypatch):
        self.count = 0
        real = convc.train.compile_bound

        def counting(*args, **kwargs):
            self.count += 1
            return real(*args, **kwargs)
        monkeypatch.setattr(convc.train, "compile_bound", counting)


OPTIONS = convc.Loss("cross_entropy", label_smoothing=0.1, weight=[1.0 + 0.2 * k for k in range(CLASSES)],
                     ignore_index=-100)


@pytest.fixture(scope="module")
def trainers():
    """The same net (no BatchNorm) and loss compiled at batch 16 and at batch 11."""
    def make(n):
        return convc.Trainer(small_cnn(False), input_shape=(n, 3, HW, HW), loss=OPTIONS,
                             optimizer=convc.optim.SGD(0.05, momentum=0.9))
    return make(FULL), make(PART)


def labels_with_ignored(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = batch(n, seed)
    y[::5] = -100
    return x, y


def test_partial_batch_trains_without_compiling(trainers, monkeypatch):
    """A batch of 11 on the step compiled for 16 (padded, the loss counting 11 samples) equals the
    step compiled for 11 to float32 drift, for step() and for compute_gradients; nothing compiles."""
    full, part = trainers
    full.load_state_dict(part.state_dict())
    full.compute_gradients(*labels_with_ignored(FULL, 0))  # compiles the split step at 16 before counting
    full.apply_gradients()
    counter = CompileCounter(monkeypatch)
    full.load_state_dict(part.state_dict())
    for seed in range(3):
        x, y = labels_with_ignored(PART, seed + 1)
        assert full.step(x, y) == pytest.approx(part.step(x, y), rel=1e-5)
    x, y = labels_with_ignored(PART, 9)
    assert full.compute_gradients(x, y) == pytest.approx(part.step(x, y), rel=1e-5)
    full.apply_gradients()
    assert counter.count == 0
    a, b = full.state_dict(), part.state_dict()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=2e-5, atol=2e-6, err_msg=name)


def test_loss_options_end_to_end(trainers):
    """The loss a step returns is the loss op's reference on the model's output (PyTorch's
    CrossEntropyLoss with label smoothing, class weights and ignore_index: tests/train/test_losses.py);
    evaluate() agrees and leaves the ignored samples out of the accuracy."""
    _, part = trainers
    x, y = labels_with_ignored(PART, 20)
    logits = part.predict(x).astype(np.float64)  # no BatchNorm or Dropout: the training forward
    from convc.ops import OpKind, op_def
    mapped = np.where(y == -100, -1, y)
    expected = op_def(OpKind.SOFTMAX_CROSS_ENTROPY).reference(OPTIONS.attrs(), logits, mapped)[0][0]
    metrics = part.evaluate(x, y)
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["accuracy"] == float((logits.argmax(1) == y)[y != -100].mean())
    assert part.step(x, y) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(convc.InputError, match="out of range"):
        part.step(x, np.full(PART, -1))  # only ignore_index is ignored


def test_loss_settings_are_checked_and_saved(tmp_path, trainers):
    with pytest.raises(convc.InputError, match="no option"):
        convc.Loss("mse", label_smoothing=0.1)
    with pytest.raises(convc.InputError, match="unknown loss"):
        convc.Loss("hinge")
    with pytest.raises(convc.InputError, match="label_smoothing"):
        convc.Loss("cross_entropy", label_smoothing=1.5)
    _, part = trainers
    part.save(tmp_path / "ckpt.npz")
    part.load_state(tmp_path / "ckpt.npz")  # the loss's options are among the settings a checkpoint must match
    header, _ = checkpoint.read(tmp_path / "ckpt.npz")
    assert convc.Loss.of(header["loss"]) == OPTIONS  # what Trainer.load rebuilds the loss from
    assert convc.Loss.of("mse").settings() == "mse"


def test_step_returns_outputs_and_accuracy(trainers):
    """step(..., return_outputs=True): the model's outputs on the batch (here the training forward
    is the eval one: no BatchNorm or Dropout) and the accuracy over the counted samples; for a
    partial batch on the step compiled for 16, the 11 samples' outputs."""
    full, part = trainers
    for t in (part, full):
        x, y = labels_with_ignored(PART, 30)
        expected = t.predict(x)
        r = t.step(x, y, return_outputs=True)
        assert isinstance(r, convc.train.StepOutputs) and r.outputs.shape == (PART, CLASSES)
        np.testing.assert_allclose(r.outputs, expected, rtol=1e-5, atol=1e-6)
        counted = y != -100
        assert r.accuracy == float((expected.argmax(1) == y)[counted].mean())
    g = full.compute_gradients(x, y, return_outputs=True)  # the split step, compiled for 16, on 11 samples
    np.testing.assert_allclose(g.outputs, full.predict(x), rtol=1e-5, atol=1e-6)
    full.apply_gradients()


@pytest.mark.slow
def test_frozen_batch_norm(monkeypatch):
    """freeze_bn: BatchNorm normalizes with its running statistics, which stay as they are, while
    its scale and shift and the other weights train; the samples are then independent, so a
    partial batch runs on the compiled step (no compile) with the small batch's loss."""
    t = convc.Trainer(small_cnn(True), input_shape=(FULL, 3, HW, HW), optimizer=convc.optim.SGD(0.05), freeze_bn=True)
    before = t.state_dict()
    x, y = batch(FULL, 40)
    eval_loss = t.evaluate(x, y)["loss"]
    assert t.step(x, y) == pytest.approx(eval_loss, rel=1e-5)  # the eval-mode forward
    counter = CompileCounter(monkeypatch)
    eval_loss = t.evaluate(x[:PART], y[:PART])["loss"]
    assert t.step(x[:PART], y[:PART]) == pytest.approx(eval_loss, rel=1e-5)
    assert counter.count == 0
    after = t.state_dict()
    for name in ("bn1.running_mean", "bn1.running_var"):
        np.testing.assert_array_equal(after[name], before[name])
    for name in ("bn1.weight", "bn1.bias", "conv1.weight"):
        assert not np.array_equal(after[name], before[name])


def two_headed(seed: int = 0):
    """A conv trunk (Tanh, average pools: smooth, for finite differences) with a 10-class head and a 3-value
    regression head: two outputs."""
    import onnx
    from onnx import TensorProto, helper
    n = nets.Net(seed)
    x = n.node("AveragePool", [n.node("Tanh", [n.conv("input", "conv1", 3, 8)])], kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("Flatten", [n.node("GlobalAveragePool", [n.node("Tanh", [n.conv(x, "conv2", 8, 16)])])], axis=1)
    a, b = n.gemm(x, "cls", 16, CLASSES), n.gemm(x, "reg", 16, 3)
    g = helper.make_graph(n.nodes, "two_headed", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                 ["N", 3, HW, HW])],
                          [helper.make_tensor_value_info(a, TensorProto.FLOAT, ["N", CLASSES]),
                           helper.make_tensor_value_info(b, TensorProto.FLOAT, ["N", 3])], initializer=n.inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@pytest.mark.slow
def test_two_outputs_weighted_losses():
    """A loss per output, trained on their weighted sum: the step's loss is 1.0 * cross-entropy
    (label smoothing) + 0.5 * Huber on the step's own outputs; a weight's gradient matches finite
    differences of that sum (float32 losses, central differences of 2e-2); a partial batch and the
    split step work as for one output."""
    from convc.ops import OpKind, op_def
    losses = [convc.Loss("cross_entropy", label_smoothing=0.1), convc.Loss("huber", delta=0.5)]
    t = convc.Trainer(two_headed(), input_shape=(FULL, 3, HW, HW), loss=losses, loss_weights=[1.0, 0.5],
                      optimizer=convc.optim.SGD(0.05))
    x, y = batch(FULL, 50)
    target = np.random.default_rng(3).standard_normal((FULL, 3)).astype(np.float32)
    before = t.state_dict()
    r = t.compute_gradients(x, [y, target], return_outputs=True)
    logits, reg = (o.astype(np.float64) for o in r.outputs)
    ce = op_def(OpKind.SOFTMAX_CROSS_ENTROPY).reference(losses[0].attrs(), logits, y)[0][0]
    from convc.ops.loss import LossAttrs
    huber = op_def(OpKind.MSE_LOSS).reference(LossAttrs("huber", delta=0.5), reg, target)[0][0]
    assert r.loss == pytest.approx(ce + 0.5 * huber, rel=1e-5)
    grads, where = t.gradients.copy(), t.gradient_slices
    for name in ("reg.weight", "cls.weight", "conv1.weight"):
        w = before[name].reshape(-1)
        for i in (0, 7):
            diffs = []
            for h in (2e-2, -2e-2):
                moved = dict(before)
                moved[name] = (w + h * (np.arange(w.size) == i)).astype(np.float32).reshape(before[name].shape)
                t.load_state_dict(moved)
                diffs.append(t.compute_gradients(x, [y, target]))
            fd = (diffs[0] - diffs[1]) / 4e-2
            assert grads[where[name]][i] == pytest.approx(fd, rel=3e-2, abs=2e-4), (name, i)
    t.load_state_dict(before)
    t.compute_gradients(x, [y, target])
    t.apply_gradients()
    assert t.step(x[:PART], [y[:PART], target[:PART]]) > 0  # a partial batch: padded, both losses count 11
    with pytest.raises(convc.InputError, match="2 targets"):
        t.step(x, y)


def bn_batch(shape: tuple[int, ...], classes: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, classes, n)


# a ResNet-style block with BatchNorm (SGD with momentum); conv-BN twice with Dropout (Adam)
BN_NETS = {"residual_bn": (nets.residual_net, (2, 6, 6), 5, lambda: convc.optim.SGD(0.05, momentum=0.9)),
           "bn_dropout": (lambda: nets.digits_cnn(hw=8, c1=8, c2=8, dropout=0.3), (1, 8, 8), 10,
                          lambda: convc.optim.Adam(1e-2))}


@pytest.mark.slow
@pytest.mark.parametrize("net", list(BN_NETS))
def test_partial_batch_with_batch_norm_trains_without_compiling(net, monkeypatch):
    """BatchNorm in training mode counts the first ``rows`` samples of the padded batch: its batch
    statistics, running-statistics update (the unbiased n/(n-1) with n = rows*H*W) and gradient are
    the small batch's, so a last batch of 11 on the step compiled for 16 equals a Trainer compiled
    for 11 (loss, weights, running statistics, optimizer state), through step() and
    compute_gradients/apply_gradients, and nothing compiles."""
    make_model, shape, classes, optimizer = BN_NETS[net]
    model = make_model()
    full, part = (convc.Trainer(model, input_shape=(n,) + shape, optimizer=optimizer(), seed=3) for n in (FULL, PART))
    full.compute_gradients(*bn_batch(shape, classes, FULL, 0))  # compiles the split step at 16 before counting
    full.apply_gradients()
    full.load_state_dict(part.state_dict())
    counter = CompileCounter(monkeypatch)
    for seed in range(3):
        x, y = bn_batch(shape, classes, PART, seed + 1)
        assert full.step(x, y) == pytest.approx(part.step(x, y), rel=1e-5)
    x, y = bn_batch(shape, classes, PART, 9)
    assert full.compute_gradients(x, y) == pytest.approx(part.step(x, y), rel=1e-5)
    full.apply_gradients()
    assert counter.count == 0
    a, b = full.state_dict(), part.state_dict()
    assert any(n.endswith("running_var") for n in a)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=5e-5, atol=5e-6, err_msg=name)


def test_batch_norm_references_count_rows():
    """The references of BatchNormTrain, BatchNormGrad and BatchNormRunningUpdate with ``rows``
    equal those of the first ``rows`` samples alone (the padded ones: finite outputs, no gradient,
    and the unbiased factor n/(n-1) with n = rows*H*W)."""
    from convc.ops import OpKind, op_def
    from convc.ops.norm import BatchNormAttrs
    from convc.ops.norm_grad import RunningUpdateAttrs
    rng = np.random.default_rng(0)
    x, dy = rng.standard_normal((2, 6, 3, 4, 5)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.uniform(-1, 1, 3).astype(np.float32)
    rows, attrs = np.array([4], np.int64), BatchNormAttrs(epsilon=1e-3)
    train, grad = op_def(OpKind.BATCH_NORM_TRAIN).reference, op_def(OpKind.BATCH_NORM_GRAD).reference
    y, mean, invstd = train(attrs, x, scale, bias, rows)
    y4, mean4, invstd4 = train(attrs, x[:4], scale, bias)
    np.testing.assert_array_equal(y[:4], y4)
    np.testing.assert_array_equal(mean, mean4)
    np.testing.assert_array_equal(invstd, invstd4)
    assert np.isfinite(y).all()
    dx, dscale, dbias = grad(attrs, x, scale, mean, invstd, dy, rows)
    dx4, dscale4, dbias4 = grad(attrs, x[:4], scale, mean, invstd, dy[:4])
    np.testing.assert_array_equal(dx[:4], dx4)
    assert not dx[4:].any()
    np.testing.assert_array_equal(dscale, dscale4)
    np.testing.assert_array_equal(dbias, dbias4)
    update = op_def(OpKind.BATCH_NORM_RUNNING_UPDATE).reference
    ones, ok = np.ones(3, np.float32), np.ones(1, np.float32)
    _, var = update(RunningUpdateAttrs(0.0, 1e-3, 6 * 20, per_sample=20), ones, ones, mean, invstd, ok, rows)
    expected = (x[:4].astype(np.float64).var(axis=(0, 2, 3)) * 80 / 79)
    np.testing.assert_allclose(var, expected, rtol=1e-5)
