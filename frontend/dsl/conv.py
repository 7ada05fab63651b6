"""Convolution layers: Conv1d and Conv2d (lower to Conv), ConvTranspose2d (lowers to ConvTranspose)."""
from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np

from convc.frontend.dsl import init
from convc.frontend.dsl.errors import ModelDefinitionError
from convc.frontend.dsl.module import Module
from convc.frontend.dsl.tracing import SymbolicTensor
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from convc.ops.conv_transpose import ConvTransposeAttrs

Padding = int | Sequence[int] | str
PADDING_MODES = ("same", "valid", "causal")
_SPATIAL = {1: "(N, C, L)", 2: "(N, C, H, W)"}


def ntuple(value: int | Sequence[int], r: int, what: str, layer: str, minimum: int = 1) -> tuple[int, ...]:
    """An int repeated ``r`` times, or a length-``r`` sequence, every entry >= ``minimum``."""
    out = (value,) * r if isinstance(value, (int, np.integer)) else tuple(value)
    if len(out) != r or not all(isinstance(v, (int, np.integer)) and v >= minimum for v in out):
        raise ModelDefinitionError(f"{layer} {what}={value!r} must be an int >= {minimum} or {r} of them")
    return tuple(int(v) for v in out)


def check_input(x: SymbolicTensor, fn: str, rank: int, channels: int, what: str = "input channels") -> None:
    """Raise a LayerShapeError unless ``x`` is rank ``rank`` with ``channels`` in dimension 1."""
    spatial = _SPATIAL.get(rank - 2, f"of rank {rank}")
    if x.ndim != rank:
        raise x.tracer.shape_error(fn, f"expects a {rank}-D input {spatial} but its input has shape {x.shape} "
                                       f"({x.after()})")
    if x.shape[1] != channels:
        raise x.tracer.shape_error(fn, f"expects {channels} {what} but its input has shape {x.shape} "
                                       f"({x.shape[1]} channels {x.after()})")


class _ConvNd(Module):
    _leaf = True
    _rank: ClassVar[int]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: Padding = 0, dilation: int | Sequence[int] = 1,
                 groups: int = 1, bias: bool = True):
        super().__init__()
        name, r = type(self).__name__, self._rank
        if in_channels < 1 or out_channels < 1 or groups < 1 or in_channels % groups or out_channels % groups:
            raise ModelDefinitionError(f"{name}({in_channels}, {out_channels}) with groups={groups}: both channel "
                                       "counts must be positive and divide by groups")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = ntuple(kernel_size, r, "kernel_size", name)
        self.stride = ntuple(stride, r, "stride", name)
        self.dilation = ntuple(dilation, r, "dilation", name)
        if isinstance(padding, str):
            if padding not in PADDING_MODES:
                raise ModelDefinitionError(f"{name} padding={padding!r} must be an int, a tuple or one of "
                                           f"{', '.join(map(repr, PADDING_MODES))}")
            self.padding: Padding = padding
        elif not isinstance(padding, (int, np.integer)) and len(padding) == 2 * r:
            self.padding = ntuple(padding, 2 * r, "padding", name, minimum=0)  # explicit begins then ends
        else:
            self.padding = ntuple(padding, r, "padding", name, minimum=0)
        self.register_parameter("weight", np.zeros((out_channels, in_channels // groups) + self.kernel_size))
        self.register_parameter("bias", np.zeros(out_channels) if bias else None)
        self.reset_parameters()

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        rng = rng or init.default_generator()
        shape = self._parameters["weight"].shape
        self.weight = init.kaiming_uniform(shape, rng)
        if self._parameters["bias"] is not None:
            self.bias = init.uniform((self.out_channels,), init.bias_bound(shape), rng)

    def pads(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Explicit pads (all begins, then all ends) for an input of spatial size ``spatial``.

        "same" keeps ``ceil(size / stride)`` outputs with the odd pixel at the end (PyTorch's "same"
        for stride 1, TensorFlow's SAME beyond); "causal" pads only the beginning by (k-1)*dilation,
        so output t sees inputs <= t (for 2-D: top and left)."""
        r, k, s, d = self._rank, self.kernel_size, self.stride, self.dilation
        if self.padding == "valid":
            return (0,) * (2 * r)
        if self.padding == "causal":
            return tuple((k[i] - 1) * d[i] for i in range(r)) + (0,) * r
        if self.padding == "same":
            total = [max((-(-spatial[i] // s[i]) - 1) * s[i] + d[i] * (k[i] - 1) + 1 - spatial[i], 0) for i in range(r)]
            return tuple(t // 2 for t in total) + tuple(t - t // 2 for t in total)
        p = tuple(self.padding)
        return p if len(p) == 2 * r else p + p

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        check_input(x, "conv", self._rank + 2, self.in_channels)
        attrs = ConvAttrs(self.kernel_size, self.stride, self.pads(x.shape[2:]), self.dilation, self.groups)
        inputs = [x, self.weight] + ([self.bias] if self._parameters["bias"] is not None else [])
        return x.tracer.emit(OpKind.CONV, attrs, inputs, "conv")

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding not in (0, (0,) * self._rank, "valid"):
            s += f", padding={self.padding!r}"
        if self.dilation != (1,) * self._rank:
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self._parameters["bias"] is None:
            s += ", bias=False"
        return s


class Conv1d(_ConvNd):
    """1-D convolution over (N, C, L); ``padding="causal"`` pads (k-1)*dilation on the left only."""
    _rank = 1


class Conv2d(_ConvNd):
    """2-D convolution over (N, C, H, W); padding an int, a per-dimension tuple, an explicit
    (top, left, bottom, right) tuple, "same", "valid" or "causal" (top and left)."""
    _rank = 2


class ConvTranspose2d(Module):
    """Transposed 2-D convolution with PyTorch's parameters: weight (in, out/groups, kH, kW), output
    (H-1)*stride - 2*padding + dilation*(k-1) + output_padding + 1 (see ``output_shape``)."""

    _leaf = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 output_padding: int | Sequence[int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | Sequence[int] = 1):
        super().__init__()
        name = type(self).__name__
        if in_channels < 1 or out_channels < 1 or groups < 1 or in_channels % groups or out_channels % groups:
            raise ModelDefinitionError(f"{name}({in_channels}, {out_channels}) with groups={groups}: both channel "
                                       "counts must be positive and divide by groups")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = ntuple(kernel_size, 2, "kernel_size", name)
        self.stride = ntuple(stride, 2, "stride", name)
        self.padding = ntuple(padding, 2, "padding", name, minimum=0)
        self.output_padding = ntuple(output_padding, 2, "output_padding", name, minimum=0)
        self.dilation = ntuple(dilation, 2, "dilation", name)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ModelDefinitionError(f"{name} output_padding={self.output_padding} must be smaller than the stride "
                                       f"{self.stride} or the dilation {self.dilation}")
        self.register_parameter("weight", np.zeros((in_channels, out_channels // groups) + self.kernel_size))
        self.register_parameter("bias", np.zeros(out_channels) if bias else None)
        self.reset_parameters()

    def reset_parameters(self, rng: np.random.Generator | None = None) -> None:
        # PyTorch computes fan_in from weight.shape[1] * kH * kW = out/groups * kH * kW here too
        rng = rng or init.default_generator()
        shape = self._parameters["weight"].shape
        self.weight = init.kaiming_uniform(shape, rng)
        if self._parameters["bias"] is not None:
            self.bias = init.uniform((self.out_channels,), init.bias_bound(shape), rng)

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """(N, out, (H-1)*s - 2p + d*(k-1) + output_padding + 1, same for W)."""
        n, _, h, w = input_shape
        size = [(hw - 1) * s - 2 * p + d * (k - 1) + op + 1 for hw, s, p, d, k, op in
                zip((h, w), self.stride, self.padding, self.dilation, self.kernel_size, self.output_padding)]
        return (n, self.out_channels, *size)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        check_input(x, "conv_transpose", 4, self.in_channels)
        attrs = ConvTransposeAttrs(self.kernel_size, self.stride, self.padding + self.padding, self.dilation,
                                   self.groups, self.output_padding)
        inputs = [x, self.weight] + ([self.bias] if self._parameters["bias"] is not None else [])
        return x.tracer.emit(OpKind.CONV_TRANSPOSE, attrs, inputs, "conv_transpose")

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}")

