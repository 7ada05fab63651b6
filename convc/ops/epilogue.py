"""What a Conv or Gemm applies to its output before storing it, once passes fuse ops into it.

The fused op computes ``activation(op(x) + residual)``: the residual is the op's last input when
``residual`` is set, and the activation is one of the fusible activations with its own attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

import numpy as np

from convc.ops.base import OpKind, TensorType, numel


@dataclass(frozen=True)
class Epilogue:
    residual: bool = False
    activation: OpKind | None = None
    activation_attrs: Any = None

    @property
    def empty(self) -> bool:
        return not self.residual and self.activation is None

    def fused_names(self) -> list[str]:
        """The ONNX op names fused into the producer, in the order they apply."""
        return (["Add"] if self.residual else []) + ([self.activation.value] if self.activation else [])

    def reference(self, y: np.ndarray, residual: np.ndarray | None) -> np.ndarray:
        from convc.ops.base import op_def
        if self.residual:
            y = (y + residual).astype(y.dtype)
        if self.activation is not None:
            y = op_def(self.activation).reference(self.activation_attrs, y)[0]
        return y


NO_EPILOGUE = Epilogue()


def epilogue_flops(a: Any, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    """Other FLOPs of a Conv, ConvTranspose or Gemm (its MACs aside): per output element, 1 for the bias
    (Conv B, Gemm C), 1 for a fused residual add and 1 for a fused activation."""
    epi = a.epilogue
    scaled = int(getattr(a, "input_scale", False))  # a conv's input scale: one multiply per input element
    n_bias = len(ins) - 2 - int(epi.residual) - scaled
    return numel(outs[0]) * (n_bias + int(epi.residual) + int(epi.activation is not None)) + scaled * numel(ins[0])
