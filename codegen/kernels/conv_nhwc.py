"""Channels-last (NHWC) convolution: an implicit GEMM whose A rows are read straight from the input."""
from __future__ import annotations

from convc.ir import Op
from convc.codegen.module import KernelCall, ModuleEmitter


def is_depthwise_channels_last(em: ModuleEmitter, op: Op) -> bool:
    channels = em.tensor(op.inputs[0]).shape[-1]
    return op.attrs.group == channels and em.tensor(op.outputs[0]).shape[-1] == channels


def emit_conv_channels_last(em: ModuleEmitter, op: Op) -> KernelCall:
    if is_depthwise_channels_last(em, op):
        from convc.codegen.kernels.depthwise_nhwc import emit_depthwise_channels_last
        return emit_depthwise_channels_last(em, op)
    raise NotImplementedError("channels-last conv")
