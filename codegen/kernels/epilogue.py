"""Fused epilogues: y = activation(y + residual) over a conv/gemm output."""
from __future__ import annotations

from llvmlite import ir

from convc.ops.epilogue import Epilogue
from convc.codegen.kernels.activations import UNARY
from convc.codegen.kernels.elementwise import vector_map

PASS_WIDTH = 8  # floats per vector in a separate epilogue pass (one AVX2 register; two SSE, half an AVX-512)


def apply_epilogue(b: ir.IRBuilder, epi: Epilogue, value: ir.Value, residual: ir.Value | None) -> ir.Value:
    """The epilogue on one value (scalar or vector) already computed by the kernel."""
    if epi.residual:
        value = b.fadd(value, residual)
    if epi.activation is not None:
        value = UNARY[epi.activation](b, value, epi.activation_attrs)
    return value


def epilogue_pass(b: ir.IRBuilder, epi: Epilogue, y: ir.Value, residual: ir.Value | None, count) -> None:
    """Apply the epilogue in place over ``count`` contiguous outputs, in vectors (then a scalar tail)."""
    if epi.empty:
        return
    srcs = [y, residual] if epi.residual else [y]
    vector_map(b, lambda b, v: apply_epilogue(b, epi, v[0], v[1] if epi.residual else None), srcs, y, 0, count,
               PASS_WIDTH)
