"""The examples in examples/ run as scripts (their main()) and do what they claim."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np

from dsl.checks import TOL, run_onnxruntime
from helpers import assert_close

import convc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"convc_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_wavenet_tcn(capsys):
    result = load_example("wavenet_tcn").main(length=128)
    probs = result["probabilities"]
    assert probs.shape == (1, 8, 128)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)  # a distribution over levels at every step
    assert result["max_error"] < 1e-5
    assert result["causal"]
    assert result["receptive_field"] == 17  # 1 + (2-1)*1 for the input conv + (2-1)*(1+2+4+8)
    assert 1.5 < result["nll"] < 3.0  # untrained: near the uniform guess log(8) = 2.08
    out = capsys.readouterr().out
    assert "Total MACs:" in out and "causal: outputs before step 64 unchanged" in out


def test_wavenet_tcn_structure_and_export(rng):
    wavenet = load_example("wavenet_tcn")
    model = wavenet.WaveNet().init_parameters(seed=0)
    g = model.to_graph((1, 1, 64))
    convs = [op for op in g.ops() if op.kind is convc.OpKind.CONV]
    # input conv + 4 blocks x (filter, gate, residual, skip) + 2 head convs
    assert len(convs) == 1 + 4 * 4 + 2
    dilated = [op.attrs.dilations[0] for op in convs if op.attrs.kernel_shape == (2,)]
    assert dilated == [1, 1, 1, 2, 2, 4, 4, 8, 8]
    assert all(op.attrs.pads == (op.attrs.dilations[0], 0) for op in convs if op.attrs.kernel_shape == (2,))
    x = rng.standard_normal((2, 1, 64)).astype(np.float32)
    assert_close(convc.compile(model, input_shape=x.shape)(x), run_onnxruntime(model.to_onnx(None, x.shape), x),
                 TOL, "WaveNet: convc vs onnxruntime")


def test_dcgan_generator_shapes():
    dcgan = load_example("dcgan_generator")
    generator = dcgan.Generator()
    # 1 -> 4 (k=4, s=1, p=0) -> 8 -> 16 -> 32 (k=4, s=2, p=1: (h-1)*2 - 2 + 4 = 2h)
    assert generator.output_shape((4, 100, 1, 1)) == (4, 3, 32, 32)
    assert generator.net[0].weight.shape == (100, 64, 4, 4)  # (in, out / groups, kH, kW) like PyTorch


def test_dcgan_generator(capsys):
    result = load_example("dcgan_generator").main(batch=2)
    images = result["images"]
    assert images.shape == (2, 3, 32, 32)
    assert np.all(np.abs(images) <= 1.0)  # tanh output
    assert result["max_error"] < 1e-5
    # ConvTranspose MACs: every input element times its group's weights, N*C*prod(in) * (M/g)*kH*kW:
    # 2*100*1 * 64*16 = 204,800;  2*64*16 * 32*16 = 1,048,576;  2*32*64 * 16*16 = 1,048,576;
    # 2*16*256 * 3*16 = 393,216;  total 2,695,168
    summary = result["model"].summarize((2, 100, 1, 1))
    assert [r.macs for r in summary.layers if r.type == "ConvTranspose2d"] == [204_800, 1_048_576, 1_048_576, 393_216]
    assert "Total MACs: 2,695,168" in capsys.readouterr().out


def test_dcgan_generator_against_onnxruntime(rng):
    generator = load_example("dcgan_generator").Generator().init_parameters(seed=1)
    z = rng.standard_normal((3, 100, 1, 1)).astype(np.float32)
    exported = generator.to_onnx(None, z.shape)
    assert [n.op_type for n in exported.graph.node].count("ConvTranspose") == 4
    assert_close(convc.compile(generator, input_shape=z.shape)(z), run_onnxruntime(exported, z), TOL,
                 "DCGAN: convc vs onnxruntime")
