"""The VNNI (vpdpbusd) Int8Conv kernel. This machine may lack VNNI, where executing the instruction aborts
the process: the real instruction is only compiled (to assembly and an object, for znver4, sapphirerapids
and an AVX-VNNI-only target), and its data path (the patch with int8 activations' sign bit flipped, the
folded bias, the quad-packed weights, both vector widths) runs here with vpdpbusd written in portable IR."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from helpers import foreign_assembly
from test_int8_conv import _run, int8_conv_graph

import convc
from convc.codegen.jit import Target
from convc.codegen.kernels import int8_dense
from convc.ops.quant import int8_accumulate, requantize
from convc.passes.pipeline import pipeline

AVX512_VNNI = "+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,+avx512vnni,+avxvnni"
TARGETS = [("znver4", AVX512_VNNI, "zmm"), ("sapphirerapids", AVX512_VNNI, "zmm"),
           ("alderlake", "+avx,+avx2,+fma,+avxvnni", "{vex}")]


@pytest.fixture(scope="module")
def plan():
    return pipeline(int8_conv_graph((2, 8, 8, 32), 32, 3, 1, 1, 1, 1, True, np.random.default_rng(3))[0])


@pytest.mark.parametrize("cpu,features,marker", TARGETS)
def test_vnni_targets_compile_to_vpdpbusd(plan, cpu, features, marker):
    """Compiled, not run: every multiply-add of the dense kernel is one vpdpbusd (zmm with AVX512-VNNI, the
    VEX-encoded ymm form with AVX-VNNI alone), no vpmaddwd or vpmaddubsw left, and the object is emitted."""
    asm, obj = foreign_assembly(plan, cpu, features)
    lines = [line for line in asm.splitlines() if "vpdpbusd" in line]
    assert lines and all(marker in line for line in lines), lines[:3]
    assert "vpmaddwd" not in asm and "vpmaddubsw" not in asm
    assert len(obj) > 1000


def test_this_machine_picks_its_own_multiply():
    """The scheme follows llvm.get_host_cpu_features(): vpdpbusd only where VNNI is there (on an AVX2 machine
    without it, full-range weights take the int16 vpmaddwd kernel and the host code has no vpdpbusd)."""
    host = Target.host()
    features = frozenset(f[1:] for f in host.features.split(",") if f.startswith("+"))
    w = np.ones((16, 8, 3, 3), np.int8) * 100  # full range: pairs saturate vpmaddubsw
    chosen = int8_dense.scheme(features, True, w)
    vnni = "avxvnni" in features or {"avx512vnni", "avx512vl"} <= features
    assert (chosen.name == "vpdpbusd") is vnni
    if not vnni:
        assert chosen is int8_dense.PMADDWD
        g = int8_conv_graph((1, 6, 6, 16), 16, 3, 1, 1, 1, 1, False, np.random.default_rng(1))[0]
        asm, _ = foreign_assembly(pipeline(g), host.cpu, host.features)
        assert "vpdpbusd" not in asm and "vpmaddwd" in asm


# (x NHWC, output channels, kernel, stride, signed x, threads, 512-bit)
GRID = [
    ((16, 13, 11, 5), 19, 3, 1, True, 2, False),    # int8 activations (sign bit flipped), odd channels
    ((2, 16, 16, 64), 72, 3, 2, False, 1, True),    # uint8, 512-bit blocks of 32 channels (72: a partial one)
    ((4, 9, 7, 37), 48, 1, 1, True, 2, True),       # 1x1, int8, a partial quad of channels
    ((2, 9, 7, 32), 40, 1, 1, False, 2, False),     # 1x1, uint8, whole quads: tiles read in place
]


@pytest.mark.parametrize("x_shape,m,k,stride,signed,threads,wide", GRID)
def test_vnni_data_path_is_exact(monkeypatch, x_shape, m, k, stride, signed, threads, wide):
    """Full-range 8-bit weights through the vpdpbusd kernel (its multiply emulated): exact against numpy."""
    emulated = dataclasses.replace(int8_dense.VPDPBUSD_512 if wide else int8_dense.VPDPBUSD_256, emulated=True)
    monkeypatch.setattr(int8_dense, "scheme", lambda *args: emulated)
    rng = np.random.default_rng(sum(x_shape) + m)
    # 1x1 layers without padding: tiles read in place when their channels are whole quads
    g, a, x, w, bias = int8_conv_graph(x_shape, m, k, stride, 1 if k == 3 else 0, 1, 1, signed, rng,
                                       extra_bottom_pad=int(k == 3))
    w = g.tensor("w").data
    w.reshape(-1)[:4] = [127, 127, -128, -128]  # full range, the extremes side by side
    expected = requantize(a, int8_accumulate(a, x, w, bias))
    assert len(np.unique(expected)) > 40
    np.testing.assert_array_equal(_run(convc.compile(g, threads=threads, cache=False), {"x": x}), expected)
