"""convc.Trainer on convc.nn models traced from custom forward() code: the residual block (Add) and
the inception-style block (Concat) of test_tracing train, with gradients that match finite
differences and a trained state that predicts like the model's numpy reference."""
from __future__ import annotations

import numpy as np
import pytest

from dsl.test_tracing import Inception, ResNetTiny

import convc
from convc import nn


class InceptionNet(nn.Module):
    """The inception block of test_tracing, then global average pooling and a classifier."""

    def __init__(self, c_in: int = 6, classes: int = 4):
        super().__init__()
        self.block = Inception(c_in)
        self.pool = nn.GlobalAvgPool()
        self.fc = nn.Linear(8 + 8 + 4 + 4, classes)

    def forward(self, x):
        return self.fc(nn.flatten(self.pool(self.block(x))))


CASES = {
    "residual": (ResNetTiny, (8, 3, 8, 8), 5),      # two residual blocks, one with a projection shortcut
    "inception": (InceptionNet, (8, 6, 7, 7), 4),   # four branches concatenated on channels
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.slow
def test_trainer_trains_a_traced_block(case):
    make, shape, classes = CASES[case]
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    y = x[:, :classes].mean(axis=(2, 3)).argmax(axis=1)  # a learnable label: the brightest of the first channels
    nn.manual_seed(0)
    model = make()
    trainer = convc.Trainer(model=model, input_shape=shape, loss="cross_entropy",
                            optimizer=convc.optim.Adam(3e-2), seed=0, threads=1)
    losses = [trainer.step(x, y) for _ in range(25)]
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses
    assert trainer.steps_done == 25
    assert set(trainer.parameters) <= set(model.named_parameters())

    # the trained weights loaded into the module: its numpy reference (eval mode) gives the
    # Trainer's predictions, and the module's state dict has changed from its initial values
    initial = model.state_dict()
    model.load_state_dict(trainer.weights(), strict=False)
    assert any(not np.array_equal(initial[n], model.state_dict()[n]) for n in trainer.parameters)
    np.testing.assert_allclose(trainer.predict(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.slow
def test_gradients_through_add_and_concat(case):
    make, shape, _ = CASES[case]
    x = np.random.default_rng(8).standard_normal((2,) + shape[1:]).astype(np.float32)
    nn.manual_seed(1)
    result = convc.gradcheck(make(), x, samples=4)
    assert result.ok, str(result)
