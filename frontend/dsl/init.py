"""Parameter initialisation with PyTorch's defaults, drawn from a seedable generator.

Conv and Linear weights: Kaiming-uniform with ``a = sqrt(5)``, i.e. uniform(-b, b) with
``b = gain * sqrt(3 / fan_in) = 1 / sqrt(fan_in)`` since ``gain = sqrt(2 / (1 + a**2)) = sqrt(1/3)``.
Biases: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)). ``fan_in`` follows PyTorch: ``shape[1] * prod(shape[2:])``.
"""
from __future__ import annotations

import math

import numpy as np

_DEFAULT_SEED = 0
_generator = np.random.default_rng(_DEFAULT_SEED)


def manual_seed(seed: int) -> None:
    """Reseed the generator every layer draws its initial parameters from (like ``torch.manual_seed``)."""
    global _generator
    _generator = np.random.default_rng(seed)


def default_generator() -> np.random.Generator:
    return _generator


def fan_in(shape: tuple[int, ...]) -> int:
    """Inputs feeding one output, as PyTorch counts them: ``shape[1] * prod(shape[2:])``."""
    if len(shape) < 2:
        raise ValueError(f"fan_in needs a weight of rank >= 2, got shape {shape}")
    return int(shape[1] * math.prod(shape[2:]))


def uniform(shape: tuple[int, ...], bound: float, rng: np.random.Generator) -> np.ndarray:
    """float32 samples from uniform(-bound, bound)."""
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def kaiming_uniform(shape: tuple[int, ...], rng: np.random.Generator, a: float = math.sqrt(5)) -> np.ndarray:
    """PyTorch's ``kaiming_uniform_(w, a=a)`` with the leaky-ReLU gain and ``fan_in`` mode."""
    gain = math.sqrt(2.0 / (1.0 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in(shape)), rng)


def bias_bound(weight_shape: tuple[int, ...]) -> float:
    """The bias bound PyTorch uses next to a Kaiming-uniform weight: 1 / sqrt(fan_in), 0 when fan_in is 0."""
    f = fan_in(weight_shape)
    return 1.0 / math.sqrt(f) if f > 0 else 0.0
