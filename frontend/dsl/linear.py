"""Linear: y = x W^T + b with W of shape (out_features, in_features) like PyTorch; lowers to Gemm(transB=1)."""
from __future__ import annotations

import numpy as np

from convc.frontend.dsl import init
from convc.frontend.dsl.errors import ModelDefinitionError
from convc.frontend.dsl.module import Module
from convc.frontend.dsl.tracing import SymbolicTensor
from convc.ops import OpKind
from convc.ops.gemm import GemmAttrs


class Linear(Module):
    _leaf = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ModelDefinitionError(f"Linear({in_features}, {out_features}): feature counts must be positive")
        self.in_features, self.out_features = in_features, out_features
        self.register_parameter("weight", np.zeros((out_features, in_features)))
        self.register_parameter("bias", np.zeros(out_features) if bias else None)
        self.reset_parameters()

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        rng = rng or init.default_generator()
        shape = (self.out_features, self.in_features)
        self.weight = init.kaiming_uniform(shape, rng)
        if self._parameters["bias"] is not None:
            self.bias = init.uniform((self.out_features,), init.bias_bound(shape), rng)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        t = x.tracer
        if x.ndim != 2:
            raise t.shape_error("linear", f"expects an input of shape (N, {self.in_features}) but its input has shape "
                                          f"{x.shape} ({x.after()}); flatten it first (nn.Flatten())")
        if x.shape[1] != self.in_features:
            raise t.shape_error("linear", f"expects {self.in_features} input features but its input has shape "
                                          f"{x.shape} ({x.shape[1]} features {x.after()})")
        inputs = [x, self.weight] + ([self.bias] if self._parameters["bias"] is not None else [])
        return t.emit(OpKind.GEMM, GemmAttrs(trans_b=True), inputs, "linear")

    def extra_repr(self) -> str:
        bias = "" if self._parameters["bias"] is not None else ", bias=False"
        return f"in_features={self.in_features}, out_features={self.out_features}{bias}"
