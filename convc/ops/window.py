"""The sliding-window geometry Conv, ConvTranspose, the windowed pools and Im2Col share.

Declared once here (with the fields' ONNX spelling), inherited by ConvAttrs, ConvTransposeAttrs,
PoolAttrs, LpPoolAttrs and Im2ColAttrs, whose own fields follow these four. Pads are in ONNX
order: all begins, then all ends; the importer resolves ``auto_pad`` into them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Self

from convc.ops.attrs import onnx_attr

@dataclass(frozen=True)
class WindowAttrs:
    kernel_shape: tuple[int, ...] = onnx_attr()
    strides: tuple[int, ...] = onnx_attr()
    pads: tuple[int, ...] = onnx_attr()        # all begins, then all ends
    dilations: tuple[int, ...] = onnx_attr()

    @property
    def spatial_rank(self) -> int:
        return len(self.kernel_shape)

    @property
    def pads_begin(self) -> tuple[int, ...]:
        return self.pads[:self.spatial_rank]

    @property
    def pads_end(self) -> tuple[int, ...]:
        return self.pads[self.spatial_rank:]

    def as_2d(self) -> Self:
        """A 1-D window as the 2-D one over a height of 1 (kernel, stride and dilation 1, no pads on
        the new axis); every other field kept. A 2-D window is returned as it is."""
        if self.spatial_rank == 2:
            return self
        if self.spatial_rank != 1:
            raise ValueError(f"a {self.spatial_rank}-D window has no 2-D form (kernel_shape={self.kernel_shape})")
        return dataclasses.replace(self, kernel_shape=(1,) + self.kernel_shape, strides=(1,) + self.strides,
                                   pads=(0, self.pads[0], 0, self.pads[1]), dilations=(1,) + self.dilations)

