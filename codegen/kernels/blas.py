"""Register-tiled GEMM: C[M, N] = A[M, K] @ B[K, N] with a fused epilogue, BLIS style.

The micro-kernel keeps an MR x (NV vectors) tile of C in registers as phi values, and per k-step
loads NV vectors of B and broadcasts MR values of A into ``llvm.fma`` calls. Either operand is read
in place (rows with a leading dimension) or from panels packed at compile time (constant weights):
packed A is [ceil(M/MR)][K][MR] and packed B is [ceil(N/NR)][K][NR], both zero-padded, so the
micro-kernel reads them with unit stride. The tile of C stays in registers for the whole K loop
(blocking K measured no faster on CNN shapes here: A streams from L2/L3 with hardware prefetch
and the K x NR panel of B stays in L2). Every shape is known at compile time; fringes use a
smaller micro-kernel (M edge) or masked vector loads and stores (N edge).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from convc.ops.epilogue import Epilogue
from convc.codegen.kernels.activations import UNARY, VECTOR_UNARY
from convc.codegen.llvm_utils import F32, I1, I32, I64, PTR, VOID, constant, for_range, gep, i64



@dataclass(frozen=True)
class Isa:
    """Vector width and register tile for one instruction set."""
    name: str
    width: int  # floats per vector
    mr: int     # rows of C per micro-tile
    nv: int     # vectors of C per micro-tile row

    @property
    def nr(self) -> int:
        return self.width * self.nv


AVX512 = Isa("avx512", 16, 8, 2)
AVX2 = Isa("avx2", 8, 6, 2)
PORTABLE = Isa("sse", 4, 4, 2)
K_UNROLL = 4  # k-steps per iteration of a micro-kernel's k loop (GemmEmitter.k_loops)


def split_epilogue(epi: Epilogue) -> tuple[Epilogue, Epilogue]:
    """(the part the micro-kernel applies in registers, the part left for a scalar pass)."""
    if epi.activation is None or epi.activation in VECTOR_UNARY:
        return epi, Epilogue()
    return Epilogue(epi.residual), Epilogue(False, epi.activation, epi.activation_attrs)


def host_isa(features: str) -> Isa:
    flags = set(features.split(","))
    if "+avx512f" in flags:
        return AVX512
    if "+avx2" in flags and "+fma" in flags:
        return AVX2
    return PORTABLE


@dataclass(frozen=True)
class Operand:
    """How the micro-kernel reads an operand: packed panels, or rows with a leading dimension."""
    packed: bool
    ld: int = 0  # leading dimension when read in place


def pack_a(a: np.ndarray, isa: Isa) -> np.ndarray:
    """[M, K] -> [ceil(M/MR), K, MR], zero rows past M. One strided copy into the result (no padded
    intermediate): packing every weight of a model is a visible part of a cold compile."""
    m, k = a.shape
    full, rem = divmod(m, isa.mr)
    out = np.empty((full + (rem > 0), k, isa.mr), dtype=np.float32)
    out[:full] = a[:full * isa.mr].reshape(full, isa.mr, k).transpose(0, 2, 1)
    if rem:
        out[full, :, :rem] = a[full * isa.mr:].T
        out[full, :, rem:] = 0
    return out


def pack_b(b: np.ndarray, isa: Isa) -> np.ndarray:
    """[..., K, N] -> [..., ceil(N/NR), K, NR], zero columns past N (leading dims: several matrices
    packed in one pass, e.g. Winograd's t*t). ``b`` may be any strided view of any float dtype: it is
    read once, rounded to float32 as ``astype`` does, straight into the packed layout."""
    *lead, k, n = b.shape
    nr = isa.nr
    full, rem = divmod(n, nr)
    out = np.empty((*lead, full + (rem > 0), k, nr), dtype=np.float32)
    # panel by panel: each copy's source stays in cache even when ``b`` is a transposed view
    # (the Winograd U of a 512x512 layer packs 1.5x faster than in one strided copy)
    for p in range(full):
        out[..., p, :, :] = b[..., p * nr:(p + 1) * nr]
    if rem:
        out[..., full, :, :rem] = b[..., full * nr:]
        out[..., full, :, rem:] = 0
    return out


class GemmEmitter:
    """Emits micro-kernels (memoized per variant) and GEMM loop nests into one LLVM module."""

    def __init__(self, module: ir.Module, isa: Isa):
        self.module = module
        self.isa = isa
        self.vec = ir.VectorType(F32, isa.width)
        self._kernels: dict[tuple, ir.Function] = {}

    # --- vectors ---------------------------------------------------------------------------
    def splat(self, b: ir.IRBuilder, x: ir.Value) -> ir.Value:
        undef = constant(self.vec, ir.Undefined)
        v = b.insert_element(undef, x, constant(I32, 0))
        return b.shuffle_vector(v, undef, constant(ir.VectorType(I32, self.isa.width), (0,) * self.isa.width))

    def mask(self, valid: int) -> ir.Constant:
        return ir.Constant(ir.VectorType(I1, self.isa.width), [int(i < valid) for i in range(self.isa.width)])

    def vload(self, b: ir.IRBuilder, ptr: ir.Value, valid: int) -> ir.Value:
        if valid >= self.isa.width:
            return b.load(ptr, typ=self.vec, align=4)
        fn = self._intrinsic(f"llvm.masked.load.v{self.isa.width}f32.p0", self.vec,
                             [PTR, ir.IntType(32), ir.VectorType(I1, self.isa.width), self.vec])
        return b.call(fn, [ptr, ir.Constant(ir.IntType(32), 4), self.mask(valid), ir.Constant(self.vec, None)])

    def vstore(self, b: ir.IRBuilder, value: ir.Value, ptr: ir.Value, valid: int, stream: bool = False) -> None:
        """``stream``: a whole vector goes past the caches (a non-temporal store); ``ptr`` must then be
        aligned to the vector's size."""
        if valid >= self.isa.width:
            store = b.store(value, ptr, align=4 * self.isa.width if stream else 4)
            if stream:
                store.set_metadata("nontemporal", self.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
            return
        fn = self._intrinsic(f"llvm.masked.store.v{self.isa.width}f32.p0", VOID,
                             [self.vec, PTR, ir.IntType(32), ir.VectorType(I1, self.isa.width)])
        b.call(fn, [value, ptr, ir.Constant(ir.IntType(32), 4), self.mask(valid)])

    def _intrinsic(self, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
        if name in self.module.globals:
            return self.module.globals[name]
        return ir.Function(self.module, ir.FunctionType(ret, args), name=name)

    def fma(self, b: ir.IRBuilder, x: ir.Value, y: ir.Value, acc: ir.Value) -> ir.Value:
        fn = self._intrinsic(f"llvm.fma.v{self.isa.width}f32", self.vec, [self.vec] * 3)
        return b.call(fn, [x, y, acc])

    # --- the micro-kernel -----------------------------------------------------------------
    def micro_kernel(self, mr: int, n_valid: int, k: int, a: Operand, bop: Operand, ldc: int, init: str,
                     epi: Epilogue) -> ir.Function:
        """void mk(A, B, C, bias, residual, K, lda, ldb, ldc): C[0:mr, 0:n_valid] = init + A @ B,
        then the epilogue.

        ``init`` says what C starts from: "zero", "bias_row" (bias[i] per row), "bias_col" (bias[j]
        per column) or "load" (C already holds beta*C). K and the leading dimensions are run-time
        arguments so that one micro-kernel serves every layer with the same tile shape: a model
        then has a few dozen of them, not one per layer (LLVM's time grows with their number)."""
        key = (mr, n_valid, a.packed, bop.packed, init, epi)
        if key in self._kernels:
            return self._kernels[key]
        w, isa = self.isa.width, self.isa
        nv = -(-n_valid // w)
        fn = ir.Function(self.module, ir.FunctionType(VOID, [PTR] * 5 + [I64] * 4),
                         name=f"mk{len(self._kernels)}_{mr}x{n_valid}")
        fn.linkage = "internal"
        for arg in fn.args[:3]:
            arg.add_attribute("noalias")
        pa, pb, pc, bias, residual, k, lda, ldb, ldc = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        zero = ir.Constant(self.vec, None)

        def step(b: ir.IRBuilder, kk: ir.Value, accs: list[list[ir.Value]]) -> list[list[ir.Value]]:
            b_row = gep(b, pb, b.mul(kk, i64(isa.nr) if bop.packed else ldb))
            bvecs = [self.vload(b, gep(b, b_row, v * w), w if bop.packed else n_valid - v * w) for v in range(nv)]
            a_k = gep(b, pa, b.mul(kk, i64(isa.mr)) if a.packed else kk)
            new = []
            for i in range(mr):
                s = self.splat(b, b.load(gep(b, a_k, i if a.packed else b.mul(lda, i64(i))), typ=F32))
                new.append([self.fma(b, s, bvecs[v], accs[i][v]) for v in range(nv)])
            return new
        accs = self.k_loops(b, i64(0), k, [[zero] * nv for _ in range(mr)], step)
        self.store_tile(b, accs, n_valid, pc, ldc, init, bias, residual, epi)
        b.ret_void()
        self._kernels[key] = fn
        return fn

    def k_loops(self, b: ir.IRBuilder, lo: ir.Value, hi: ir.Value, accs: list[list[ir.Value]], step,
                unroll: int = K_UNROLL) -> list[list[ir.Value]]:
        """The k loop of a micro-kernel: ``accs = step(b, k, accs)`` for k in [lo, hi), ``unroll``
        steps per iteration and then the remaining ones singly. Unrolled, the loop's own add,
        compare and branch no longer take issue slots from the FMAs: a 3x3 conv went from 71% to
        82-91% of peak on a Xeon with two 512-bit FMA units. Returns the accumulators after."""
        whole = b.sub(hi, b.urem(b.sub(hi, lo), i64(unroll)))
        k = lo
        for name, steps, limit in (("k.unrolled", unroll, whole), ("k.rest", 1, hi)):
            pred = b.block
            head = b.append_basic_block(f"{name}.header")
            body = b.append_basic_block(f"{name}.body")
            out = b.append_basic_block(f"{name}.exit")
            b.branch(head)
            b.position_at_end(head)
            kk = b.phi(I64, "k")
            kk.add_incoming(k, pred)
            phis = [[b.phi(self.vec) for _ in row] for row in accs]
            for prow, row in zip(phis, accs):
                for phi, acc in zip(prow, row):
                    phi.add_incoming(acc, pred)
            b.cbranch(b.icmp_signed("<", kk, limit), body, out)
            b.position_at_end(body)
            new = phis
            for u in range(steps):
                new = step(b, b.add(kk, i64(u)) if u else kk, new)
            kk.add_incoming(b.add(kk, i64(steps)), b.block)
            for prow, row in zip(phis, new):
                for phi, acc in zip(prow, row):
                    phi.add_incoming(acc, b.block)
            b.branch(head)
            b.position_at_end(out)
            k, accs = kk, phis
        return accs

    def store_tile(self, b: ir.IRBuilder, accs: list[list[ir.Value]], n_valid: int, pc: ir.Value, ldc: ir.Value,
                   init: str, bias: ir.Value, residual: ir.Value, epi: Epilogue, stream: bool = False) -> None:
        """C[i, 0:n_valid] = init + accs[i], then the epilogue, for each row i of the register tile
        (rows ``ldc`` apart; the residual has C's layout); ``stream``: whole vectors stored past the
        caches (``vstore``)."""
        w = self.isa.width
        for i, row in enumerate(accs):
            for v, val in enumerate(row):
                valid = min(w, n_valid - v * w)
                c_at = b.add(b.mul(ldc, i64(i)), i64(v * w))
                cptr = gep(b, pc, c_at)
                if init == "bias_row":
                    val = b.fadd(val, self.splat(b, b.load(gep(b, bias, i), typ=F32)))
                elif init == "bias_col":
                    val = b.fadd(val, self.vload(b, gep(b, bias, v * w), valid))
                elif init == "load":
                    val = b.fadd(val, self.vload(b, cptr, valid))
                if epi.residual:
                    val = b.fadd(val, self.vload(b, gep(b, residual, c_at), valid))
                if epi.activation is not None:
                    val = UNARY[epi.activation](b, val, epi.activation_attrs)
                self.vstore(b, val, cptr, valid, stream)

    # --- loop nests -----------------------------------------------------------------------
    def panel(self, b: ir.IRBuilder, m: int, k: int, pa: ir.Value, a: Operand, pb: ir.Value, bop: Operand,
              pc: ir.Value, ldc: int, n_valid: int, init: str = "zero", bias: ir.Value | None = None,
              epi: Epilogue = Epilogue(), residual: ir.Value | None = None,
              tiles: tuple[ir.Value, ir.Value] | None = None) -> None:
        """One column panel (n_valid <= NR columns) of C for every row, or for the row tiles
        [lo, hi) of ``tiles`` (MR rows each, the last one possibly shorter): ``pb``, ``pc``,
        ``residual`` and, for "bias_col", ``bias`` point at the panel's first column."""
        isa = self.isa
        null = ir.Constant(PTR, None)
        full_m, rem_m = divmod(m, isa.mr)

        def tile(row0: ir.Value, mr: int) -> None:
            mk = self.micro_kernel(mr, n_valid, k, a, bop, ldc, init, epi)
            dims = [i64(k), i64(a.ld), i64(bop.ld), i64(ldc)]
            a_at = gep(b, pa, b.mul(row0, i64(k))) if a.packed else gep(b, pa, b.mul(row0, i64(a.ld)))
            c_off = b.mul(row0, i64(ldc))
            bias_at = gep(b, bias, row0) if init == "bias_row" else bias if init == "bias_col" else null
            res_at = gep(b, residual, c_off) if epi.residual else null
            b.call(mk, [a_at, pb, gep(b, pc, c_off), bias_at, res_at] + dims)

        lo, hi = tiles if tiles is not None else (i64(0), i64(full_m + (rem_m > 0)))
        if full_m:
            full_hi = b.select(b.icmp_unsigned("<", hi, i64(full_m)), hi, i64(full_m))
            with for_range(b, full_hi, start=lo, name="ir") as ir_:
                tile(b.mul(ir_, i64(isa.mr)), isa.mr)
        if rem_m:
            with b.if_then(b.icmp_unsigned(">", hi, i64(full_m))):
                tile(i64(full_m * isa.mr), rem_m)

    def gemm(self, b: ir.IRBuilder, m: int, n: int, k: int, pa: ir.Value, a: Operand, pb: ir.Value, bop: Operand,
             pc: ir.Value, ldc: int, init: str = "zero", bias: ir.Value | None = None,
             epi: Epilogue = Epilogue(), residual: ir.Value | None = None,
             panels: tuple[ir.Value, ir.Value] | None = None,
             tiles: tuple[ir.Value, ir.Value] | None = None) -> None:
        """C[M, N] = init + A @ B, then the epilogue, column panel after column panel; ``panels``
        = [lo, hi) restricts the work to those column panels, ``tiles`` to those row tiles of MR
        rows (to split it between threads)."""
        isa = self.isa
        full_n, rem_n = divmod(n, isa.nr)

        def column(panel: ir.Value, n_valid: int) -> None:
            col0 = b.mul(panel, i64(isa.nr))
            pb_at = gep(b, pb, b.mul(panel, i64(k * isa.nr))) if bop.packed else gep(b, pb, col0)
            self.panel(b, m, k, pa, a, pb_at, bop, gep(b, pc, col0), ldc, n_valid, init,
                       gep(b, bias, col0) if init == "bias_col" else bias, epi,
                       gep(b, residual, col0) if epi.residual else None, tiles)

        lo, hi = panels if panels is not None else (i64(0), i64(full_n + (rem_n > 0)))
        if full_n:
            full_hi = b.select(b.icmp_unsigned("<", hi, i64(full_n)), hi, i64(full_n))
            with for_range(b, full_hi, start=lo, name="jr") as jr:
                column(jr, isa.nr)
        if rem_n:
            with b.if_then(b.icmp_unsigned(">", hi, i64(full_n))):
                column(i64(full_n), rem_n)

    def pack_panel(self, b: ir.IRBuilder, src: ir.Value, ld: int, k: int, n_valid: int, dst: ir.Value) -> None:
        """Copy a K x n_valid block of B (rows ``ld`` apart) into a unit-stride K x NR panel, zero-padded.

        Reading B in place with a leading dimension that is a multiple of 256 floats maps every
        row to the same few L1 sets; the copy costs 1/M of the GEMM that reads it."""
        w, nr = self.isa.width, self.isa.nr
        zero = ir.Constant(self.vec, None)
        with for_range(b, k, name="pk") as kk:
            row = gep(b, src, b.mul(kk, i64(ld)))
            out = gep(b, dst, b.mul(kk, i64(nr)))
            for v in range(nr // w):
                valid = n_valid - v * w
                val = self.vload(b, gep(b, row, v * w), valid) if valid > 0 else zero
                b.store(val, gep(b, out, v * w), align=4)

    def n_panels(self, n: int) -> int:
        return -(-n // self.isa.nr)

    def n_tiles(self, m: int) -> int:
        return -(-m // self.isa.mr)
