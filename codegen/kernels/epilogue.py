"""Fused epilogues: y = activation(y + residual) over a conv/gemm output."""
from __future__ import annotations

from llvmlite import ir

from convc.ops.epilogue import Epilogue
from convc.codegen.llvm_utils import for_range, load, store
from convc.codegen.kernels.elementwise import UNARY


def apply_epilogue(b: ir.IRBuilder, epi: Epilogue, value: ir.Value, residual: ir.Value | None) -> ir.Value:
    """The epilogue on one value (scalar or vector) already computed by the kernel."""
    if epi.residual:
        value = b.fadd(value, residual)
    if epi.activation is not None:
        value = UNARY[epi.activation](b, value, epi.activation_attrs)
    return value


def epilogue_pass(b: ir.IRBuilder, epi: Epilogue, y: ir.Value, residual: ir.Value | None, count) -> None:
    """Apply the epilogue in place over ``count`` contiguous outputs."""
    if epi.empty:
        return
    with for_range(b, count, name="epi") as i:
        r = load(b, residual, i) if epi.residual else None
        store(b, apply_epilogue(b, epi, load(b, y, i), r), y, i)
