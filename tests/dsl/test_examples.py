"""The examples in examples/ run as scripts (their main()) and do what they claim."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest

from dsl.checks import TOL, run_onnxruntime
from helpers import assert_close

import convc

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"convc_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_wavenet_tcn_learns_the_delayed_sum(capsys):
    """Trained with the Trainer (MSE, Adam), the WaveNet predicts y[t] = x[t-5] + 0.5 x[t-11] from
    white noise to a small fraction of the target variance (predicting the mean, 0, leaves all of it)."""
    wavenet = load_example("wavenet_tcn")
    result = wavenet.main()
    assert result["receptive_field"] == 17  # 1 + (2-1)*1 for the input conv + (2-1)*(1+2+4+8)
    variance = result["variance"]
    assert 0.8 * variance < result["mse_before"] < 1.25 * variance  # untrained: no better than predicting 0
    assert result["mse_after"] < 0.05 * variance  # reaches about 0.25%
    assert np.mean(result["train_losses"][-20:]) < 0.05 * np.mean(result["train_losses"][:5])
    assert result["max_error"] < 1e-4  # the trained weights in the module: numpy reference = compiled
    assert result["causal"]
    out = capsys.readouterr().out
    assert "Total MACs:" in out and "causal: outputs before step 32 unchanged" in out
    assert "held-out MSE before training" in out and "held-out MSE after 200 steps" in out


@pytest.mark.slow  # a second training run of the example (6-15 s); test_wavenet_tcn_learns_the_delayed_sum runs it
def test_wavenet_tcn_needs_its_receptive_field():
    """Dilations (1, 2, 4) see 9 steps: x[t-11] is out of sight, so the error cannot fall below the
    variance of 0.5 x[t-11] (about 19% of the target variance here); the full net goes far below it."""
    wavenet = load_example("wavenet_tcn")
    result = wavenet.main(dilations=(1, 2, 4))
    assert result["receptive_field"] == 9
    x, _ = wavenet.delayed_sum_task(256, 64, np.random.default_rng(1))  # main()'s held-out set (seed + 1)
    unseen = np.mean((0.5 * x[..., :-11].astype(np.float64)) ** 2) * (64 - 11) / 64  # E[(0.5 x[t-11])^2] over t
    assert 0.15 < unseen / result["variance"] < 0.25
    assert result["mse_after"] > 0.9 * unseen
    assert result["mse_after"] > 0.15 * result["variance"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_train_digits(tmp_path, capsys):
    """The digits example trains with the Trainer to >= 97% test accuracy (98.06% with its seed), and
    its ONNX export gives onnxruntime the Trainer's predictions."""
    path = tmp_path / "digits_cnn.onnx"
    result = load_example("train_digits").main(onnx_path=str(path))
    assert result["accuracy"] >= 0.97  # 0.9806 with seed 0
    assert result["loss"] < 0.1
    assert result["steps"] == 12 * (1437 // 32)
    trainer, x_test = result["trainer"], result["x_test"]
    logits = trainer.predict(x_test)
    onnx_logits = run_onnxruntime(onnx.load(str(path)), x_test)  # all 360 test images at once: batch is symbolic
    assert onnx_logits.shape == (360, 10)
    assert_close(onnx_logits, logits, 1e-4, "digits: onnxruntime on the export vs Trainer.predict")
    assert np.array_equal(onnx_logits.argmax(1), logits.argmax(1))
    assert float((onnx_logits.argmax(1) == result["y_test"]).mean()) == result["accuracy"]
    out = capsys.readouterr().out
    assert "epoch 12" in out and f"wrote {path}" in out
