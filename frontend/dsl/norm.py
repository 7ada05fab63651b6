"""BatchNorm1d/2d in inference form: normalise with the running statistics.

``momentum`` follows PyTorch (running = (1 - momentum) * running + momentum * batch); the graph
records the ONNX convention (``BatchNormAttrs.momentum = 1 - momentum``) for training.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from convc.frontend.dsl.conv import check_input
from convc.frontend.dsl.errors import ModelDefinitionError
from convc.frontend.dsl.module import Module
from convc.frontend.dsl.tracing import SymbolicTensor
from convc.ops import OpKind
from convc.ops.norm import BatchNormAttrs


class _BatchNorm(Module):
    _leaf = True
    _ranks: ClassVar[tuple[int, ...]]

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        super().__init__()
        if num_features < 1:
            raise ModelDefinitionError(f"{type(self).__name__}({num_features}): num_features must be positive")
        if momentum is None or not 0.0 <= momentum <= 1.0:
            raise ModelDefinitionError(f"{type(self).__name__} momentum={momentum!r} must be a number in [0, 1] "
                                       "(the cumulative average, momentum=None, is not supported)")
        self.num_features, self.eps, self.momentum, self.affine = num_features, float(eps), float(momentum), affine
        self.register_parameter("weight", np.ones(num_features) if affine else None)
        self.register_parameter("bias", np.zeros(num_features) if affine else None)
        self.register_buffer("running_mean", np.zeros(num_features))
        self.register_buffer("running_var", np.ones(num_features))

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        if self.affine:
            self.weight = np.ones(self.num_features)
            self.bias = np.zeros(self.num_features)
        self.running_mean = np.zeros(self.num_features)
        self.running_var = np.ones(self.num_features)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        rank = x.ndim if x.ndim in self._ranks else self._ranks[-1]
        check_input(x, "batch_norm", rank, self.num_features, "channels")
        attrs = BatchNormAttrs(epsilon=self.eps, momentum=1.0 - self.momentum)
        # without affine the scale and shift are fixed constants, not parameters (as in PyTorch)
        scale = self.weight if self.affine else np.ones(self.num_features, np.float32)
        shift = self.bias if self.affine else np.zeros(self.num_features, np.float32)
        return x.tracer.emit(OpKind.BATCH_NORM, attrs, [x, scale, shift, self.running_mean, self.running_var],
                             "batch_norm")

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"


class BatchNorm1d(_BatchNorm):
    """Over (N, C) or (N, C, L)."""
    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Over (N, C, H, W)."""
    _ranks = (4,)
