"""The native bf16 conv kernel (vdpbf16ps, codegen/kernels/bf16_dense.py). This machine may lack AVX512_BF16,
where executing the instruction aborts the process: the real instruction is only compiled (to assembly and
an object, for znver4 and sapphirerapids), and its data path (bf16 pairs gathered from the rounded float32
input, pair-packed weights, partial channel blocks, the last partial pixel tile, bias, residual and
activations, a Concat slice as output, both vector widths, 1 and 2 threads) runs here with vdpbf16ps written
in portable IR, against the portable bf16 path (float32 FMAs on the same bf16 values: the same exact
products, summed in another order)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from helpers import foreign_assembly
from onnx import helper, numpy_helper

import convc
from convc.codegen.jit import Target
from convc.codegen.kernels import bf16_dense
from convc.frontend.onnx.importer import import_onnx as import_model
from convc.options import CompileOptions
from convc.passes.pipeline import pipeline

AVX512_BF16 = "+avx,+avx2,+fma,+f16c,+avx512f,+avx512bw,+avx512vl,+avx512dq,+avx512cd,+avx512bf16"


def _net(x_shape, layers, seed=0, concat=False) -> onnx.ModelProto:
    """Channels-first input ``x_shape``; ``layers``: (out channels, kernel, stride, activation) convs with bias,
    each after the first adding a 1x1 projection of its input as a residual when the shapes allow; ``concat``:
    the last conv's output concatenated with its input (a DenseNet layer: the conv writes its slice)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), f"c{len(inits)}"))
        return inits[-1].name

    def node(op, ins, **attrs):
        out = f"{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    x, c = "x", x_shape[1]
    for i, (m, k, s, act) in enumerate(layers):
        w = rng.standard_normal((m, c, k, k)) * np.sqrt(2.0 / (c * k * k))
        y = node("Conv", [x, const(w), const(rng.uniform(-0.5, 0.5, m))], kernel_shape=[k, k], strides=[s, s],
                 pads=[k // 2] * 4)
        if act:
            y = node(act, [y])
        if i == len(layers) - 1 and concat and s == 1:
            y = node("Concat", [x, y], axis=1)
            m += c
        x, c = y, m
    graph = helper.make_graph(nodes, "bf16net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _plan(model: onnx.ModelProto, threads: int = 2):
    return pipeline(import_model(model), options=CompileOptions(threads=threads, precision="bf16", winograd=False))


SMALL = _net((2, 19, 12, 11), [(40, 3, 1, "Relu"), (24, 1, 1, None)])


@pytest.mark.parametrize("cpu", ["znver4", "sapphirerapids"])
def test_bf16_targets_compile_to_vdpbf16ps(cpu):
    """Compiled, not run: the channels-last convs of a bf16 compile multiply with vdpbf16ps on zmm registers, and
    a float32 compile of the same model for the same CPU has none."""
    asm, obj = foreign_assembly(_plan(SMALL), cpu, AVX512_BF16)
    lines = [line for line in asm.splitlines() if "vdpbf16ps" in line]
    assert lines and all("zmm" in line for line in lines), lines[:3]
    assert len(obj) > 1000
    f32 = pipeline(import_model(SMALL), options=CompileOptions(threads=2, winograd=False))
    assert "vdpbf16ps" not in foreign_assembly(f32, cpu, AVX512_BF16)[0]


def test_this_machine_picks_its_own_multiply():
    """vdpbf16ps only where the host has AVX512_BF16: elsewhere a bf16 compile keeps the float32-FMA kernels."""
    host = Target.host()
    features = frozenset(f[1:] for f in host.features.split(",") if f.startswith("+"))
    chosen = bf16_dense.scheme(features)
    assert (chosen is not None) is ("avx512bf16" in features)
    if chosen is None:
        asm, _ = foreign_assembly(_plan(SMALL), host.cpu, host.features)
        assert "vdpbf16ps" not in asm and "vfmadd" in asm
    assert bf16_dense.scheme(frozenset({"avx512f", "avx512bf16"})) is bf16_dense.DPBF16_512
    assert bf16_dense.scheme(frozenset({"avx2", "fma"})) is None


# (NCHW input, layers, Concat after the last, threads, 512-bit)
GRID = [
    ((16, 3, 33, 29), [(24, 7, 2, "Relu"), (40, 3, 1, "Relu")], False, 2, True),   # RGB stem: odd channels (a pair
    ((16, 19, 15, 13), [(40, 3, 1, "Relu"), (19, 1, 1, None)], False, 1, False),   # padded), partial 32/16 blocks
    ((1, 64, 14, 14), [(64, 3, 1, "Relu"), (64, 3, 1, "Sigmoid")], False, 2, True),  # batch 1, whole blocks
    ((4, 32, 9, 9), [(16, 1, 1, "Relu"), (8, 3, 1, "Tanh")], True, 2, False),       # DenseNet layer into a Concat
]


@pytest.mark.parametrize("x_shape,layers,concat,threads,wide", GRID)
def test_native_data_path_matches_the_portable_bf16_path(monkeypatch, x_shape, layers, concat, threads, wide):
    model = _net(x_shape, layers, seed=sum(x_shape), concat=concat)
    x = np.random.default_rng(len(layers)).standard_normal(x_shape).astype(np.float32)
    portable = convc.compile(model, precision="bf16", threads=threads, cache=False).run({"x": x})
    emitted = []
    emulated = bf16_dense.EMULATED_512 if wide else bf16_dense.EMULATED_256
    monkeypatch.setattr(bf16_dense, "scheme", lambda features: emulated)
    original = bf16_dense.emit_bf16_conv
    monkeypatch.setattr(bf16_dense, "emit_bf16_conv", lambda em, op, s: emitted.append(op.name) or original(em, op, s))
    native = convc.compile(model, precision="bf16", threads=threads, cache=False).run({"x": x})
    assert len(emitted) == len(layers)
    for name, want in portable.items():
        got = native[name]
        scale = np.abs(want).max()
        assert scale > 0.1
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * scale)  # measured: 0.9-1.8e-7 * scale
        assert not np.array_equal(got, np.zeros_like(got))
    f32 = convc.compile(model, threads=threads, cache=False).run({"x": x})
    for name, want in f32.items():  # bf16 rounding moved the outputs, as it should, but not far
        err = np.abs(native[name] - want).max() / np.abs(want).max()
        assert 1e-5 < err < 2e-2
