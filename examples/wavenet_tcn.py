"""A WaveNet-style temporal convolution network, written with convc.nn and compiled with convc.

Dilated causal Conv1d layers with doubling dilation (1, 2, 4, 8), gated activations
(tanh * sigmoid), residual additions and summed skip connections, ending in a softmax over
quantisation levels of the next sample. The task is synthetic: a noisy two-tone sequence
quantised into ``levels`` classes. The network is untrained (training arrives with the Trainer);
this example shows the forward pass compiled to native code, checked against convc's numpy
reference, and the causal padding at work: perturbing the input at step t changes no output
before t.

    python examples/wavenet_tcn.py
"""
from __future__ import annotations

import numpy as np

import convc
from convc import nn


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
    def __init__(self, channels: int = 16, skip_channels: int = 32, levels: int = 8,
                 dilations: tuple[int, ...] = (1, 2, 4, 8)):
        super().__init__()
        self.dilations = dilations
        self.causal = nn.Conv1d(1, channels, 2, padding="causal")
        self.blocks = nn.ModuleList(ResidualBlock(channels, skip_channels, d) for d in dilations)
        self.head1 = nn.Conv1d(skip_channels, skip_channels, 1)
        self.head2 = nn.Conv1d(skip_channels, levels, 1)

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
        logits = self.head2(nn.relu(self.head1(nn.relu(skips))))
        return nn.softmax(logits, dim=1)  # (N, levels, T): a distribution over the next level per step


def synthetic_sequence(length: int, levels: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A noisy two-tone signal in [-1, 1] (N=1, C=1, T) and its next-step quantisation level (T,)."""
    t = np.arange(length + 1)
    signal = 0.6 * np.sin(2 * np.pi * t / 37) + 0.3 * np.sin(2 * np.pi * t / 11) + 0.05 * rng.standard_normal(t.shape)
    signal = np.clip(signal, -1, 1).astype(np.float32)
    classes = np.minimum(((signal + 1) / 2 * levels).astype(np.int64), levels - 1)
    return signal[None, None, :length], classes[1:]


def main(length: int = 256, seed: int = 0) -> dict:
    nn.manual_seed(seed)
    model = WaveNet()
    rng = np.random.default_rng(seed)
    x, target = synthetic_sequence(length, levels=8, rng=rng)

    print(model.summary(x.shape))
    compiled = convc.compile(model, input_shape=x.shape)
    probs = compiled(x)

    reference = model(x)  # the traced graph run by convc's numpy reference
    max_error = float(np.max(np.abs(probs - reference)))

    t0 = length // 2
    perturbed = x.copy()
    perturbed[..., t0:] += 1.0
    after = compiled(perturbed)
    causal = bool(np.array_equal(after[..., :t0], probs[..., :t0]))

    nll = float(-np.mean(np.log(probs[0, target, np.arange(length)])))
    print(f"receptive field: {model.receptive_field} steps")
    print(f"compiled vs numpy reference: max |difference| = {max_error:.2e}")
    print(f"causal: outputs before step {t0} unchanged by perturbing steps >= {t0}: {causal}")
    print(f"untrained next-level NLL: {nll:.3f} nats (uniform guess: {np.log(8):.3f})")
    return {"probabilities": probs, "max_error": max_error, "causal": causal, "nll": nll,
            "receptive_field": model.receptive_field, "model": model}


if __name__ == "__main__":
    main()
