"""A WaveNet-style temporal convolution network, written with convc.nn and trained with convc.Trainer.

Dilated causal Conv1d layers with doubling dilation (1, 2, 4, 8), gated activations
(tanh * sigmoid), residual additions and summed skip connections, ending in a 1x1 convolution
head that predicts one value per time step.

The task is synthetic and needs the receptive field: from a white-noise sequence x, predict

    y[t] = x[t - 5] + 0.5 * x[t - 11]          (x[t] = 0 before the sequence starts)

The network sees 1 + 1 + (1 + 2 + 4 + 8) = 17 steps, enough for both delays. A net with
dilations (1, 2, 4) sees 9 steps: it cannot see x[t - 11], so at least 0.25 of the target
variance of 1.25 (20%) stays unexplained. Predicting 0 (the mean) leaves 100%.

The training step (forward, MSE loss, backward, Adam update) is compiled once into one native
function; the example prints the held-out loss before and after training, checks the trained
model against convc's numpy reference, and shows the causal padding at work: perturbing the input
at step t changes no output before t.

    python examples/wavenet_tcn.py
"""
from __future__ import annotations

import time

import numpy as np

import convc
from convc import nn

DELAYS = ((5, 1.0), (11, 0.5))  # y[t] = sum of weight * x[t - delay]


class ResidualBlock(nn.Module):
    """Gated dilated causal convolution with a residual and a skip output."""

    def __init__(self, channels: int, skip_channels: int, dilation: int):
        super().__init__()
        self.filter = nn.Conv1d(channels, channels, 2, dilation=dilation, padding="causal")
        self.gate = nn.Conv1d(channels, channels, 2, dilation=dilation, padding="causal")
        self.residual = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, skip_channels, 1)

    def forward(self, x):
        h = nn.tanh(self.filter(x)) * nn.sigmoid(self.gate(x))
        return x + self.residual(h), self.skip(h)


class WaveNet(nn.Module):
    def __init__(self, channels: int = 16, skip_channels: int = 32, out_channels: int = 1,
                 dilations: tuple[int, ...] = (1, 2, 4, 8)):
        super().__init__()
        self.dilations = tuple(dilations)
        self.causal = nn.Conv1d(1, channels, 2, padding="causal")
        self.blocks = nn.ModuleList(ResidualBlock(channels, skip_channels, d) for d in self.dilations)
        self.head1 = nn.Conv1d(skip_channels, skip_channels, 1)
        self.head2 = nn.Conv1d(skip_channels, out_channels, 1)

    @property
    def receptive_field(self) -> int:
        """Input steps each output sees: 1 + (k - 1) * dilation summed over the causal convolutions."""
        return 1 + 1 + sum(self.dilations)

    def forward(self, x):
        x = self.causal(x)
        skips = None
        for block in self.blocks:
            x, s = block(x)
            skips = s if skips is None else skips + s
        return self.head2(nn.relu(self.head1(nn.relu(skips))))  # (N, out_channels, T)


def delayed_sum_task(n: int, length: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` white-noise sequences x (n, 1, length) and their targets y[t] = sum w * x[t - d]."""
    x = rng.standard_normal((n, 1, length)).astype(np.float32)
    y = np.zeros_like(x)
    for delay, weight in DELAYS:
        y[..., delay:] += weight * x[..., :-delay]
    return x, y


def main(steps: int = 200, batch: int = 16, length: int = 64, dilations: tuple[int, ...] = (1, 2, 4, 8),
         lr: float = 3e-3, seed: int = 0) -> dict:
    nn.manual_seed(seed)
    model = WaveNet(dilations=dilations)
    print(model.summary((batch, 1, length)))
    print(f"receptive field: {model.receptive_field} steps (the task needs {max(d for d, _ in DELAYS) + 1})")

    start = time.perf_counter()
    trainer = convc.Trainer(model, input_shape=(batch, 1, length), loss="mse", optimizer=convc.optim.Adam(lr),
                            seed=seed)
    print(f"compiled the training step in {time.perf_counter() - start:.1f} s")
    rng = np.random.default_rng(seed)
    x_test, y_test = delayed_sum_task(256, length, np.random.default_rng(seed + 1))  # held out
    variance = float(np.mean(y_test.astype(np.float64) ** 2))  # the MSE of predicting 0, the target mean
    mse_before = trainer.evaluate(x_test, y_test)["loss"]
    print(f"held-out MSE before training: {mse_before:.4f} (target variance {variance:.4f})")

    losses = []
    for i in range(steps):
        trainer.lr = lr * 0.5 * (1 + np.cos(np.pi * i / steps))  # cosine schedule, set between steps
        losses.append(trainer.step(*delayed_sum_task(batch, length, rng)))
        if (i + 1) % 50 == 0:
            print(f"step {i + 1:4d}  train loss {np.mean(losses[-50:]):.5f}")
    mse_after = trainer.evaluate(x_test, y_test)["loss"]
    seconds = time.perf_counter() - start
    print(f"held-out MSE after {steps} steps: {mse_after:.5f} = {mse_after / variance:.2%} of the target variance "
          f"({seconds:.1f} s including compilation)")

    # the trained weights back into the model: its numpy reference agrees with the compiled model.
    # (the last block's residual output feeds nothing, so the Trainer drops that conv: not strict)
    model.load_state_dict(trainer.weights(), strict=False)
    probe = x_test[:2]
    predicted = trainer.predict(probe)
    max_error = float(np.max(np.abs(predicted - model(probe))))
    print(f"trained model, compiled vs numpy reference: max |difference| = {max_error:.2e}")

    t0 = length // 2
    perturbed = x_test[:batch].copy()
    perturbed[..., t0:] += 1.0
    causal = bool(np.array_equal(trainer.predict(perturbed)[..., :t0], trainer.predict(x_test[:batch])[..., :t0]))
    print(f"causal: outputs before step {t0} unchanged by perturbing steps >= {t0}: {causal}")
    return {"mse_before": mse_before, "mse_after": mse_after, "variance": variance, "train_losses": losses,
            "max_error": max_error, "causal": causal, "receptive_field": model.receptive_field,
            "trainer": trainer, "model": model, "seconds": seconds}


if __name__ == "__main__":
    main()
