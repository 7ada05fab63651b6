"""Tensor layouts: ONNX's channels-first (N, C, spatial...) and the channels-last (N, spatial..., C)
layout that the layout pass gives convolutions, pooling and the elementwise ops between them.

Channels last puts one pixel's channels next to each other, so a convolution is a GEMM whose A
rows are read straight from the input (no im2col copy) and pooling and depthwise convs vectorize
over channels. An op carries its layout in its attributes; its weights keep the ONNX layout.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

CHANNELS_FIRST = "NCHW"
CHANNELS_LAST = "NHWC"


def channels_last_perm(rank: int) -> tuple[int, ...]:
    """Transpose perm taking (N, C, spatial...) to (N, spatial..., C)."""
    return (0,) + tuple(range(2, rank)) + (1,)


def channels_first_perm(rank: int) -> tuple[int, ...]:
    """Transpose perm taking (N, spatial..., C) back to (N, C, spatial...)."""
    return (0, rank - 1) + tuple(range(1, rank - 1))


def to_channels_last(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[p] for p in channels_last_perm(len(shape)))


def to_channels_first(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(shape[p] for p in channels_first_perm(len(shape)))


def first(x: np.ndarray) -> np.ndarray:
    """A channels-last array as channels-first (a view)."""
    return x.transpose(channels_first_perm(x.ndim))


def last(x: np.ndarray) -> np.ndarray:
    """A channels-first array as channels-last, contiguous."""
    return np.ascontiguousarray(x.transpose(channels_last_perm(x.ndim)))
