"""The examples in examples/ run as scripts (their main()) and do what they claim."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from dsl.checks import TOL, run_onnxruntime
from helpers import assert_close

import convc
from convc import nn

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


@pytest.mark.xfail(raises=nn.UnsupportedLayerError, strict=True, reason="ConvTranspose op not yet in convc")
def test_dcgan_generator():
    images = load_example("dcgan_generator").main(batch=2)
    assert images.shape == (2, 3, 32, 32)
    assert np.all(np.abs(images) <= 1.0)  # tanh output
