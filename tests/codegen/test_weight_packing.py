"""Packed weights (blas.pack_a / pack_b, the Winograd transform packed in one copy, the NHWC conv's
B layout) are bit-identical to the straightforward pad-then-transpose packing they replaced."""
import numpy as np
import pytest

from convc.codegen.kernels.blas import AVX2, AVX512, pack_a, pack_b
from convc.codegen.kernels.winograd import packed_weights, transform_weights


def ref_pack_a(a, isa):
    m, k = a.shape
    mp = -(-m // isa.mr) * isa.mr
    padded = np.zeros((mp, k), dtype=np.float32)
    padded[:m] = a
    return np.ascontiguousarray(padded.reshape(mp // isa.mr, isa.mr, k).transpose(0, 2, 1))


def ref_pack_b(b, isa):
    *lead, k, n = b.shape
    np_ = -(-n // isa.nr) * isa.nr
    padded = np.zeros((*lead, k, np_), dtype=np.float32)
    padded[..., :n] = b
    r = len(lead)
    order = tuple(range(r)) + (r + 1, r, r + 2)
    return np.ascontiguousarray(padded.reshape(*lead, k, np_ // isa.nr, isa.nr).transpose(order))


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and a.flags.c_contiguous and a.tobytes() == b.tobytes()


# (M, C/groups, kh, kw): odd channel counts, fewer channels than a panel, 1x1 / 3x3 / 5x5 / 7x7
SHAPES = [(64, 64, 3, 3), (7, 3, 3, 3), (33, 17, 1, 1), (5, 1, 5, 5), (96, 48, 3, 3), (257, 31, 3, 3),
          (16, 8, 5, 5), (64, 3, 7, 7), (1, 1, 1, 1), (130, 64, 1, 1)]


@pytest.fixture(params=[AVX2, AVX512], ids=["avx2", "avx512"])
def isa(request):
    return request.param


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_weight_packing_is_bit_identical(shape, isa):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape).astype(np.float32)
    m, c, kh, kw = shape
    b = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, m)  # conv_nhwc's B[(kh, kw, c), M]
    assert same_bits(pack_b(b, isa), ref_pack_b(np.ascontiguousarray(b), isa))
    a = w.reshape(m, -1)  # conv.py's per-group A[M, C*kh*kw]
    assert same_bits(pack_a(a, isa), ref_pack_a(a, isa))
    for g in (1, 2, 4):  # grouped: one panel set per group, as conv.py stacks them
        if m % g == 0:
            got = np.stack([pack_a(wm, isa) for wm in w.reshape(g, m // g, -1)])
            want = np.stack([ref_pack_a(wm, isa) for wm in w.reshape(g, m // g, -1)])
            assert same_bits(got, want)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("mo,c", [(64, 64), (31, 17), (5, 3), (130, 96), (256, 256), (7, 300)])
def test_winograd_packing_is_bit_identical(mo, c, m, isa):
    """The emitter's GEMM runs one panel of output channels at a time on one BLAS thread and rounds
    while packing; the reference is the whole [M*C, 9] @ [9, t*t], rounded to float32
    (transform_weights), then packed: the same bits (256x256: ResNet's layers, 32 full panels)."""
    w = np.random.default_rng(mo * c + m).standard_normal((mo, c, 3, 3)).astype(np.float32)
    got = packed_weights(w, m, isa)
    assert same_bits(got, ref_pack_b(transform_weights(w, m), isa))


def test_pack_b_of_float64_rounds_like_astype(isa):
    b = np.random.default_rng(0).standard_normal((3, 19, 37))  # float64, values float32 cannot hold
    assert same_bits(pack_b(b, isa), ref_pack_b(b.astype(np.float32), isa))
