"""Gemm and MatMul, and the matrix-product loop nest that convolution reuses."""
from __future__ import annotations

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.ops import OpKind
from convc.codegen.llvm_utils import FAST, f32, for_range, gep, i64, linear_index, load, loop_nest, store
from convc.codegen.module import KernelCall, ModuleEmitter, emitter
from convc.codegen.kernels.blas import Operand, pack_b, split_epilogue
from convc.codegen.kernels.elementwise import broadcast_strides
from convc.codegen.kernels.epilogue import epilogue_pass

N_BLOCK = 256  # columns of C kept hot in L1 while a row of A streams through


def matmul_loops(b: ir.IRBuilder, m: int, n: int, k: int,
                 a: ir.Value, a_strides: tuple[int, int], bm: ir.Value, b_strides: tuple[int, int],
                 c: ir.Value, ldc: int, alpha: float = 1.0) -> None:
    """C[i, j] += alpha * sum_k A[i, k] * B[k, j]; element (r, s) of X lives at r*strides[0] + s*strides[1].

    The inner loop runs over j, contiguous in C (and in B when b_strides[1] == 1), so it vectorizes."""
    for j0 in range(0, n, N_BLOCK):
        nb = min(N_BLOCK, n - j0)
        with for_range(b, m, name="m") as i:
            c_row = gep(b, c, b.add(b.mul(i, i64(ldc)), i64(j0)))
            with for_range(b, k, name="k") as kk:
                av = load(b, a, linear_index(b, [i, kk], a_strides))
                if alpha != 1.0:
                    av = b.fmul(av, f32(alpha))
                b_row = gep(b, bm, b.add(b.mul(kk, i64(b_strides[0])), i64(j0 * b_strides[1])))
                with for_range(b, nb, name="n") as j:
                    bj = j if b_strides[1] == 1 else b.mul(j, i64(b_strides[1]))
                    acc = b.fadd(load(b, c_row, j), b.fmul(av, load(b, b_row, bj), flags=FAST), flags=FAST)
                    store(b, acc, c_row, j)


def fill_broadcast(b: ir.IRBuilder, dst: ir.Value, shape: tuple[int, ...], src: ir.Value | None,
                   src_shape: tuple[int, ...] = (), scale: float = 1.0) -> None:
    """dst[...] = scale * src broadcast to ``shape`` (zeros when src is None)."""
    strides = broadcast_strides(src_shape, shape) if src is not None else None
    with loop_nest(b, shape) as idx:
        v = f32(0.0) if src is None else load(b, src, linear_index(b, idx, strides))
        if src is not None and scale != 1.0:
            v = b.fmul(v, f32(scale))
        store(b, v, dst, linear_index(b, idx, broadcast_strides(shape, shape)))


@emitter(OpKind.GEMM)
def emit_gemm(em: ModuleEmitter, op: Op) -> KernelCall:
    at = op.attrs
    sa, sb = em.tensor(op.inputs[0]).shape, em.tensor(op.inputs[1]).shape
    m, n = em.tensor(op.outputs[0]).shape
    k = sa[0] if at.trans_a else sa[1]
    epi = at.epilogue
    has_c = len(op.inputs) - epi.residual == 3 and at.beta != 0.0
    c_shape = em.tensor(op.inputs[2]).shape if has_c else ()
    weight = em.tensor(op.inputs[1])
    # the fast path: A read in place, constant B (times alpha) packed here, once, into panels
    fast = weight.data is not None and not at.trans_a
    b_arg: str | object = op.inputs[1]
    if fast:
        wmat = (weight.data.T if at.trans_b else weight.data).astype(np.float64) * at.alpha
        b_arg = em.derived_constant(pack_b(wmat.astype(np.float32), em.isa))
    bias_init = fast and has_c and at.beta == 1.0 and c_shape in ((n,), (1, n))
    args = [op.inputs[0], b_arg] + ([op.inputs[2]] if has_c else []) + \
        ([op.inputs[-1]] if epi.residual else []) + [op.outputs[0]]
    fill = has_c and not bias_init or not fast  # C starts as beta * C broadcast (or zeros)
    parallel = fast and not fill
    # threads split the column panels (a fully connected layer: few rows), or the row tiles when
    # there are many rows and too few panels to share (a GEMM of M=3136, N=144 ran slower on two
    # threads than on one when split into its 5 panels)
    by_rows = em.gemm.n_tiles(m) >= 8 * em.threads and em.gemm.n_panels(n) < 4 * em.threads
    fn, bld = em.function(op.name, len(args), parallel=parallel)
    nargs = len(args)
    a, bm = fn.args[0], fn.args[1]
    y = fn.args[nargs - 1]
    residual = fn.args[nargs - 2] if epi.residual else None
    if fill:
        fill_broadcast(bld, y, (m, n), fn.args[2] if has_c else None, c_shape, at.beta)
    if fast:
        in_kernel, after = split_epilogue(epi)
        init = "bias_col" if bias_init else "load" if has_c else "zero"
        panels = em.thread_range(bld, fn, em.gemm.n_panels(n)) if parallel and not by_rows else None
        tiles = em.thread_range(bld, fn, em.gemm.n_tiles(m)) if parallel and by_rows else None
        em.gemm.gemm(bld, m, n, k, a, Operand(False, k), bm, Operand(True), y, n,
                     init, fn.args[2] if bias_init else None, in_kernel, residual, panels, tiles)
        if not after.empty and tiles is not None:  # each thread finishes its own rows
            mr = em.isa.mr
            r_lo = bld.mul(tiles[0], i64(mr))
            r_hi = bld.mul(tiles[1], i64(mr))
            r_hi = bld.select(bld.icmp_unsigned("<", r_hi, i64(m)), r_hi, i64(m))
            epilogue_pass(bld, after, gep(bld, y, bld.mul(r_lo, i64(n))), None, bld.mul(bld.sub(r_hi, r_lo), i64(n)))
        elif not after.empty:  # each thread finishes its own columns
            lo, hi = panels if panels is not None else (i64(0), i64(em.gemm.n_panels(n)))
            nr = em.isa.nr
            with for_range(bld, m, name="row") as i:
                row = gep(bld, y, bld.mul(i, i64(n)))
                c_lo = bld.mul(lo, i64(nr))
                c_hi = bld.mul(hi, i64(nr))
                c_hi = bld.select(bld.icmp_unsigned("<", c_hi, i64(n)), c_hi, i64(n))
                epilogue_pass(bld, after, gep(bld, row, c_lo), None, bld.sub(c_hi, c_lo))
    else:
        b_strides = (1, sb[1]) if at.trans_b else (sb[1], 1)
        matmul_loops(bld, m, n, k, a, (1, sa[1]) if at.trans_a else (sa[1], 1), bm, b_strides, y, n, at.alpha)
        epilogue_pass(bld, epi, y, residual, m * n)
    bld.ret_void()
    return KernelCall(fn, args)


@emitter(OpKind.MATMUL)
def emit_matmul(em: ModuleEmitter, op: Op) -> KernelCall:
    sa, sb = em.tensor(op.inputs[0]).shape, em.tensor(op.inputs[1]).shape
    a2 = (1,) + sa if len(sa) == 1 else sa
    b2 = sb + (1,) if len(sb) == 1 else sb
    m, k, n = a2[-2], a2[-1], b2[-1]
    batch = tuple(np.broadcast_shapes(a2[:-2], b2[:-2]))
    fn, bld = em.function(op.name, 3)
    a, bm, y = fn.args
    a_bs = broadcast_strides(a2[:-2], batch)
    b_bs = broadcast_strides(b2[:-2], batch)
    y_bs = broadcast_strides(batch, batch)
    with loop_nest(bld, batch or (1,)) as idx:
        idx = idx if batch else []
        ap = gep(bld, a, bld.mul(linear_index(bld, idx, a_bs), i64(m * k)))
        bp = gep(bld, bm, bld.mul(linear_index(bld, idx, b_bs), i64(k * n)))
        yp = gep(bld, y, bld.mul(linear_index(bld, idx, y_bs), i64(m * n)))
        fill_broadcast(bld, yp, (m, n), None)
        matmul_loops(bld, m, n, k, ap, (k, 1), bp, (n, 1), yp, n)
    bld.ret_void()
    return KernelCall(fn, [op.inputs[0], op.inputs[1], op.outputs[0]])
