"""dW of a convolution at training sizes: the shifted GEMMs of codegen/kernels/conv_grad_weight.py
(stride 1) against the float64 reference, against the im2col layouts of conv_grad.py (the same sums
in the same order: equal to the bit) and across thread counts; the layouts it leaves to conv_grad.py
(strides, pointwise, a few channels per group) at the same sizes."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from convc.codegen.kernels import conv_grad_weight
from convc.codegen.kernels.conv_grad import Geometry
from convc.ops import OpKind
from convc.ops.conv import ConvAttrs
from train.grad_helpers import KERNEL_TOL, check_gradient, grad_graph, rel_error


def compile_dw(g, threads: int):
    """The dW kernel alone (the dead forward op removed), for ``threads`` threads."""
    from convc.driver import compile_plan
    from convc.options import CompileOptions
    from convc.passes import pipeline as pl
    from convc.passes.dce import eliminate_dead_code
    variant = dataclasses.replace(pl.AS_BUILT, passes=(("dead-code elimination", eliminate_dead_code),)
                                  + pl.AS_BUILT.passes)
    return compile_plan(pl.pipeline(g, variant=variant), CompileOptions(threads=threads, cache=False))


# (x shape, output channels, kernel, strides, pads, dilations, group, shifted on AVX2)
CASES = {
    "cifar 32x32, 16 channels": ((16, 16, 32, 32), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    "56x56, odd widths": ((16, 12, 56, 56), 20, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, True),
    "odd sizes, asymmetric pads, dilation": ((32, 12, 17, 15), 20, (3, 2), (1, 1), (2, 0, 1, 3), (2, 1), 1, True),
    "groups, 5x5": ((16, 24, 14, 13), 36, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 3, True),
    # 8 channels per group and a width of 16: the input is transposed in 8 x 8 blocks, a thread's from channel 8
    "groups of 8 channels": ((16, 16, 16, 16), 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 2, True),
    "no pads, 64 channels": ((16, 64, 8, 8), 64, (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), 1, True),
    "stride 2": ((16, 16, 32, 32), 32, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, False),
    "3-channel stem": ((16, 3, 32, 32), 16, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, False),
    "pointwise": ((16, 24, 16, 16), 40, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), 1, False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dw_at_training_sizes(rng, monkeypatch, case):
    """Each case's dW with 1 and 2 threads: within float32 rounding of the float64 reference, equal to
    the bit across thread counts, and (shifted cases) equal to the bit to conv_grad.py's im2col dW."""
    x_shape, m, kernel, strides, pads, dilations, group, _ = CASES[case]
    from convc.reference import run_reference
    attrs = ConvAttrs(kernel, strides, pads, dilations, group)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((m, x_shape[1] // group) + kernel).astype(np.float32)
    g, names = grad_graph(OpKind.CONV, attrs, [x, w], wrt=(1,))
    feeds = {names[0]: x, names[1]: w, "dy": rng.standard_normal(g.tensor("dy").shape).astype(np.float32)}
    out = g.outputs[0]
    ref = run_reference(g, {k: v.astype(np.float64) for k, v in feeds.items()})[out]
    got = {t: compile_dw(g, t).run(feeds)[out] for t in (1, 2)}
    # each entry is a float32 sum of N * OH * OW products, added in sequence (50,000 at 56x56)
    terms = x_shape[0] * int(np.prod(g.tensor("dy").shape[2:]))
    assert rel_error(got[1], ref) < max(KERNEL_TOL, 2e-8 * terms)
    np.testing.assert_array_equal(got[2], got[1])
    geo = Geometry(attrs, x_shape, w.shape, g.tensor("dy").shape)
    if conv_grad_weight.shifted_fits(geo, 8):
        monkeypatch.setattr(conv_grad_weight, "shifted_fits", lambda geo, width: False)
        np.testing.assert_array_equal(compile_dw(g, 2).run(feeds)[out], got[1])


@pytest.mark.parametrize("case", list(CASES))
def test_shifted_layout_choice(case):
    """Which dW layout each case gets with AVX2's 8-float vectors (the measured choice: shifted
    GEMMs at stride 1 from 4 channels per group; strides, pointwise and 3 channels stay on im2col)."""
    x_shape, m, kernel, strides, pads, dilations, group, shifted = CASES[case]
    attrs = ConvAttrs(kernel, strides, pads, dilations, group)
    y = [(s + p0 + p1 - d * (k - 1) - 1) // st + 1
         for s, k, st, p0, p1, d in zip(x_shape[2:], kernel, strides, pads[:2], pads[2:], dilations)]
    geo = Geometry(attrs, x_shape, (m, x_shape[1] // group) + kernel, (x_shape[0], m, *y))
    assert conv_grad_weight.shifted_fits(geo, 8) is shifted


@pytest.mark.parametrize("x_shape,m,pads,dilations,group", [
    ((2, 8, 7, 6), 6, (1, 0, 2, 1), (1, 1), 1),
    ((3, 8, 6, 9), 10, (2, 2, 2, 2), (2, 2), 2),   # 4 channels per group, dilation
])
def test_shifted_dw_finite_differences(rng, x_shape, m, pads, dilations, group):
    """The gradients of a conv whose dW takes the shifted GEMMs against central differences."""
    attrs = ConvAttrs((3, 3), (1, 1), pads, dilations, group)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal((m, x_shape[1] // group, 3, 3)).astype(np.float32)
    check_gradient(OpKind.CONV, attrs, [x, w, rng.standard_normal(m).astype(np.float32)], wrt=(0, 1, 2), rng=rng)
