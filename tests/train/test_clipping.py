"""Gradient clipping by global norm (``Trainer(clip_grad_norm=...)``): PyTorch's clip_grad_norm_
inside the compiled step, the threshold a run-time value, the norm reported per step."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from train import nets

SHAPE = (16, 1, 32, 32)


def batches(n: int, seed: int = 5):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(SHAPE).astype(np.float32), rng.integers(0, 10, SHAPE[0])) for _ in range(n)]


@pytest.mark.slow
def test_clipping_matches_pytorch():
    torch = pytest.importorskip("torch")
    from train.test_torch import torch_digits
    proto = nets.digits_cnn(hw=32, c1=8, c2=16, dropout=0.0, conv_bias=False)
    ours = convc.Trainer(proto, input_shape=SHAPE, optimizer=convc.optim.SGD(0.05, momentum=0.9),
                         clip_grad_norm=0.5)
    m, names = torch_digits(proto, hw=32)
    topt = torch.optim.SGD(m.parameters(), 0.05, momentum=0.9)
    clipped = 0
    for step, (x, y) in enumerate(batches(5)):
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5).item()
        topt.step()
        assert ours.step(x, y) == pytest.approx(loss.item(), rel=1e-4, abs=1e-5), f"step {step}"
        assert ours.last_grad_norm == pytest.approx(norm, rel=1e-4), f"step {step}"
        clipped += norm > 0.5
    assert clipped >= 3  # the threshold was in play
    state = ours.state_dict()
    for k, v in names.items():
        layer = m[int(k)]
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            if getattr(layer, suffix, None) is not None:
                np.testing.assert_allclose(state[f"{v}.{suffix}"], getattr(layer, suffix).detach().numpy(),
                                           rtol=2e-3, atol=2e-4, err_msg=f"{v}.{suffix}")


@pytest.mark.slow
def test_threshold_is_a_run_time_value():
    """Plain SGD: a step's update is -lr * coef * g; lowering the threshold between two runs of the
    same step (same state) scales the update by the ratio of the coefficients, without recompiling."""
    t = convc.Trainer(nets.digits_cnn(hw=32, c1=8, c2=16, conv_bias=False), input_shape=SHAPE, optimizer=convc.optim.SGD(0.1),
                      clip_grad_norm=1e30)
    compiled = dict(t._steps)
    (x, y), = batches(1)
    start = t.state_dict()
    t.step(x, y)
    norm = t.last_grad_norm
    assert norm > 0
    free = {p: t.state_dict()[p] - start[p] for p in t.parameters}
    t.load_state_dict(start)
    t.clip_grad_norm = norm / 4
    assert t.clip_grad_norm == pytest.approx(norm / 4)
    t.step(x, y)
    assert t.last_grad_norm == norm
    coef = (norm / 4) / (norm + 1e-6)
    for p in t.parameters:
        scale = np.abs(free[p]).max()
        np.testing.assert_allclose(t.state_dict()[p] - start[p], coef * free[p], rtol=1e-3, atol=1e-3 * scale,
                                   err_msg=p)
    assert t._steps == compiled


def test_clipping_errors(tmp_path):
    t = convc.Trainer(nets.digits_cnn(c1=4, c2=8), input_shape=(8, 1, 8, 8))
    assert t.clip_grad_norm is None and t.last_grad_norm is None
    with pytest.raises(convc.InputError, match="built without gradient clipping"):
        t.clip_grad_norm = 1.0
    c = convc.Trainer(nets.digits_cnn(c1=4, c2=8), input_shape=(8, 1, 8, 8), clip_grad_norm=2.0)
    assert c.clip_grad_norm == 2.0
    for bad in (0.0, -1.0, float("nan"), None):
        with pytest.raises(convc.InputError, match="must be a finite, positive number"):
            c.clip_grad_norm = bad
    # a checkpoint keeps the threshold; one without clipping does not load into a Trainer with it
    c.clip_grad_norm = 0.25
    c.save(tmp_path / "c.npz")
    assert convc.Trainer.load(tmp_path / "c.npz", nets.digits_cnn(c1=4, c2=8)).clip_grad_norm == 0.25
    t.save(tmp_path / "t.npz")
    with pytest.raises(convc.CheckpointError, match="clip_grad_norm: False in the checkpoint, True here"):
        c.load_state(tmp_path / "t.npz")
