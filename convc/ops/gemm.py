"""Gemm (Y = alpha * A' B' + beta * C) and MatMul (numpy semantics)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from convc.errors import GraphError
from convc.ops.attrs import onnx_attr
from convc.ops.conv import split_inputs
from convc.ops.epilogue import NO_EPILOGUE, Epilogue, epilogue_flops
from convc.ops.base import (NoAttrs, OpDef, OpKind, TensorType, broadcast_shapes, check_arity, check_float, per_output,
                            register)


@dataclass(frozen=True)
class GemmAttrs:
    alpha: float = onnx_attr(1.0)
    beta: float = onnx_attr(1.0)
    trans_a: bool = onnx_attr(False, name="transA")
    trans_b: bool = onnx_attr(False, name="transB")
    epilogue: Epilogue = NO_EPILOGUE


def gemm_infer(a: GemmAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.GEMM, types, 2 + a.epilogue.residual, 3 + a.epilogue.residual)
    check_float(OpKind.GEMM, types)
    ta, tb, tc, residual = split_inputs(a, types)
    if ta.rank != 2 or tb.rank != 2:
        raise GraphError(f"Gemm needs 2-D A and B, got A.shape={ta.shape}, B.shape={tb.shape}")
    m, k = ta.shape[::-1] if a.trans_a else ta.shape
    k2, n = tb.shape[::-1] if a.trans_b else tb.shape
    if k != k2:
        raise GraphError(f"A.shape={ta.shape} (transA={int(a.trans_a)}) and B.shape={tb.shape} "
                         f"(transB={int(a.trans_b)}) disagree on K: {k} vs {k2}")
    if tc is not None and broadcast_shapes(OpKind.GEMM, tc.shape, (m, n)) != (m, n):
        raise GraphError(f"C.shape={tc.shape} does not broadcast to (M, N)=({m}, {n})")
    if residual is not None and residual.shape != (m, n):
        raise GraphError(f"fused residual shape {residual.shape} differs from the output shape {(m, n)}")
    return [TensorType((m, n), ta.dtype)]


def gemm_reference(a: GemmAttrs, *inputs: np.ndarray) -> list[np.ndarray]:
    x, w, c, residual = split_inputs(a, inputs)
    x64 = x.astype(np.float64).T if a.trans_a else x.astype(np.float64)
    w64 = w.astype(np.float64).T if a.trans_b else w.astype(np.float64)
    y = a.alpha * (x64 @ w64)
    if c is not None:
        y = y + a.beta * c
    return [a.epilogue.reference(y.astype(x.dtype), residual)]


def gemm_macs(a: GemmAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    k = ins[0].shape[0] if a.trans_a else ins[0].shape[1]
    return outs[0].shape[0] * outs[0].shape[1] * k


def matmul_infer(a: NoAttrs, types: Sequence[TensorType]) -> list[TensorType]:
    check_arity(OpKind.MATMUL, types, 2, 2)
    check_float(OpKind.MATMUL, types)
    sa, sb = types[0].shape, types[1].shape
    if not sa or not sb:
        raise GraphError(f"MatMul needs inputs of rank >= 1, got A.shape={sa}, B.shape={sb}")
    a2 = (1,) + sa if len(sa) == 1 else sa
    b2 = sb + (1,) if len(sb) == 1 else sb
    if a2[-1] != b2[-2]:
        raise GraphError(f"MatMul A.shape={sa} and B.shape={sb} disagree on K: {a2[-1]} vs {b2[-2]}")
    batch = broadcast_shapes(OpKind.MATMUL, a2[:-2], b2[:-2])
    out = batch + (a2[-2],) * (len(sa) > 1) + (b2[-1],) * (len(sb) > 1)
    return [TensorType(out, types[0].dtype)]


def matmul_reference(a: NoAttrs, x: np.ndarray, w: np.ndarray) -> list[np.ndarray]:
    return [np.matmul(x.astype(np.float64), w.astype(np.float64)).astype(x.dtype)]


def matmul_macs(a: NoAttrs, ins: Sequence[TensorType], outs: Sequence[TensorType]) -> int:
    return int(np.prod(outs[0].shape, dtype=np.int64)) * ins[0].shape[-1]


register(OpDef(OpKind.GEMM, GemmAttrs, gemm_infer, gemm_reference, gemm_macs, n_inputs=(2, 4), flops=epilogue_flops))
register(OpDef(OpKind.MATMUL, NoAttrs, matmul_infer, matmul_reference, matmul_macs, n_inputs=(2, 2),
               flops=per_output(0)))
