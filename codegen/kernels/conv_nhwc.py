"""Channels-last (NHWC) convolution as an implicit GEMM: no im2col copy.

With one pixel's channels contiguous, output pixel p's im2col row is, tap after tap, a run of C
contiguous input floats. So Y[P, M] = sum over taps of A_tap[P, C] @ W_tap[C, M], where A_tap's row
p starts at the input pixel under tap ``t`` of output pixel p. The micro-kernel keeps an MR x NR
tile of Y in registers across all taps and channels; per tile it computes MR row offsets once and
per tap adds the tap's offset, a constant of the layer. Without horizontal dilation a kernel row's
taps are adjacent pixels, so one "tap" is a whole kernel row: a run of kw*C floats (a 7x7 stem conv
on 3 channels then loops 7 times over 21 floats, not 49 times over 3). Padding: when the conv has
pads, each thread first copies the input rows its outputs read into a zero-bordered scratch image, so the
inner loops never test bounds (the copy is 1/(taps x M) of the arithmetic).

Weights are packed at compile time as B[K = (kh, kw, c), M] in NR-wide panels, exactly the GEMM
micro-kernel's layout. Threads split the output rows (without padding: the register tiles of
output pixels), or the column panels when there are too few rows (a deep layer at batch 1) or when
megabytes of weights dwarf the input (each core then reads half of them).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from llvmlite import ir

from convc.ir import Op
from convc.passes.memory import align
from convc.ops import OpKind
from convc.ops.conv import input_scale_of, split_inputs
from convc.ops.epilogue import Epilogue
from convc.codegen.llvm_utils import F32, I64, PTR, VOID, as_i64, constant_table, for_range, gep, i64, memcpy, prefetch
from convc.codegen.module import KernelCall, ModuleEmitter
from convc.codegen.kernels.blas import GemmEmitter, pack_b, split_epilogue
from convc.codegen.kernels.conv_nhwc_index import (pad_input_rows, panel_groups, pixel_offset, pixels_per_thread,
                                                   product, tile_isa, tile_pixel_offsets, tile_rows, value)
from convc.codegen.kernels.epilogue import epilogue_pass

L2_PANEL_BYTES = 512 * 1024  # B panels sized to stay in L2 while every pixel tile of a thread streams by
# weights beyond this many bytes do not stay in cache from one call to the next (a ResNet-18 has
# 44 MB): the first pixel tile of each panel prefetches them, which made its 9 MB 3x3 convs 10% faster
STREAMED_WEIGHT_BYTES = 2 * 1024 * 1024
PREFETCH_BYTES = 2048
# a 1x1 conv streams its input once, tile after tile, through rows C floats long: the hardware prefetchers
# fall behind on it (MobileNetV2's 144 -> 24 projection at 56x56, batch 16: 29 MB of input), so each tile
# asks for the input of the tile A_PREFETCH_TILES ahead (1-4 measured alike, 15-20% faster than none)
A_PREFETCH_TILES = 2
# outputs this large are stored past the caches (non-temporal stores): a store that misses the cache
# first reads the line it overwrites, and an output this size comes back from memory anyway
STREAM_MIN_BYTES = 8 << 20
# activations too long to apply to the register tile: their temporaries spill the accumulators (GELU there made
# ConvNeXt's 32->128 Linear, as a 1x1 conv, 4x slower than its plain GEMM and a separate GELU pass); they run
# over each finished tile's rows instead, still in L1
TILE_PASS_ACTIVATIONS = frozenset({OpKind.GELU, OpKind.MISH, OpKind.ERF})
PAD_OUTPUT_PIXELS = 64  # an output of at most this many pixels is computed in whole panels (emit_implicit_gemm_conv)


def conv_micro_kernel(em: ModuleEmitter, gemm: GemmEmitter, n_valid: int, init: str, epi,
                      prefetch_b: bool = False, stream: bool = False) -> ir.Function:
    """void mk(X, rows, taps, ntaps, run, B, Y, ldc, bias, residual, rows_valid):
    Y[i, 0:n_valid] = init + sum_t sum_c<run X[rows[i] + taps[t] + c] * B[t*run + c, :] for i < rows_valid,
    then the epilogue. Every one of the MR rows is computed (the caller clamps the offsets of rows
    past the end), only ``rows_valid`` are stored. ``prefetch_b``: the first tile of a panel, whose
    weights come from memory, asks for them PREFETCH_BYTES ahead of their use. ``stream``: whole vectors
    are stored past the caches (Y's rows then start at multiples of the vector size)."""
    key = ("nhwc", n_valid, init, epi, prefetch_b, stream)
    if key in gemm._kernels:
        return gemm._kernels[key]
    isa, w = gemm.isa, gemm.isa.width
    mr, nv = isa.mr, -(-n_valid // w)
    fn = ir.Function(em.module, ir.FunctionType(VOID, [PTR, PTR, PTR, I64, I64, PTR, PTR, I64, PTR, PTR, I64]),
                     name=em.module.get_unique_name(f"mk_nhwc_{isa.name}_{mr}x{n_valid}"))
    fn.linkage = "internal"
    x, rows, taps, ntaps, cin, pb, pc, ldc, bias, residual, rows_valid = fn.args
    for a in (x, pb, pc):
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    bases = [gep(b, x, b.load(gep(b, rows, i, I64), typ=I64)) for i in range(mr)]
    zero = ir.Constant(gemm.vec, None)

    # tap loop: carries the accumulators and the B pointer
    entry = b.block
    t_head = b.append_basic_block("tap.header")
    t_body = b.append_basic_block("tap.body")
    t_latch = b.append_basic_block("tap.latch")
    done = b.append_basic_block("done")
    b.branch(t_head)
    b.position_at_end(t_head)
    t = b.phi(I64, "t")
    t_b = b.phi(PTR, "t.b")
    t_acc = [[b.phi(gemm.vec) for _ in range(nv)] for _ in range(mr)]
    t.add_incoming(i64(0), entry)
    t_b.add_incoming(pb, entry)
    for row in t_acc:
        for acc in row:
            acc.add_incoming(zero, entry)
    b.cbranch(b.icmp_signed("<", t, ntaps), t_body, done)

    b.position_at_end(t_body)
    offset = b.load(gep(b, taps, t, I64), typ=I64)
    a_rows = [gep(b, base, offset) for base in bases]

    def step(b: ir.IRBuilder, c: ir.Value, acc: list[list[ir.Value]]) -> list[list[ir.Value]]:
        """One k-step of the GEMM: input channel c of the run."""
        b_row = gep(b, t_b, b.mul(c, i64(isa.nr)))
        if prefetch_b:
            for line in range(0, isa.nr, 16):
                prefetch(b, b_row, i64(PREFETCH_BYTES // 4 + line))
        bvecs = [b.load(gep(b, b_row, v * w), typ=gemm.vec, align=4) for v in range(nv)]
        return [[gemm.fma(b, gemm.splat(b, b.load(gep(b, a_rows[i], c), typ=F32)), bvecs[v], acc[i][v])
                 for v in range(nv)] for i in range(mr)]
    c_acc = gemm.k_loops(b, i64(0), cin, t_acc, step)
    b.branch(t_latch)

    b.position_at_end(t_latch)
    t.add_incoming(b.add(t, i64(1)), t_latch)
    t_b.add_incoming(gep(b, t_b, b.mul(cin, i64(isa.nr))), t_latch)
    for i in range(mr):
        for v in range(nv):
            t_acc[i][v].add_incoming(c_acc[i][v], t_latch)
    b.branch(t_head)

    b.position_at_end(done)
    for i in range(mr):  # row i is stored when i < rows_valid
        with b.if_then(b.icmp_signed("<", i64(i), rows_valid)):
            row_c = gep(b, pc, b.mul(ldc, i64(i)))
            row_r = gep(b, residual, b.mul(ldc, i64(i))) if epi.residual else residual
            gemm.store_tile(b, [t_acc[i]], n_valid, row_c, ldc, init, bias, row_r, epi, stream)
    b.ret_void()
    gemm._kernels[key] = fn
    return fn


def tile_for(em: ModuleEmitter, channels: int) -> GemmEmitter:
    """The GemmEmitter of ``tile_isa`` for ``channels`` on this host."""
    isa = tile_isa(em.isa, channels)
    if isa == em.isa:
        return em.gemm
    if isa not in em.extra_gemms:
        em.extra_gemms[isa] = GemmEmitter(em.module, isa)
    return em.extra_gemms[isa]


def with_tile_rows(em: ModuleEmitter, gemm: GemmEmitter, mr: int) -> GemmEmitter:
    """``gemm``'s tile with ``mr`` rows (the weight panels, NR wide, are the same)."""
    if mr == gemm.isa.mr:
        return gemm
    isa = dataclasses.replace(gemm.isa, mr=mr)
    if isa not in em.extra_gemms:
        em.extra_gemms[isa] = GemmEmitter(em.module, isa)
    return em.extra_gemms[isa]


@dataclasses.dataclass
class ConvKernel:
    """A channels-last conv kernel's function and its arguments: X, the packed weights, the bias and the
    residual when the conv has them (else None), Y, then ``extra`` (scratch buffers); ``names`` is the
    KernelCall's argument list, ``ldc`` the floats between Y's pixel rows: ``m`` when ``contiguous``,
    else (a slice of a Concat's rows) an i64 the kernel reads at run time from its last argument."""
    fn: ir.Function
    b: ir.IRBuilder | None  # None: the function was emitted before (conv_kernel)
    names: list
    x: ir.Value
    wt: ir.Value
    bias: ir.Value | None
    residual: ir.Value | None
    y: ir.Value
    extra: list
    ldc: int | ir.Value
    contiguous: bool


def conv_kernel(em: ModuleEmitter, op: Op, packed: np.ndarray, m: int, extra: tuple = (), *,
                kind: str, bias: np.ndarray | None = None) -> ConvKernel:
    """The function of a channels-last conv kernel (one place for its argument order). Y's pixel rows are
    ``m`` floats apart, or, when this conv writes its slice of a Concat's rows, the Concat's row
    (passes/memory.py places it there only without a residual, which is read at ``m``).

    A conv of the same ``kind`` (the emitter), attributes, shapes, arguments and row stride as one
    emitted before in this module has the same code: it gets that function back with ``b`` None,
    and the emitter returns ``KernelCall(k.fn, k.names)`` without building the body again (its
    weights are still packed and passed: they are an argument). Repeated blocks (ResNet's, DenseNet's
    3x3 convs) are emitted once, which is most of the Python time of a deep model's code generation.
    ``bias``: the values passed for the conv's bias input instead of it (a copy padded to whole panels)."""
    _, weight, bias_name, residual_name = split_inputs(op.attrs, op.inputs)
    view = em.plan.memory.view(op.outputs[0], em.tensor(op.outputs[0]).size)
    contiguous = view.contiguous or residual_name is not None
    bias_arg = em.derived_constant(bias) if bias is not None and bias_name is not None else bias_name
    names = [op.inputs[0], em.derived_constant(packed)] + [t for t in (bias_arg, residual_name) if t is not None]
    names += [op.outputs[0], *extra]
    if not contiguous:  # the Concat's row, read at run time: DenseNet's convs into growing Concats share code
        names.append(em.derived_constant(np.array([view.stride]), np.int64))
    # the aliased arguments too: a layer working in place (its residual is its output's buffer) gets
    # its own function without noalias there, never one compiled already with it (codegen/cache.py)
    signature = (kind, op.attrs, em.tensor(op.inputs[0]).shape, em.tensor(weight).shape,
                 em.tensor(op.outputs[0]).shape, bias_name is not None, residual_name is not None, contiguous, extra,
                 em.overlapping(names))
    try:
        fn = em.emitted.get(signature)
    except TypeError:  # attributes holding something unhashable: emitted afresh
        signature, fn = None, None
    b = None
    if fn is None:
        fn, b = em.function(op.name, len(names), parallel=True)
        if signature is not None:
            em.emitted[signature] = fn
    it = iter(fn.args)
    x, wt = next(it), next(it)
    bias = next(it) if bias_name is not None else None
    residual = next(it) if residual_name is not None else None
    y = next(it)
    scratch = [next(it) for _ in extra]
    ldc = m if contiguous or b is None else b.load(next(it), typ=I64, name="ldc")
    return ConvKernel(fn, b, names, x, wt, bias, residual, y, scratch, ldc, contiguous)


def times(b: ir.IRBuilder, k: int, ldc: int | ir.Value) -> ir.Value:
    """k * ldc as an i64, for a row stride known at compile time or read at run time."""
    return i64(k * ldc) if isinstance(ldc, int) else b.mul(i64(k), ldc)


def emit_implicit_gemm_conv(em: ModuleEmitter, op: Op) -> KernelCall:
    a = op.attrs
    xs, ys = em.tensor(op.inputs[0]).shape, em.tensor(op.outputs[0]).shape
    gemm = tile_for(em, ys[-1])
    isa = gemm.isa
    n, h, w_, c = xs
    _, oh, ow, m = ys
    kh, kw = a.kernel_shape
    (sh, sw), (dh, dw) = a.strides, a.dilations
    pt, pl, pb_, pr = a.pads
    hp, wp = h + pt + pb_, w_ + pl + pr
    padded = any(a.pads)
    _, weight, bias_name, residual_name = split_inputs(a, op.inputs)
    wdata = em.tensor(weight).data  # [M, C, kh, kw] -> B[(kh, kw, c), M]
    kdim = kh * kw * c
    packed = pack_b(wdata.transpose(2, 3, 1, 0).reshape(kdim, m), isa)
    n_panels, rem = divmod(m, isa.nr)
    panels = n_panels + (rem > 0)
    if dw == 1:  # a kernel row's kw taps are adjacent pixels: one run of kw*C floats, as B orders them
        tap_offsets, run = [i * dh * wp * c for i in range(kh)], kw * c
    else:
        tap_offsets, run = [(i * dh * wp + j * dw) * c for i in range(kh) for j in range(kw)], c
    in_kernel, after = split_epilogue(a.epilogue)
    tile_pass = Epilogue()  # a long activation, applied to each finished tile's rows while they are in L1
    if in_kernel.activation in TILE_PASS_ACTIVATIONS:
        in_kernel, tile_pass = Epilogue(in_kernel.residual), Epilogue(False, in_kernel.activation,
                                                                     in_kernel.activation_attrs)
    scale_name = input_scale_of(a, op.inputs)
    out_pixels = n * oh * ow
    # a tiny output whose width leaves a partial last panel (a squeeze-and-excitation reduction on a 1x1
    # map: EfficientNet-B0's 96 -> 4, 144 -> 6, 240 -> 10, 672 -> 28) is computed whole panels wide into
    # scratch (zero weights and bias in the padding), then copied: its micro-kernels are those of every
    # other layer's whole panels, not a register tile of its own per width (each was a module of 50-90
    # kchars of IR for a few thousand MACs, about 1 s of EfficientNet-B0's LLVM CPU)
    y_contiguous = em.plan.memory.view(op.outputs[0], em.tensor(op.outputs[0]).size).contiguous
    pad_out = bool(rem) and out_pixels <= PAD_OUTPUT_PIXELS and not padded and scale_name is None \
        and residual_name is None and after.empty and y_contiguous
    m_out = m
    padded_bias = None
    if pad_out:
        m, n_panels, rem = panels * isa.nr, panels, 0
        if bias_name is not None:
            padded_bias = np.zeros(m, dtype=np.float32)
            padded_bias[:m_out] = em.tensor(bias_name).data
    # one scratch (a kernel's scratch arguments all start at the same place): the padded input, then with an
    # input scale each thread's copy of the weights scaled for one image (or of its pixels of X scaled,
    # which it makes only when they are fewer floats: _scaled_pixel_tiles)
    pad_bytes = align(n * hp * wp * c * 4) if padded else 0
    extra = ()
    if padded or scale_name is not None:
        extra = (em.scratch(pad_bytes + (align(packed.nbytes) * em.threads if scale_name is not None else 0)),)
    if scale_name is not None:
        extra += (scale_name,)
    if pad_out:  # Y's pixels, whole panels wide
        extra = (em.scratch(align(out_pixels * m * 4)),)

    out_rows = n * oh
    # threads split the output rows, as the depthwise and pooling kernels do: a layer then reads mostly
    # what the same core wrote (a split by channels here made the next layer pull half of its input
    # from the other core: 3-5x slower on small layers); only with fewer rows than threads the
    # column panels are split instead
    # ... or when the weights are what streams from memory (a deep layer's megabytes against a few
    # hundred KB of activations): each core then reads half of them (ResNet-18 b1, 2 threads)
    streams_weights = packed.nbytes > STREAMED_WEIGHT_BYTES
    weight_bound = streams_weights and packed.nbytes > 8 * em.tensor(op.inputs[0]).nbytes
    by_panels = (out_rows < em.threads or weight_bound) and panels >= 2 * em.threads and after.empty and not pad_out
    by_tiles = not padded and not by_panels
    pixels = n * oh * ow if by_panels else pixels_per_thread(n, oh, ow, em.threads, padded)
    gemm = with_tile_rows(em, gemm, tile_rows(isa, pixels))
    isa = gemm.isa
    panel_bytes = kdim * isa.nr * 4
    group = max(1, L2_PANEL_BYTES // panel_bytes)
    # without padding the sizes are run-time arguments (ModuleEmitter.size_table), so the convs that
    # differ only in them are one function: DenseNet-121's 1x1 convs, which read its growing Concats
    # (C from 64 to 1024) at four image sizes, are one compiled kernel per image size class instead of
    # 55 (LLVM: about 2.9 of its 4 s of CPU); with M read at run time too, EfficientNet-B0's 1x1 convs are
    # 15 kernels instead of 33 (squeeze-and-excitation projections, with an input scale: 12 -> 6). The tile
    # shape, the panel remainder and the epilogue stay compile-time choices.
    sizes = dict(oh=oh, ow=ow, hp=hp, wp=wp, c=c, sh=sh, sw=sw, m=m, kdim=kdim, run=run, out_rows=out_rows,
                 n_panels=n_panels, panels=panels, group=group,
                 scaled_bytes=align(packed.nbytes) if scale_name is not None else 0)
    if pad_out:
        sizes["m_out"] = m_out
    runtime = not padded
    if runtime:
        extra += (em.size_table(list(sizes.values()) + tap_offsets),)
    k = conv_kernel(em, op, packed, m, extra, kind="implicit-gemm-padded-out" if pad_out else "implicit-gemm",
                    bias=padded_bias)
    if k.b is None:
        return KernelCall(k.fn, k.names)
    y_out = k.y
    if pad_out:  # the tiles write the scratch; the last step copies Y's M columns out of it
        k.y = k.extra[0]
    fn, b, args, x, wt, y, ldc = k.fn, k.b, k.names, k.x, k.wt, k.y, k.ldc
    bias = k.bias if k.bias is not None else ir.Constant(PTR, None)
    residual = k.residual if k.residual is not None else ir.Constant(PTR, None)
    xpad = k.extra[0] if padded else x
    if runtime:
        sizes = dict(zip(sizes, em.read_sizes(b, k.extra[-1], len(sizes))))
        taps = gep(b, k.extra[-1], len(sizes), I64)
        if k.contiguous:  # Y's rows are M floats apart: M from the table too (the micro-kernels take it anyway)
            k.ldc = ldc = sizes["m"]
    else:
        taps = constant_table(b, tap_offsets, name=f"{fn.name}_taps")
    all_pixels = b.mul(value(sizes["out_rows"]), value(sizes["ow"]))
    if by_tiles:  # never padded
        p_lo, p_hi = i64(0), value(sizes["panels"])
        t_lo, t_hi = em.thread_range(b, fn, b.udiv(b.add(all_pixels, i64(isa.mr - 1)), i64(isa.mr)))
        # a thread left without tiles (more threads than tiles) gets [P, P), not [tiles * MR, P)
        m_lo, m_hi = (b.select(b.icmp_unsigned("<", t, all_pixels), t, all_pixels)
                      for t in (b.mul(t_lo, i64(isa.mr)), b.mul(t_hi, i64(isa.mr))))
    else:
        if by_panels:
            p_lo, p_hi = em.thread_range(b, fn, sizes["panels"])
            r_lo, r_hi = i64(0), value(sizes["out_rows"])
        else:
            r_lo, r_hi = em.thread_range(b, fn, sizes["out_rows"])
            p_lo, p_hi = i64(0), value(sizes["panels"])
        if padded:
            pad_input_rows(b, x, xpad, r_lo, r_hi, (h, w_, c), (oh, sh, (kh - 1) * dh), (hp, wp, pt, pl))
        m_lo, m_hi = b.mul(r_lo, value(sizes["ow"])), b.mul(r_hi, value(sizes["ow"]))

    row_table = b.alloca(I64, size=i64(isa.mr), name="rows")
    init = "bias_col" if bias_name is not None else "zero"
    dims = tuple(sizes[s] for s in ("oh", "ow", "hp", "wp", "c", "sh", "sw", "m", "kdim")) + (
        len(tap_offsets), sizes["run"], sizes["n_panels"], rem)
    dense = not padded and a.kernel_shape == (1, 1) and a.strides == (1, 1)
    if scale_name is None and streams_output(em, op, m, k.contiguous, tile_pass, after):
        # Y's rows are whole cache lines: streamed when Y is aligned (the caller's array, for a model output)
        aligned = b.icmp_unsigned("==", b.and_(b.ptrtoint(y, I64), i64(63)), i64(0))
        with b.if_else(aligned) as (then, otherwise):
            for stream, block in ((True, then), (False, otherwise)):
                with block:
                    _pixel_tiles(b, em, gemm, (in_kernel, tile_pass), k, (m_lo, m_hi), (p_lo, p_hi), wt, xpad,
                                 row_table, taps, bias, residual, init, sizes["group"], dims, streams_weights, dense,
                                 stream)
                    if stream:
                        b.fence("seq_cst")  # the streamed stores are visible to the next kernel's threads
    elif scale_name is None:
        _pixel_tiles(b, em, gemm, (in_kernel, tile_pass), k, (m_lo, m_hi), (p_lo, p_hi), wt, xpad, row_table, taps,
                     bias, residual, init, sizes["group"], dims, streams_weights, dense)
    else:
        _scaled_pixel_tiles(b, em, gemm, (in_kernel, tile_pass), k, (m_lo, m_hi), (p_lo, p_hi), (wt, xpad, pad_bytes),
                            row_table, taps, bias, residual, init, sizes, dims, streams_weights, (kh * kw, dense))
    if pad_out:
        width = value(sizes["m_out"])
        with for_range(b, m_hi, start=m_lo, name="copy_px") as px:
            memcpy(b, gep(b, y_out, b.mul(px, width)), gep(b, y, b.mul(px, value(sizes["m"]))), b.mul(width, i64(4)))
    if not after.empty:  # activations with no vector form, over this thread's rows
        if k.contiguous:
            epilogue_pass(b, after, gep(b, y, b.mul(m_lo, value(sizes["m"]))), None,
                          b.mul(b.sub(m_hi, m_lo), value(sizes["m"])))
        else:
            with for_range(b, m_hi, start=m_lo, name="epi_row") as row:
                epilogue_pass(b, after, gep(b, y, b.mul(row, as_i64(b, ldc))), None, value(sizes["m"]))
    b.ret_void()
    return KernelCall(fn, args)


def _pixel_tiles(b: ir.IRBuilder, em: ModuleEmitter, gemm: GemmEmitter, epilogues: tuple, k: ConvKernel,
                 pixels: tuple, panel_range: tuple, wt: ir.Value, xpad: ir.Value, row_table: ir.Value, taps: ir.Value,
                 bias: ir.Value, residual: ir.Value, init: str, group: int, dims: tuple, streams_weights: bool,
                 dense: bool = False, stream: bool = False, first_row: ir.Value | None = None) -> None:
    """Output pixels [m_lo, m_hi) x column panels [p_lo, p_hi), in register tiles of MR pixels, with the
    packed weights ``wt``; ``epilogues``: (the micro-kernel's, the pass over each tile's finished rows);
    ``stream``: Y stored past the caches; ``first_row`` (``dense`` only): ``xpad`` holds X's rows from
    that pixel on (a scaled copy of some of them)."""
    in_kernel, tile_pass = epilogues
    isa, y, ldc = gemm.isa, k.y, k.ldc
    (m_lo, m_hi), (p_lo, p_hi) = pixels, panel_range
    oh, ow, hp, wp, c, sh, sw, m, kdim, ntaps, run, n_panels, rem = dims  # Python ints or run-time values
    has_bias, has_residual = k.bias is not None, k.residual is not None
    tiles = b.udiv(b.add(b.sub(m_hi, m_lo), i64(isa.mr - 1)), i64(isa.mr))

    with panel_groups(b, p_lo, p_hi, group) as g0:
        g1 = b.add(g0, value(group))
        g1 = b.select(b.icmp_signed("<", g1, p_hi), g1, p_hi)
        with for_range(b, tiles, name="tile") as ti:
            m0 = b.add(m_lo, b.mul(ti, i64(isa.mr)))
            last = b.sub(m_hi, i64(1))
            if dense:  # a 1x1 stride-1 conv without padding: pixel p's input row is at p * C, no division
                for i in range(isa.mr):
                    mi = b.add(m0, i64(i))
                    mi = b.select(b.icmp_signed("<", mi, last), mi, last)
                    if first_row is not None:
                        mi = b.sub(mi, first_row)
                    b.store(b.mul(mi, value(c)), gep(b, row_table, i, I64))
            elif not isinstance(ow, ir.Value):  # divisions by constants: a multiply and a shift each
                for i in range(isa.mr):
                    mi = b.add(m0, i64(i))
                    mi = b.select(b.icmp_signed("<", mi, last), mi, last)
                    b.store(pixel_offset(b, mi, (oh, ow), (hp, wp, c), (sh, sw)), gep(b, row_table, i, I64))
            else:  # sizes read at run time: divide once per tile, then step pixel by pixel
                tile_pixel_offsets(b, m0, last, isa.mr, row_table, (oh, ow), (hp, wp, c), (sh, sw))
            if A_PREFETCH_TILES and ntaps == 1:  # one kernel row: the tile reads [first row, last row + run)
                first = b.load(gep(b, row_table, 0, I64), typ=I64)
                span = b.add(b.sub(b.load(gep(b, row_table, isa.mr - 1, I64), typ=I64), first), value(run))
                ahead = b.add(first, b.mul(span, i64(A_PREFETCH_TILES)))
                lines = b.udiv(b.add(span, i64(15)), i64(16))
                with for_range(b, lines, name="pfa") as li:
                    prefetch(b, xpad, b.add(ahead, b.mul(li, i64(16))))
            valid = b.sub(m_hi, m0)
            y_tile = gep(b, y, b.mul(m0, as_i64(b, ldc)))
            r_tile = gep(b, residual, b.mul(m0, value(m))) if has_residual else residual

            def call_panel(j: ir.Value, n_valid: int) -> None:
                if streams_weights:  # the first tile of a panel reads its weights from memory
                    with b.if_else(b.icmp_unsigned("==", ti, i64(0))) as (first, rest):
                        with first:
                            call(j, n_valid, conv_micro_kernel(em, gemm, n_valid, init, in_kernel, True, stream))
                        with rest:
                            call(j, n_valid, conv_micro_kernel(em, gemm, n_valid, init, in_kernel, False, stream))
                else:
                    call(j, n_valid, conv_micro_kernel(em, gemm, n_valid, init, in_kernel, False, stream))

            def call(j: ir.Value, n_valid: int, mk: ir.Function) -> None:
                col = b.mul(j, i64(isa.nr))
                b.call(mk, [xpad, row_table, taps, i64(ntaps), value(run),
                            gep(b, wt, b.mul(j, product(b, kdim, isa.nr))), gep(b, y_tile, col), as_i64(b, ldc),
                            gep(b, bias, col) if has_bias else bias,
                            gep(b, r_tile, col) if has_residual else r_tile, valid])

            with for_range(b, g1, start=g0, name="panel") as j:
                if rem and (isinstance(n_panels, ir.Value) or n_panels):
                    with b.if_else(b.icmp_signed("<", j, value(n_panels))) as (whole, edge):
                        with whole:
                            call_panel(j, isa.nr)
                        with edge:
                            call_panel(j, rem)
                else:
                    call_panel(j, rem or isa.nr)
            if not tile_pass.empty:  # this panel group's columns of the tile's rows, just stored
                c0 = b.mul(g0, i64(isa.nr))
                c1 = b.mul(g1, i64(isa.nr))
                c1 = b.select(b.icmp_signed("<", c1, value(m)), c1, value(m))
                for i in range(isa.mr):
                    with b.if_then(b.icmp_signed("<", i64(i), valid)):
                        row = gep(b, y_tile, b.add(b.mul(i64(i), as_i64(b, ldc)), c0))
                        epilogue_pass(b, tile_pass, row, None, b.sub(c1, c0))


def _scaled_pixel_tiles(b: ir.IRBuilder, em: ModuleEmitter, gemm: GemmEmitter, epilogues: tuple, k: ConvKernel,
                        pixels: tuple, panel_range: tuple, operands: tuple, row_table: ir.Value, taps: ir.Value,
                        bias: ir.Value, residual: ir.Value, init: str, sizes: dict, dims: tuple,
                        streams_weights: bool, window: tuple[int, bool]) -> None:
    """``_pixel_tiles`` of a conv with an input scale S[image, c] (a squeeze-and-excitation Mul), image by
    image, through this thread's scratch: either its panels of the weights scaled (B[(kh, kw, c), :] *
    S[image, c]) or, for a ``dense`` conv (1x1, stride 1, no padding), its pixels of X scaled (X[p, c] *
    S[image, c]), whichever is fewer floats, chosen at run time (the sizes are run-time values): the
    thread's pixels of the image times C against its panels' columns times C. At batch 1 a deep layer has
    few pixels and many weights (EfficientNet-B0's 1152 -> 320 at 7x7 on 2 threads: 28 x 1152 floats of X
    against 1152 x 320 of weights per thread and call), an early one the other way round (32 -> 16 at
    112x112). ``operands``: (packed weights, X or its padded copy, the padded copy's bytes in the scratch);
    ``window``: (kh * kw, dense)."""
    fn, isa = k.fn, gemm.isa
    (m_lo, m_hi), (p_lo, p_hi) = pixels, panel_range
    wt, xpad, pad_bytes = operands
    ntaps, dense = window
    scale, cin = k.extra[1], value(sizes["c"])
    scaled = b.gep(gep(b, k.extra[0], pad_bytes // 4), [b.mul(fn.args[-2], value(sizes["scaled_bytes"]))],
                   inbounds=True, source_etype=ir.IntType(8))  # this thread's scratch
    pixels = product(b, sizes["oh"], sizes["ow"])
    first = b.udiv(m_lo, pixels)
    with for_range(b, b.udiv(b.add(m_hi, b.sub(pixels, i64(1))), pixels), start=first, name="img") as img:
        lo, hi = b.mul(img, pixels), b.mul(b.add(img, i64(1)), pixels)
        lo = b.select(b.icmp_unsigned("<", lo, m_lo), m_lo, lo)
        hi = b.select(b.icmp_unsigned("<", m_hi, hi), m_hi, hi)
        s_img = gep(b, scale, b.mul(img, cin))

        def scaled_weights() -> None:
            # B's rows (panel, tap, channel) in order, a tap's C channels at a time (no division by C)
            with for_range(b, b.mul(p_hi, i64(ntaps)), start=b.mul(p_lo, i64(ntaps)), name="wtap") as q, \
                    for_range(b, cin, name="wch") as ci:
                row = b.add(b.mul(q, cin), ci)
                s_c = gemm.splat(b, b.load(gep(b, s_img, ci), typ=F32))
                for v in range(isa.nr // isa.width):
                    at = b.add(b.mul(row, i64(isa.nr)), i64(v * isa.width))
                    w_v = b.load(gep(b, wt, at), typ=gemm.vec, align=4)
                    b.store(b.fmul(w_v, s_c), gep(b, scaled, at), align=4)
            _pixel_tiles(b, em, gemm, epilogues, k, (lo, hi), (p_lo, p_hi), scaled, xpad, row_table, taps, bias,
                         residual, init, sizes["group"], dims, streams_weights, dense)

        if not dense:
            scaled_weights()
        else:
            scale_x = b.icmp_unsigned("<=", b.sub(hi, lo), b.mul(b.sub(p_hi, p_lo), i64(isa.nr)))
            with b.if_else(scale_x) as (by_x, by_weights):
                with by_x:
                    _scale_rows(b, gemm, gep(b, xpad, b.mul(lo, cin)), s_img, scaled, b.sub(hi, lo), cin)
                    _pixel_tiles(b, em, gemm, epilogues, k, (lo, hi), (p_lo, p_hi), wt, scaled, row_table, taps,
                                 bias, residual, init, sizes["group"], dims, streams_weights, dense, first_row=lo)
                with by_weights:
                    scaled_weights()


def _scale_rows(b: ir.IRBuilder, gemm: GemmEmitter, x: ir.Value, s: ir.Value, out: ir.Value, rows: ir.Value,
                c: ir.Value) -> None:
    """out[r, :] = x[r, :] * s[:] for ``rows`` rows of ``c`` floats (vectors, then the last c % width one by one)."""
    w = gemm.isa.width
    whole = b.mul(b.udiv(c, i64(w)), i64(w))
    with for_range(b, rows, name="xrow") as r:
        x_r, o_r = gep(b, x, b.mul(r, c)), gep(b, out, b.mul(r, c))
        with for_range(b, whole, step=w, name="xv") as j:
            v = b.fmul(b.load(gep(b, x_r, j), typ=gemm.vec, align=4), b.load(gep(b, s, j), typ=gemm.vec, align=4))
            b.store(v, gep(b, o_r, j), align=4)
        with for_range(b, c, start=whole, name="xs") as j:
            b.store(b.fmul(b.load(gep(b, x_r, j), typ=F32), b.load(gep(b, s, j), typ=F32)), gep(b, o_r, j))


def streams_output(em: ModuleEmitter, op: Op, m: int, contiguous: bool, tile_pass: Epilogue, after: Epilogue) -> bool:
    """Whether Y goes past the caches: STREAM_MIN_BYTES or more, rows of whole 64-byte lines (partly
    written lines would leave the write-combining buffers half full), and no pass reads it back."""
    return (em.tensor(op.outputs[0]).nbytes >= STREAM_MIN_BYTES and contiguous and m % 16 == 0
            and tile_pass.empty and after.empty)
