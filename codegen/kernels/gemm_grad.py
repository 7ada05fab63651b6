"""Gemm and 2-D MatMul with operands known only at run time (training parameters and gradients).

The micro-kernel reads A as rows and B as rows; a transposed operand is first copied transposed
into kernel scratch (the backward's Gemms transpose one operand each, and that operand is small:
a weight, or a batch of activations). A row-vector bias with beta 1 starts the accumulators; any
other C is written (times beta) first and accumulated onto. ``alpha != 1`` scales afterwards.
"""
from __future__ import annotations

from convc.codegen.kernels.blas import Operand, split_epilogue
from convc.codegen.kernels.conv_grad import emit_transpose
from convc.codegen.kernels.elementwise import broadcast_strides
from convc.codegen.kernels.epilogue import epilogue_pass
from convc.codegen.kernels.gemm import fill_broadcast
from convc.codegen.llvm_utils import f32, gep, linear_index, load, loop_nest, store
from convc.codegen.module import KernelCall, ModuleEmitter
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.ops.epilogue import NO_EPILOGUE


def emit_gemm_runtime(em: ModuleEmitter, op: Op) -> KernelCall:
    if op.kind is OpKind.MATMUL:
        trans_a = trans_b = has_c = False
        alpha, beta, epi = 1.0, 0.0, NO_EPILOGUE
    else:
        at = op.attrs
        trans_a, trans_b, alpha, beta, epi = at.trans_a, at.trans_b, at.alpha, at.beta, at.epilogue
        has_c = len(op.inputs) - epi.residual == 3 and beta != 0.0
    sa = em.tensor(op.inputs[0]).shape
    m, n = em.tensor(op.outputs[0]).shape
    k = sa[0] if trans_a else sa[1]
    c_shape = em.tensor(op.inputs[2]).shape if has_c else ()
    a_floats = m * k if trans_a else 0
    b_floats = k * n if trans_b else 0
    args = [op.inputs[0], op.inputs[1]] + ([op.inputs[2]] if has_c else []) + \
        ([op.inputs[-1]] if epi.residual else []) + [op.outputs[0]]
    n_named = len(args)
    if a_floats + b_floats:
        args.append(em.scratch((a_floats + b_floats) * 4))
    fn, b = em.function(op.name, len(args))
    pa, pb = fn.args[0], fn.args[1]
    c = fn.args[2] if has_c else None
    y = fn.args[n_named - 1]
    residual = fn.args[n_named - 2] if epi.residual else None
    if trans_a:  # A is stored [K, M]
        emit_transpose(b, pa, fn.args[-1], k, m)
        pa = fn.args[-1]
    if trans_b:  # B is stored [N, K]
        bt = gep(b, fn.args[-1], a_floats)
        emit_transpose(b, pb, bt, n, k)
        pb = bt
    a_op, b_op = Operand(False, k), Operand(False, n)
    if alpha == 1.0:
        bias_init = has_c and beta == 1.0 and c_shape in ((n,), (1, n))
        if has_c and not bias_init:
            fill_broadcast(b, y, (m, n), c, c_shape, beta)
        in_kernel, after = split_epilogue(epi)
        em.gemm.gemm(b, m, n, k, pa, a_op, pb, b_op, y, n, "bias_col" if bias_init else "load" if has_c else "zero",
                     c if bias_init else None, in_kernel, residual)
        epilogue_pass(b, after, y, None, m * n)
    else:
        em.gemm.gemm(b, m, n, k, pa, a_op, pb, b_op, y, n, "zero")
        _scale_add(b, y, (m, n), alpha, c, c_shape, beta)
        epilogue_pass(b, epi, y, residual, m * n)
    b.ret_void()
    return KernelCall(fn, args)


def _scale_add(b: ir.IRBuilder, y: ir.Value, shape: tuple[int, int], alpha: float, c: ir.Value | None,
               c_shape: tuple[int, ...], beta: float) -> None:
    """y = alpha * y + beta * C (C broadcast to y's shape)."""
    y_strides = broadcast_strides(shape, shape)
    c_strides = broadcast_strides(c_shape, shape) if c is not None else None
    with loop_nest(b, shape) as idx:
        at = linear_index(b, idx, y_strides)
        v = b.fmul(load(b, y, at), f32(alpha))
        if c is not None:
            v = b.fadd(v, b.fmul(load(b, c, linear_index(b, idx, c_strides)), f32(beta)))
        store(b, v, y, at)

