"""Learning-rate schedules (convc/schedules.py): PyTorch's formulas and step semantics, checked
against torch.optim.lr_scheduler when torch is importable and against hand-computed values always;
a schedule drives a compiled Trainer's learning rate without recompiling."""
from __future__ import annotations

import math

import numpy as np
import pytest

import convc
from convc.optim import (CosineAnnealingLR, ExponentialLR, LinearLR, MultiStepLR, OneCycleLR, ReduceLROnPlateau,
                         SequentialLR, StepLR)
from convc.schedules import from_state


class FakeTrainer:
    """What a schedule uses of a Trainer: ``lr`` (held as float32, as the compiled step reads it)."""

    def __init__(self, lr: float):
        self._lr = np.array([lr], np.float32)
        self._lr_value = lr
        self.initial_lr = None
        self.scheduler = None

    @property
    def lr(self) -> float:
        return float(self._lr[0])

    @lr.setter
    def lr(self, value: float) -> None:
        self._lr[0] = value
        self._lr_value = float(value)


# (convc schedule, torch schedule, epochs); the torch one is built by name with the same arguments
CASES = {
    "step": (lambda t: StepLR(t, step_size=3, gamma=0.5), "StepLR", dict(step_size=3, gamma=0.5), 12),
    "multistep": (lambda t: MultiStepLR(t, [2, 5, 5, 9], gamma=0.1), "MultiStepLR",
                  dict(milestones=[2, 5, 5, 9], gamma=0.1), 12),
    "exponential": (lambda t: ExponentialLR(t, 0.9), "ExponentialLR", dict(gamma=0.9), 10),
    "cosine": (lambda t: CosineAnnealingLR(t, T_max=10, eta_min=1e-3), "CosineAnnealingLR",
               dict(T_max=10, eta_min=1e-3), 25),  # past T_max it rises again
    "linear": (lambda t: LinearLR(t, start_factor=0.1, total_iters=4), "LinearLR",
               dict(start_factor=0.1, total_iters=4), 8),
    "onecycle": (lambda t: OneCycleLR(t, max_lr=0.4, total_steps=20), "OneCycleLR",
                 dict(max_lr=0.4, total_steps=20, cycle_momentum=False), 19),
    "onecycle_linear_3phase": (lambda t: OneCycleLR(t, max_lr=0.4, epochs=3, steps_per_epoch=7, pct_start=0.25,
                                                    anneal_strategy="linear", three_phase=True),
                               "OneCycleLR", dict(max_lr=0.4, epochs=3, steps_per_epoch=7, pct_start=0.25,
                                                  anneal_strategy="linear", three_phase=True,
                                                  cycle_momentum=False), 20),
}


def convc_lrs(make, epochs: int, lr: float = 0.1) -> list[float]:
    t = FakeTrainer(lr)
    s = make(t)
    out = [s.get_last_lr()[0]]
    assert t.lr == np.float32(out[0]) and t.scheduler is s
    for _ in range(epochs):
        s.step()
        out.append(s.get_last_lr()[0])
        assert t.lr == np.float32(out[-1])  # the compiled step reads it as float32
    return out


def torch_lrs(build, epochs: int, lr: float = 0.1) -> list[float]:
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    s = build(torch, opt)
    out = [opt.param_groups[0]["lr"]]
    for _ in range(epochs):
        opt.step()
        s.step()
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case):
    make, name, kwargs, epochs = CASES[case]
    ours = convc_lrs(make, epochs)
    theirs = torch_lrs(lambda torch, opt: getattr(torch.optim.lr_scheduler, name)(opt, **kwargs), epochs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_warmup_then_cosine_matches_torch_sequential():
    def ours(t):
        return SequentialLR(t, [LinearLR(t, 0.01, total_iters=5), CosineAnnealingLR(t, T_max=15)], milestones=[5])

    def theirs(torch, opt):
        sch = torch.optim.lr_scheduler
        return sch.SequentialLR(opt, [sch.LinearLR(opt, 0.01, total_iters=5), sch.CosineAnnealingLR(opt, T_max=15)],
                                milestones=[5])
    np.testing.assert_allclose(convc_lrs(ours, 22), torch_lrs(theirs, 22), rtol=1e-12, atol=1e-15)


def plateau_metrics() -> list[float]:
    return [5.0, 4.0, 4.0, 3.9999, 4.1, 4.2, 4.3, 3.0, 3.0, 3.0, 3.0, 3.0, 2.9, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize("kwargs", [dict(patience=2), dict(patience=1, cooldown=2, factor=0.5, min_lr=0.02),
                                    dict(mode="max", patience=0, threshold=0.5, threshold_mode="abs")])
def test_plateau_matches_torch(kwargs):
    torch = pytest.importorskip("torch")
    t = FakeTrainer(0.1)
    s = ReduceLROnPlateau(t, **kwargs)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    assert t.lr == np.float32(0.1)
    for m in plateau_metrics():
        s.step(m)
        ts.step(m)
        assert s.get_last_lr()[0] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        assert s.num_bad_epochs == ts.num_bad_epochs and s.best == ts.best


def test_hand_computed_values():
    """The formulas, without torch."""
    assert convc_lrs(lambda t: StepLR(t, 2, gamma=0.5), 5) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    assert convc_lrs(lambda t: MultiStepLR(t, [1, 3, 3], 0.1), 4) == pytest.approx([0.1, 0.01, 0.01, 1e-4, 1e-4])
    assert convc_lrs(lambda t: CosineAnnealingLR(t, 4), 4) == pytest.approx(
        [0.1, 0.05 * (1 + math.cos(math.pi / 4)), 0.05, 0.05 * (1 + math.cos(3 * math.pi / 4)), 0.0])
    assert convc_lrs(lambda t: LinearLR(t, 0.25, 1.0, 3), 4) == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    # 1cycle, 10 steps, pct 0.3: up over steps 0..2 (end_step 2), down over 2..9
    lrs = convc_lrs(lambda t: OneCycleLR(t, max_lr=1.0, total_steps=10, anneal_strategy="linear"), 9)
    assert lrs[0] == pytest.approx(0.04) and lrs[1] == pytest.approx(0.52) and lrs[2] == pytest.approx(1.0)
    assert lrs[9] == pytest.approx(0.04 / 1e4) and lrs[5] == pytest.approx(1.0 + (0.04e-4 - 1.0) * 3 / 7)
    warm = convc_lrs(lambda t: SequentialLR(t, [LinearLR(t, 0.5, total_iters=2), StepLR(t, 1, 0.5)], [2]), 4)
    assert warm == pytest.approx([0.05, 0.075, 0.1, 0.05, 0.025])
    t = FakeTrainer(1.0)
    s = ReduceLROnPlateau(t, patience=1, factor=0.5)
    for m in [3, 3, 3, 2, 2, 2]:
        s.step(m)
    assert t.lr == 0.25  # bad epochs 1, 2 (-> 0.5), then 2 is better, 1 bad, 2 bad (-> 0.25)


def test_state_dict_round_trip():
    t = FakeTrainer(0.1)
    s = SequentialLR(t, [LinearLR(t, 0.1, total_iters=3), CosineAnnealingLR(t, T_max=10)], milestones=[3])
    for _ in range(6):
        s.step()
    state = s.state_dict()
    t2 = FakeTrainer(0.1)
    t2.initial_lr = t.initial_lr
    t2.lr = t.lr
    s2 = from_state(t2, state)
    assert t2.lr == t.lr and s2.last_epoch == 6
    for _ in range(5):
        s.step()
        s2.step()
        assert s2.get_last_lr() == s.get_last_lr() and t2.lr == t.lr
    p = ReduceLROnPlateau(t, patience=0)
    p.step(1.0)
    p.step(2.0)
    with pytest.raises(convc.InputError, match="patience is 1 here, 0 in the state"):
        ReduceLROnPlateau(FakeTrainer(0.1), patience=1).load_state_dict(p.state_dict())
    with pytest.raises(convc.InputError, match="ReduceLROnPlateau cannot load into a StepLR"):
        StepLR(FakeTrainer(0.1), 2).load_state_dict(p.state_dict())


def test_bad_arguments():
    t = FakeTrainer(0.1)
    with pytest.raises(ValueError, match="does not cycle the momentum"):
        OneCycleLR(t, 0.1, total_steps=10, cycle_momentum=True)
    with pytest.raises(ValueError, match="total_steps, or epochs and steps_per_epoch"):
        OneCycleLR(t, 0.1)
    s = OneCycleLR(t, 0.1, total_steps=2)
    s.step()
    s.step()
    with pytest.raises(ValueError, match="stepped 3 times; total_steps is 2"):
        s.step()
    with pytest.raises(ValueError, match="step_size=0 must be a positive integer"):
        StepLR(t, 0)
    with pytest.raises(ValueError, match="n schedulers and n - 1 milestones"):
        SequentialLR(t, [StepLR(t, 1)], [3])


def small_cifar_cnn(seed: int = 0):
    from train import nets
    n = nets.Net(seed)
    x = n.node("MaxPool", [n.node("Relu", [n.bn(n.conv("input", "conv1", 3, 8), "bn1", 8)])],
               kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("MaxPool", [n.node("Relu", [n.bn(n.conv(x, "conv2", 8, 16), "bn2", 16)])],
               kernel_shape=[2, 2], strides=[2, 2])
    x = n.node("GlobalAveragePool", [x])
    x = n.node("Flatten", [x], axis=1)
    x = n.gemm(x, "fc", 16, 10)
    return n.model(["N", 3, 32, 32], x, ["N", 10], "small_cifar_cnn")


@pytest.mark.slow
def test_schedule_drives_compiled_trainer_without_recompiling():
    """The learning rate is a run-time input of the compiled step: a schedule changes it between
    steps, the step uses the new value, nothing is recompiled."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 16)
    t = convc.Trainer(small_cifar_cnn(), input_shape=(16, 3, 32, 32), optimizer=convc.optim.SGD(0.1), seed=0)
    compiled = dict(t._steps)
    s = SequentialLR(t, [LinearLR(t, 0.1, total_iters=2), CosineAnnealingLR(t, T_max=4)], milestones=[2])
    assert t.lr == np.float32(0.01)
    fc = "fc.weight"
    for epoch in range(6):
        start = t.state_dict()
        t.step(x, y)
        moved = t.weights()[fc] - start[fc]
        if epoch == 3:  # the same step at another learning rate moves the weights in proportion (plain SGD)
            t.load_state_dict(start)
            scheduled = t.lr
            t.lr = 2 * scheduled
            t.step(x, y)
            np.testing.assert_allclose(t.weights()[fc] - start[fc], 2 * moved, rtol=1e-3, atol=1e-7)
            t.lr = scheduled
        s.step()
    assert t._steps == compiled  # the same compiled step throughout
    # after the cosine reaches 0 at its epoch 4 (epoch 6 overall), a step changes nothing
    assert t.lr == 0.0
    before = t.state_dict()
    t.step(x, y)
    after = t.state_dict()
    for name in t.parameters:
        np.testing.assert_array_equal(after[name], before[name])
