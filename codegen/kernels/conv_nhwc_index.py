"""Where a channels-last conv's tiles read (codegen/kernels/conv_nhwc.py): the input offset of an output
pixel's window, each register tile's table of those offsets, the zero-bordered copy of the input rows a
thread's outputs read, and sizes known at compile time or read from a size table at run time; and the
register tile's shape for a layer (its columns by output channels, its rows by the pixels a thread
computes)."""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from convc.codegen.kernels.blas import AVX2, AVX512, Isa
from convc.codegen.llvm_utils import I64, for_range, gep, i64, memcpy, memset_zero

# AVX-512 hosts also have 8-float vectors in 32 registers (AVX-512VL): 8 rows x 3 of them
NARROW_TILE = Isa("avx512-ymm", 8, 8, 3)
AVX2_24 = Isa("avx2-24", 8, 4, 3)  # 4 rows x 24 columns on AVX2 hosts (tile_isa)
WIDE_ROWS = 12  # rows of the AVX-512 register tile where they pad few pixels (tile_rows)


def pixel_offset(b: ir.IRBuilder, p: ir.Value, out: tuple[int, int], padded: tuple[int, int, int],
                 strides: tuple[int, int]) -> ir.Value:
    """Float offset in the (padded) input of the top-left tap of output pixel p."""
    oh, ow = out
    hp, wp, c = padded
    sh, sw = strides
    pixels = product(b, oh, ow)
    img, rest = b.udiv(p, pixels), b.urem(p, pixels)
    row, col = b.udiv(rest, value(ow)), b.urem(rest, value(ow))
    at = b.add(b.mul(b.add(b.mul(img, value(hp)), b.mul(row, value(sh))), value(wp)), b.mul(col, value(sw)))
    return b.mul(at, value(c))


def tile_pixel_offsets(b: ir.IRBuilder, m0: ir.Value, last: ir.Value, mr: int, row_table: ir.Value,
                       out: tuple, padded: tuple, strides: tuple) -> None:
    """row_table[i] = pixel_offset(min(m0 + i, last)) for i < mr, with run-time sizes: the image,
    row and column of m0 by division, then each next pixel by one step (a run-time division
    costs about as much as a small layer's whole tile)."""
    oh, ow = out
    hp, wp, c = padded
    sh, sw = strides
    pixels = b.mul(oh, ow)
    img, rest = b.udiv(m0, pixels), b.urem(m0, pixels)
    row, col = b.udiv(rest, ow), b.urem(rest, ow)
    offset = None
    for i in range(mr):
        if i:
            col = b.add(col, i64(1))
            wrap = b.icmp_signed("==", col, ow)
            col = b.select(wrap, i64(0), col)
            row = b.select(wrap, b.add(row, i64(1)), row)
            wrap = b.icmp_signed("==", row, oh)
            row = b.select(wrap, i64(0), row)
            img = b.select(wrap, b.add(img, i64(1)), img)
        at = b.add(b.mul(b.add(b.mul(img, hp), b.mul(row, sh)), wp), b.mul(col, sw))
        at = b.mul(at, c)
        # rows past the last pixel repeat its offset (the micro-kernel stores only the valid ones)
        offset = at if i == 0 else b.select(b.icmp_signed("<=", b.add(m0, i64(i)), last), at, offset)
        b.store(offset, gep(b, row_table, i, I64))


def value(v: int | ir.Value) -> ir.Value:
    """A size known at compile time (a Python int) or read at run time, as an i64 value."""
    return v if isinstance(v, ir.Value) else i64(v)


def product(b: ir.IRBuilder, x: int | ir.Value, y: int | ir.Value) -> ir.Value:
    """x * y, folded when both are known at compile time."""
    if isinstance(x, ir.Value) or isinstance(y, ir.Value):
        return b.mul(value(x), value(y))
    return i64(x * y)


@contextmanager
def panel_groups(b: ir.IRBuilder, p_lo: ir.Value, p_hi: ir.Value, group: int | ir.Value):
    """The first panel of each group of ``group`` panels in [p_lo, p_hi)."""
    if not isinstance(group, ir.Value):
        with for_range(b, p_hi, start=p_lo, step=group, name="pg") as g0:
            yield g0
        return
    count = b.udiv(b.add(b.sub(p_hi, p_lo), b.sub(group, i64(1))), group)
    with for_range(b, count, name="pg") as k:
        yield b.add(p_lo, b.mul(k, group))


def pad_input_rows(b: ir.IRBuilder, x: ir.Value, xpad: ir.Value, r_lo: ir.Value, r_hi: ir.Value,
                   in_shape: tuple[int, int, int], rows: tuple[int, int, int],
                   padded: tuple[int, int, int, int]) -> None:
    """Write the padded input rows read by output rows [r_lo, r_hi) (over all images): output row
    oh reads padded rows oh*s .. oh*s + span; each output row writes its first s of them and the
    last row of an image (or of the range) the rest, so the union is covered once."""
    h, w, c = in_shape
    oh, s, span = rows
    hp, wp, pt, pl = padded
    row_floats, pad_row_floats = w * c, wp * c
    with for_range(b, r_hi, start=r_lo, name="prow") as q:
        img, o = b.udiv(q, i64(oh)), b.urem(q, i64(oh))
        first = b.mul(o, i64(s))
        ends_image = b.or_(b.icmp_signed("==", o, i64(oh - 1)), b.icmp_signed("==", q, b.sub(r_hi, i64(1))))
        stop = b.select(ends_image, b.add(first, i64(span + 1)), b.add(first, i64(s)))
        stop = b.select(b.icmp_signed("<", stop, i64(hp)), stop, i64(hp))
        with for_range(b, stop, start=first, name="pr") as r:
            dst = gep(b, xpad, b.mul(b.add(b.mul(img, i64(hp)), r), i64(pad_row_floats)))
            ih = b.sub(r, i64(pt))
            inside = b.icmp_unsigned("<", ih, i64(h))
            with b.if_else(inside) as (copy, blank):
                with copy:
                    if pl:
                        memset_zero(b, dst, pl * c * 4)
                    src = gep(b, x, b.mul(b.add(b.mul(img, i64(h)), ih), i64(row_floats)))
                    memcpy(b, gep(b, dst, pl * c), src, row_floats * 4)
                    if wp - w - pl:
                        memset_zero(b, gep(b, dst, (pl + w) * c), (wp - w - pl) * c * 4)
                with blank:
                    memset_zero(b, dst, pad_row_floats * 4)


def lanes(isa: Isa, channels: int) -> int:
    """Vector lanes a tile of ``isa`` spends on ``channels`` output channels (its last panel uses
    only the vectors it needs)."""
    full, rem = divmod(channels, isa.nr)
    return full * isa.nr + -(-rem // isa.width) * isa.width


def tile_isa(host: Isa, channels: int) -> Isa:
    """The register tile for ``channels`` output channels: the host's, or where it wastes vectors on the
    last panel, a narrower one. AVX-512: 8 rows x 3 vectors of 8 floats where that wastes far fewer lanes
    (6 or 24 channels: a 16-float vector with half its lanes masked off costs Zen 4 as much as a full one;
    measured 20% faster on a 24-channel 1x1 conv). AVX2: 4 rows x 3 vectors (24 columns, 12 accumulators
    as the 6 x 16 tile) for a multiple of 24 that is not one of 16, whose 6 x 16 tiles end in a panel of
    one vector, 6 FMAs for 7 loads (MobileNetV2's 144 -> 24 projections at 56x56: a chain of four
    expand/project pairs 8-9% less CPU at batch 1, 22% at batch 16)."""
    if host == AVX2 and channels % 16 and channels % 24 == 0:
        return AVX2_24
    if host == AVX512 and lanes(NARROW_TILE, channels) <= 0.85 * lanes(AVX512, channels):
        return NARROW_TILE
    return host


def tile_rows(isa: Isa, pixels: int) -> int:
    """Rows per register tile for ``pixels`` output pixels: the first of (on AVX-512) 12, then the
    host tile's MR, MR-1 and MR-2 that pads at most 3% more rows than the least padding of them.
    12 rows x 2 vectors of 16 floats (24 of the 32 registers) load the weights half as often per FMA
    as 8 rows (5% faster on a CIFAR CNN at batch 16); fewer rows fit small maps (7x7 = 49 pixels:
    7 tiles of 7, not 56 rows in tiles of 8)."""
    def padded(r: int) -> int:
        return -(-pixels // r) * r
    # never below half the tile's rows: AVX2_24's 2-row tile would hold 6 accumulators
    choices = ([WIDE_ROWS] if isa == AVX512 else []) + list(range(isa.mr, max(isa.mr - 3, isa.mr // 2, 1), -1))
    least = min(map(padded, choices))
    return next(r for r in choices if padded(r) <= 1.03 * least)


def pixels_per_thread(n: int, oh: int, ow: int, threads: int, padded: bool) -> int:
    """The most output pixels a thread computes when threads split a conv's pixels: whole output rows
    with padding (each thread copies the padded input rows its outputs read), else register tiles, so
    a 7x7 map at batch 1 is 25 + 24 pixels on 2 threads, not 28 + 21 (4 + 3 rows; MobileNetV2's 7x7
    1x1 convs 9-13% less CPU at batch 1, 2 threads)."""
    if padded:
        return -(-(n * oh) // threads) * ow
    return -(-(n * oh * ow) // threads)
