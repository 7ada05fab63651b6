"""Parameter groups of convc.optim: per-group weight decay and learning rate (``lr_scale`` times
``trainer.lr``), against PyTorch's param_groups on the same weights, with a schedule on top."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.optim import SGD, Adam, StepLR
from train import nets

SHAPE = (16, 1, 32, 32)
GROUPS = [{"params": ["bias", "norm"], "weight_decay": 0.0}, {"params": ["fc.weight"], "lr_scale": 0.1}]


@pytest.mark.slow
@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_groups_match_pytorch(opt):
    torch = pytest.importorskip("torch")
    from train.test_torch import torch_digits
    # no conv bias: before BatchNorm its gradient is rounding noise, which Adam amplifies to +-lr
    proto = nets.digits_cnn(hw=32, c1=8, c2=16, dropout=0.0, conv_bias=False)
    lr, wd = (0.05, 0.05) if opt == "sgd" else (3e-3, 0.2)
    ours = convc.Trainer(proto, input_shape=SHAPE, optimizer=SGD(lr, momentum=0.9, weight_decay=wd, groups=GROUPS)
                         if opt == "sgd" else convc.optim.AdamW(lr, weight_decay=wd, groups=GROUPS))
    sched = StepLR(ours, step_size=2, gamma=0.5)
    m, names = torch_digits(proto, hw=32)
    bn = [p for i in (1, 5) for p in m[i].parameters()]
    no_decay = [*bn, m[9].bias]
    groups = [{"params": [m[0].weight, m[4].weight]}, {"params": no_decay, "weight_decay": 0.0},
              {"params": [m[9].weight], "lr": lr * 0.1}]
    topt = torch.optim.SGD(groups, lr, momentum=0.9, weight_decay=wd) if opt == "sgd" else \
        torch.optim.AdamW(groups, lr, weight_decay=wd)
    tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=2, gamma=0.5)
    rng = np.random.default_rng(2)
    for step in range(5):
        x = rng.standard_normal(SHAPE).astype(np.float32)
        y = rng.integers(0, 10, SHAPE[0])
        topt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        topt.step()
        tsched.step()
        assert ours.step(x, y) == pytest.approx(loss.item(), rel=1e-4, abs=1e-5), f"step {step}"
        sched.step()
    state = ours.state_dict()
    for k, v in names.items():
        layer = m[int(k)]
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            if getattr(layer, suffix, None) is not None:
                np.testing.assert_allclose(state[f"{v}.{suffix}"], getattr(layer, suffix).detach().numpy(),
                                           rtol=2e-3, atol=2e-4, err_msg=f"{v}.{suffix}")


def test_group_settings_per_parameter():
    opt = SGD(0.1, weight_decay=0.01, groups=GROUPS)
    assert opt.for_param("conv1.weight", "weight") == (opt, 1.0)
    bias, scale = opt.for_param("conv1.bias", "bias")
    assert bias.weight_decay == 0.0 and scale == 1.0 and opt.weight_decay == 0.01
    fc, scale = opt.for_param("fc.weight", "weight")
    assert fc.weight_decay == 0.01 and scale == 0.1
    assert "groups" not in repr(SGD(0.1)) and "groups=" in repr(opt)
    with pytest.raises(ValueError, match="unknown keys \\['lr'\\]"):
        SGD(0.1, groups=[{"params": "bias", "lr": 0.5}])
    with pytest.raises(ValueError, match="lr_scale=0 must be positive"):
        Adam(groups=[{"params": "bias", "lr_scale": 0}])
    with pytest.raises(ValueError, match="must be a dict with 'params'"):
        Adam(groups=[{"weight_decay": 0.0}])


def test_group_lr_follows_trainer_lr(tmp_path):
    model = nets.digits_cnn(c1=4, c2=8)
    t = convc.Trainer(model, input_shape=(8, 1, 8, 8),
                      optimizer=SGD(0.1, groups=[{"params": "norm", "lr_scale": 0.5}]))
    (name, scale), = t.plan.lr_scales.items()
    assert scale == 0.5 and t._state[name][0] == np.float32(0.05)
    t.lr = 0.3
    assert t._state[name][0] == np.float32(0.15)
    t.save(tmp_path / "g.npz")
    back = convc.Trainer.load(tmp_path / "g.npz", model)
    assert back.optimizer.groups == t.optimizer.groups and back._state[name][0] == np.float32(0.15)
    with pytest.raises(convc.GraphError, match="parameter groups name \\['fc.weights'\\], which are not trainable"):
        convc.Trainer(model, input_shape=(8, 1, 8, 8), optimizer=SGD(0.1, groups=[{"params": ["fc.weights"]}]))
