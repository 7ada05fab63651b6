"""Functional forms of the layers, for use inside ``forward``: ``nn.relu(x)``, ``nn.cat([a, b], dim=1)``.

Each adds one op to the graph being traced. Called inside a built-in layer the op is named after
the layer; called in a model's forward it is named after the function and the model's path
("block1.add"). Tensor arithmetic (``x + y``, ``x * y``, ``x - y``) goes through ``add``/``mul``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from convc.frontend.dsl.errors import ModelDefinitionError
from convc.frontend.dsl.tracing import SymbolicTensor, tracer_of
from convc.ops import NoAttrs, OpKind
from convc.ops.elementwise import DropoutAttrs, LeakyReluAttrs
from convc.ops.shape import ConcatAttrs, FlattenAttrs, ReshapeAttrs
from convc.ops.softmax import SoftmaxAttrs


def relu(x: SymbolicTensor) -> SymbolicTensor:
    return tracer_of(x).emit(OpKind.RELU, NoAttrs(), [x], "relu")


def sigmoid(x: SymbolicTensor) -> SymbolicTensor:
    return tracer_of(x).emit(OpKind.SIGMOID, NoAttrs(), [x], "sigmoid")


def tanh(x: SymbolicTensor) -> SymbolicTensor:
    return tracer_of(x).emit(OpKind.TANH, NoAttrs(), [x], "tanh")


def leaky_relu(x: SymbolicTensor, negative_slope: float = 0.01) -> SymbolicTensor:
    return tracer_of(x).emit(OpKind.LEAKY_RELU, LeakyReluAttrs(float(negative_slope)), [x], "leaky_relu")


def dropout(x: SymbolicTensor, p: float = 0.5) -> SymbolicTensor:
    """The identity at inference; records the ratio for training."""
    if not 0.0 <= p < 1.0:
        raise ModelDefinitionError(f"dropout probability p={p} must be in [0, 1)")
    return tracer_of(x).emit(OpKind.DROPOUT, DropoutAttrs(float(p)), [x], "dropout")


def softmax(x: SymbolicTensor, dim: int = -1) -> SymbolicTensor:
    return tracer_of(x).emit(OpKind.SOFTMAX, SoftmaxAttrs(_axis(x, dim, "softmax")), [x], "softmax")


def add(a: Any, b: Any) -> SymbolicTensor:
    return tracer_of(a, b).emit(OpKind.ADD, NoAttrs(), [a, b], "add")


def mul(a: Any, b: Any) -> SymbolicTensor:
    return tracer_of(a, b).emit(OpKind.MUL, NoAttrs(), [a, b], "mul")


def cat(tensors: Sequence[SymbolicTensor], dim: int = 0) -> SymbolicTensor:
    """Concatenate along ``dim``; every other dimension must match."""
    tensors = list(tensors)
    if not tensors:
        raise ModelDefinitionError("cat needs at least one tensor")
    t = tracer_of(*tensors)
    return t.emit(OpKind.CONCAT, ConcatAttrs(_axis(tensors[0], dim, "cat")), tensors, "cat")


def flatten(x: SymbolicTensor, start_dim: int = 1, end_dim: int = -1) -> SymbolicTensor:
    """Merge dimensions ``start_dim..end_dim`` into one (PyTorch semantics)."""
    s = x.shape
    a, b = _axis(x, start_dim, "flatten"), _axis(x, end_dim, "flatten")
    if a > b:
        raise tracer_of(x).shape_error("flatten", f"has start_dim={start_dim} after end_dim={end_dim} for its input "
                                                  f"of shape {s} ({x.after()})")
    if a == 1 and b == len(s) - 1:
        return tracer_of(x).emit(OpKind.FLATTEN, FlattenAttrs(1), [x], "flatten")
    shape = s[:a] + (math.prod(s[a:b + 1]),) + s[b + 1:]
    return tracer_of(x).emit(OpKind.RESHAPE, ReshapeAttrs(shape), [x], "flatten")


def reshape(x: SymbolicTensor, *shape: int | Sequence[int]) -> SymbolicTensor:
    """Reshape to ``shape``; one dimension may be -1 (inferred)."""
    dims = list(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else list(shape)
    t = tracer_of(x)
    total = math.prod(x.shape)
    if dims.count(-1) > 1 or any(d == 0 or d < -1 for d in dims):
        raise t.shape_error("reshape", f"target {tuple(dims)} needs positive sizes and at most one -1")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        if known == 0 or total % known:
            raise t.shape_error("reshape", f"cannot turn its input of shape {x.shape} ({x.after()}) into {tuple(dims)}")
        dims[dims.index(-1)] = total // known
    return t.emit(OpKind.RESHAPE, ReshapeAttrs(tuple(int(d) for d in dims)), [x], "reshape")


def _axis(x: SymbolicTensor, dim: int, fn: str) -> int:
    r = x.ndim
    if not -r <= dim < r:
        raise tracer_of(x).shape_error(fn, f"has dim={dim}, out of range for its input of shape {x.shape} "
                                           f"({x.after()})")
    return dim % r
