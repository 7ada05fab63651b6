"""Trainer.compute_gradients / gradients / apply_gradients: the step in two native calls around one
gradient buffer (what data-parallel training allreduces), and accumulation over micro-batches."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from train import nets

HW, CLASSES = 32, 10


def small_cnn(bn: bool, dropout: float = 0.0, seed: int = 0):
    """conv3x3-[BN]-ReLU-maxpool2, conv3x3/2-ReLU, [dropout], global average pool, linear: 3x32x32 in."""
    n = nets.Net(seed)
    x = n.conv("input", "conv1", 3, 8)
    if bn:
        x = n.bn(x, "bn1", 8)
    x = n.node("MaxPool", [n.node("Relu", [x])], kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("Relu", [n.conv(x, "conv2", 8, 16, stride=2)])
    if dropout:
        x = n.dropout(x, dropout)
    x = n.node("Flatten", [n.node("GlobalAveragePool", [x])], axis=1)
    x = n.gemm(x, "fc", 16, CLASSES)
    return n.model(["N", 3, HW, HW], x, ["N", CLASSES], "small_cnn")


def batch(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, HW, HW)).astype(np.float32), rng.integers(0, CLASSES, n)


OPTIMIZERS = {"sgd": lambda: convc.optim.SGD(0.05), "momentum": lambda: convc.optim.SGD(0.05, momentum=0.9),
              "adam": lambda: convc.optim.Adam(1e-3)}


def check_split_equals_fused(t: convc.Trainer, n: int = 16, steps: int = 3) -> None:
    """``steps`` of compute_gradients + apply_gradients leave the weights, BN running statistics,
    optimizer state and step counter of as many step() calls, bit for bit; the losses are equal."""
    start = t.state_dict()
    batches = [batch(n, seed) for seed in range(steps)]
    fused_losses = [t.step(x, y) for x, y in batches]
    fused, fused_norm = t.state_dict(), t.last_grad_norm
    t.load_state_dict(start)
    split_losses = []
    for x, y in batches:
        split_losses.append(t.compute_gradients(x, y))
        t.apply_gradients()
    assert split_losses == fused_losses
    assert t.last_grad_norm == fused_norm  # clip_grad_norm: the norm of the buffer is the fused step's
    split = t.state_dict()
    assert t.steps_done == start["step"][0] + steps
    for name in fused:
        np.testing.assert_array_equal(split[name], fused[name], err_msg=name)
    assert any(not np.array_equal(start[n], fused[n]) for n in t.parameters)


@pytest.fixture(scope="module")
def bn_trainer():
    """SGD on a net with BatchNorm and Dropout (its mask seeded by the step counter), batch 16."""
    return convc.Trainer(small_cnn(True, dropout=0.25), input_shape=(16, 3, HW, HW), optimizer=convc.optim.SGD(0.1))


def test_split_step_equals_fused_step_sgd_bn_dropout(bn_trainer):
    check_split_equals_fused(bn_trainer)


NO_DECAY = [{"params": ["bias", "norm"], "weight_decay": 0.0, "lr_scale": 0.5}]


@pytest.mark.slow
@pytest.mark.parametrize("opt, bn, extra", [("momentum", False, {"clip_grad_norm": 0.5}), ("adam", True, {})],
                         ids=["momentum-plain-clipped", "adam-bn_dropout"])
def test_split_step_equals_fused_step(opt, bn, extra):
    """Also with gradient clipping (read from the buffer) and parameter groups."""
    optimizer = convc.optim.SGD(0.05, momentum=0.9, weight_decay=1e-3, groups=NO_DECAY) if extra else OPTIMIZERS[opt]()
    t = convc.Trainer(small_cnn(bn, dropout=0.25 if bn else 0.0), input_shape=(16, 3, HW, HW), optimizer=optimizer,
                      **extra)
    check_split_equals_fused(t)
    assert (t.last_grad_norm is not None) == bool(extra)


def test_gradient_buffer_layout(bn_trainer):
    t = bn_trainer
    g, slices = t.gradients, t.gradient_slices
    assert g.dtype == np.float32 and g.ndim == 1 and g.flags.c_contiguous and g.flags.writeable
    assert list(slices) == t.parameters
    state = t.state_dict()
    ends = 0
    for name, s in slices.items():
        assert s.start >= ends and s.stop - s.start == state[name].size
        assert (g[s].ctypes.data % 64) == 0  # every parameter's gradient starts 64-byte aligned
        ends = s.stop
    assert ends <= g.size


def test_update_reads_the_buffer(bn_trainer):
    """What is in trainer.gradients when apply_gradients runs is what the update uses: plain SGD
    moves each weight by exactly -lr * (the buffer's value); a zeroed buffer changes no weight (SGD
    without weight decay) but still updates BN's running statistics and the step counter."""
    t = bn_trainer
    x, y = batch(16, 5)
    before = t.state_dict()
    t.compute_gradients(x, y)
    assert np.abs(t.gradients).max() > 0
    t.gradients[...] = 0.0
    t.apply_gradients()
    after = t.state_dict()
    for n in t.parameters:
        np.testing.assert_array_equal(after[n], before[n])
    assert t.steps_done == before["step"][0] + 1
    assert not np.array_equal(after["bn1.running_mean"], before["bn1.running_mean"])

    t.compute_gradients(x, y)
    t.gradients[...] = 0.5
    t.apply_gradients()
    lr = np.float32(t.lr)
    for n in t.parameters:
        np.testing.assert_array_equal(t.state_dict()[n], after[n] - lr * np.float32(0.5))


def test_apply_needs_finite_gradients_and_a_compute(bn_trainer):
    t = bn_trainer
    with pytest.raises(convc.InputError, match="compute_gradients first"):
        t.apply_gradients()
    x, y = batch(16, 6)
    t.compute_gradients(x, y)
    before = t.state_dict()
    t.gradients[t.gradient_slices["fc.weight"].start + 3] = np.nan
    with pytest.raises(convc.TrainingError, match="not finite"):
        t.apply_gradients()
    for n, v in t.state_dict().items():
        np.testing.assert_array_equal(v, before[n], err_msg=n)
    with pytest.raises(convc.InputError):  # applied (or refused) once: the buffer is spent
        t.apply_gradients()


@pytest.mark.slow
def test_accumulated_micro_batches_equal_one_batch():
    """Adam, no BatchNorm, batch 32: the split step equals the fused one bit for bit; and 4
    micro-batches of 8 summed with accumulate=True, then scaled by 1/4 (each micro-batch's
    gradient is of its own mean loss), equal one batch of 32 to float32 drift: same gradients,
    same weights after the update (no BatchNorm: its batch statistics differ per micro-batch)."""
    t = convc.Trainer(small_cnn(False), input_shape=(32, 3, HW, HW), optimizer=OPTIMIZERS["adam"]())
    check_split_equals_fused(t, n=32, steps=2)
    start = t.state_dict()
    x, y = batch(32, 7)
    loss32 = t.compute_gradients(x, y)
    g32 = t.gradients.copy()
    t.apply_gradients()
    w32 = t.state_dict()
    t.load_state_dict(start)
    losses = [t.compute_gradients(x[i:i + 8], y[i:i + 8], accumulate=i > 0) for i in range(0, 32, 8)]
    t.gradients[...] *= 0.25
    np.testing.assert_allclose(t.gradients, g32, rtol=1e-4, atol=1e-6 * np.abs(g32).max())
    assert np.mean(losses) == pytest.approx(loss32, rel=1e-5)
    t.apply_gradients()
    for n, v in t.state_dict().items():
        np.testing.assert_allclose(v, w32[n], rtol=1e-5, atol=1e-6, err_msg=n)
