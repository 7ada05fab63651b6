"""Independent float64 numpy implementations of the layers, written from PyTorch's definitions
(not from convc's references), with explicit pads (begins, then ends)."""
from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Sequence[int], pads: Sequence[int],
         dilation: Sequence[int], groups: int) -> np.ndarray:
    r = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[r + i]) for i in range(r)])
    k = w.shape[2:]
    out = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(r)]
    n, c = x.shape[:2]
    m, cg = w.shape[:2]
    mg = m // groups
    y = np.zeros((n, m, *out))
    for pos in itertools.product(*[range(o) for o in out]):
        starts = [pos[i] * stride[i] for i in range(r)]
        window = tuple(slice(starts[i], starts[i] + dilation[i] * (k[i] - 1) + 1, dilation[i]) for i in range(r))
        patch = xp[(slice(None), slice(None)) + window]  # (n, c, *k)
        for g in range(groups):
            wg = w[g * mg:(g + 1) * mg]                    # (mg, cg, *k)
            pg = patch[:, g * cg:(g + 1) * cg]             # (n, cg, *k)
            y[(slice(None), slice(g * mg, (g + 1) * mg)) + pos] = np.tensordot(pg, wg, axes=(list(range(1, r + 2)),
                                                                                             list(range(1, r + 2))))
    if b is not None:
        y += b.reshape((1, m) + (1,) * r)
    return y


def pool(x: np.ndarray, kind: str, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
         dilation: Sequence[int] | None = None, count_include_pad: bool = True) -> np.ndarray:
    """PyTorch max / average pooling without ceil_mode; symmetric ``padding`` per dimension."""
    r = x.ndim - 2
    dilation = dilation or (1,) * r
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in padding], constant_values=fill)
    inside = np.pad(np.ones(x.shape[2:]), [(p, p) for p in padding])
    out = [(xp.shape[2 + i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(r)]
    y = np.zeros(x.shape[:2] + tuple(out))
    for pos in itertools.product(*[range(o) for o in out]):
        window = tuple(slice(pos[i] * stride[i], pos[i] * stride[i] + dilation[i] * (kernel[i] - 1) + 1, dilation[i])
                       for i in range(r))
        patch = xp[(slice(None), slice(None)) + window].reshape(x.shape[:2] + (-1,))
        if kind == "max":
            y[(slice(None), slice(None)) + pos] = patch.max(axis=-1)
        else:
            count = np.prod(kernel) if count_include_pad else inside[window].sum()
            y[(slice(None), slice(None)) + pos] = patch.sum(axis=-1) / count
    return y


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def batch_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, mean: np.ndarray, var: np.ndarray,
               eps: float) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * weight.reshape(shape) + bias.reshape(shape)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: Sequence[int],
                     padding: Sequence[int], output_padding: Sequence[int], dilation: Sequence[int],
                     groups: int) -> np.ndarray:
    """PyTorch's ConvTranspose2d: scatter every input pixel through the kernel, then crop ``padding``
    from both sides (the output_padding rows and columns stay at the end)."""
    n, c, h, wd = x.shape
    cg, mg = c // groups, w.shape[1]
    kh, kw = w.shape[2:]
    full = [(h - 1) * stride[0] + dilation[0] * (kh - 1) + 1 + output_padding[0],
            (wd - 1) * stride[1] + dilation[1] * (kw - 1) + 1 + output_padding[1]]
    y = np.zeros((n, mg * groups, *full))
    for i, j, ki, kj in itertools.product(range(h), range(wd), range(kh), range(kw)):
        oi, oj = i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]
        for g in range(groups):
            y[:, g * mg:(g + 1) * mg, oi, oj] += x[:, g * cg:(g + 1) * cg, i, j] @ w[g * cg:(g + 1) * cg, :, ki, kj]
    y = y[:, :, padding[0]:full[0] - padding[0], padding[1]:full[1] - padding[1]]
    if b is not None:
        y += b.reshape(1, -1, 1, 1)
    return y
