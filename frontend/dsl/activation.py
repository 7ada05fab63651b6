"""Activations and other shape-preserving layers: ReLU, LeakyReLU, Sigmoid, Tanh, Softmax, Dropout;
and Flatten."""
from __future__ import annotations

from convc.frontend.dsl import functional as F
from convc.frontend.dsl.errors import ModelDefinitionError
from convc.frontend.dsl.module import Module
from convc.frontend.dsl.tracing import SymbolicTensor


class ReLU(Module):
    _leaf = True

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        return F.relu(x)


class LeakyReLU(Module):
    _leaf = True

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class Sigmoid(Module):
    _leaf = True

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        return F.sigmoid(x)


class Tanh(Module):
    _leaf = True

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        return F.tanh(x)


class Softmax(Module):
    _leaf = True

    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = int(dim)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        return F.softmax(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Dropout(Module):
    """The identity at inference; the ratio is kept in the graph for training."""
    _leaf = True

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ModelDefinitionError(f"Dropout probability p={p} must be in [0, 1)")
        self.p = float(p)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        return F.dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Flatten(Module):
    """Merge dimensions ``start_dim..end_dim`` (default: everything after the batch)."""
    _leaf = True

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        return F.flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
