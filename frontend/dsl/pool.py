"""Pooling layers: MaxPool1d/2d, AvgPool1d/2d (PyTorch defaults) and GlobalAvgPool."""
from __future__ import annotations

from typing import ClassVar, Sequence

from convc.frontend.dsl.conv import _SPATIAL, ntuple
from convc.frontend.dsl.module import Module
from convc.frontend.dsl.tracing import SymbolicTensor
from convc.ops import OpKind
from convc.ops.pool import GlobalPoolAttrs, PoolAttrs


class _PoolNd(Module):
    _leaf = True
    _rank: ClassVar[int]
    _kind: ClassVar[OpKind]
    _fn: ClassVar[str]

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__()
        name, r = type(self).__name__, self._rank
        self.kernel_size = ntuple(kernel_size, r, "kernel_size", name)
        self.stride = ntuple(stride if stride is not None else self.kernel_size, r, "stride", name)
        self.padding = ntuple(padding, r, "padding", name, minimum=0)
        self.dilation = ntuple(dilation, r, "dilation", name)
        self.ceil_mode = bool(ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        rank = self._rank + 2
        if x.ndim != rank:
            raise x.tracer.shape_error(self._fn, f"expects a {rank}-D input {_SPATIAL[self._rank]} but its input has "
                                                 f"shape {x.shape} ({x.after()})")
        attrs = PoolAttrs(self.kernel_size, self.stride, self.padding + self.padding, self.dilation, self.ceil_mode,
                          self.count_include_pad and self._kind is OpKind.AVERAGE_POOL)
        return x.tracer.emit(self._kind, attrs, [x], self._fn)

    def extra_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
        if self.dilation != (1,) * self._rank:
            s += f", dilation={self.dilation}"
        return s + (", ceil_mode=True" if self.ceil_mode else "")


class _MaxPoolNd(_PoolNd):
    _kind = OpKind.MAX_POOL
    _fn = "max_pool"

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, dilation: int | Sequence[int] = 1, ceil_mode: bool = False):
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)


class _AvgPoolNd(_PoolNd):
    _kind = OpKind.AVERAGE_POOL
    _fn = "avg_pool"

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode, count_include_pad)

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")


class MaxPool1d(_MaxPoolNd):
    _rank = 1


class MaxPool2d(_MaxPoolNd):
    _rank = 2


class AvgPool1d(_AvgPoolNd):
    """Average pooling over (N, C, L); like PyTorch, padded zeros count in the divisor by default."""
    _rank = 1


class AvgPool2d(_AvgPoolNd):
    """Average pooling over (N, C, H, W); like PyTorch, padded zeros count in the divisor by default."""
    _rank = 2


class GlobalAvgPool(Module):
    """Mean over every spatial dimension: (N, C, *spatial) -> (N, C, 1, ...) (AdaptiveAvgPool to 1)."""
    _leaf = True

    def forward(self, x: SymbolicTensor) -> SymbolicTensor:
        if x.ndim < 3:
            raise x.tracer.shape_error("global_avg_pool", f"expects an input (N, C, spatial...) of rank >= 3 but its "
                                                          f"input has shape {x.shape} ({x.after()})")
        return x.tracer.emit(OpKind.GLOBAL_AVERAGE_POOL, GlobalPoolAttrs(), [x], "global_avg_pool")
