"""convc.profile(..., train=True) and ``convc profile --train``: exact counts, memory identities."""
from __future__ import annotations

import json

import onnx
import pytest

import convc
from convc.cli import main
from train import nets


@pytest.fixture(scope="module")
def prof():
    return convc.profile(nets.digits_cnn(hw=8, c1=16, c2=32), batch=32, train=True, optimizer=convc.optim.Adam(1e-3))


@pytest.mark.slow
def test_macs_per_layer(prof):
    layers = {l.op + str(i): l for i, l in enumerate(prof.layers)}
    conv1, conv2, fc = layers["Conv0"], layers["Conv4"], layers["Gemm10"]
    assert conv1.forward_macs == 32 * 16 * 8 * 8 * (1 * 9)        # N * M * OH * OW * (C * KH * KW) = 294,912
    assert conv1.backward_macs == conv1.forward_macs              # dW only: no dX for the data
    assert conv2.forward_macs == 32 * 32 * 4 * 4 * (16 * 9)       # 2,359,296
    assert conv2.backward_macs == 2 * conv2.forward_macs          # dX and dW
    assert fc.forward_macs == 32 * 10 * 128                       # 40,960
    assert fc.backward_macs == 2 * fc.forward_macs
    assert prof.forward_macs == 294_912 + 2_359_296 + 40_960
    assert prof.backward_macs == 294_912 + 2 * 2_359_296 + 2 * 40_960
    assert all(l.backward_macs == 0 for l in prof.layers if l.op not in ("Conv", "Gemm"))


def test_parameter_gradient_and_state_bytes(prof):
    layers = {l.op + str(i): l for i, l in enumerate(prof.layers)}
    conv1 = layers["Conv0"]
    assert conv1.param_bytes == (16 * 9 + 16) * 4 == conv1.grad_bytes  # weight and bias, float32
    assert conv1.state_bytes == 2 * conv1.param_bytes                   # Adam: two moments
    n_params = (16 * 9 + 16) + 2 * 16 + (32 * 16 * 9 + 32) + 2 * 32 + (10 * 128 + 10)
    m = prof.memory
    assert m.param_bytes == 4 * n_params == m.grad_bytes
    assert m.optimizer_state_bytes == 2 * m.param_bytes
    assert m.running_stats_bytes == 4 * 2 * (16 + 32)
    assert m.state_bytes == m.param_bytes + m.optimizer_state_bytes + m.running_stats_bytes
    assert m.peak_bytes == m.state_bytes + m.arena_bytes + m.io_bytes
    assert m.lower_bound_bytes <= m.arena_bytes < m.activation_bytes


def test_saved_activations(prof):
    layers = {l.op + str(i): l for i, l in enumerate(prof.layers)}
    # Each kept tensor counts once, under the layer that produced it: the conv output (read by BN's backward and
    # by the ReLU output rebuilt from it and BN's batch statistics: passes/autodiff/recompute.py) and the input
    # (read by the conv's weight gradient) under the conv; BN keeps its batch mean and invstd; ReLU's and
    # MaxPool's outputs are rebuilt or not read, so they keep nothing
    conv_out, image = 32 * 16 * 8 * 8 * 4, 32 * 1 * 8 * 8 * 4
    assert layers["Conv0"].saved_bytes == conv_out + image
    assert layers["BatchNormTrain1"].saved_bytes == 2 * 16 * 4
    assert layers["Relu2"].saved_bytes == 0
    assert layers["Flatten8"].saved_bytes == 0
    assert sum(l.saved_bytes for l in prof.layers) == prof.memory.saved_bytes


@pytest.mark.slow
def test_sgd_has_no_optimizer_state():
    p = convc.profile(nets.digits_cnn(hw=8, c1=4, c2=8), batch=4, train=True)
    assert p.memory.optimizer_state_bytes == 0 and "SGD" in p.optimizer


@pytest.mark.slow
def test_measured(prof):
    p = convc.profile(nets.digits_cnn(hw=8, c1=4, c2=8), batch=8, train=True, measure=True, repeats=3)
    assert p.measured and p.step_seconds > 0
    assert sum(l.seconds["backward"] for l in p.layers) > 0
    assert "fwd ms" in str(p)


@pytest.mark.slow
def test_cli(tmp_path, capsys):
    path = tmp_path / "digits.onnx"
    onnx.save(nets.digits_cnn(hw=8, c1=4, c2=8), path)
    assert main(["profile", str(path), "--train", "--batch", "16", "--optimizer", "adam", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["batch"] == 16 and data["totals"]["backward_macs"] > data["totals"]["forward_macs"]
    assert data["memory"]["optimizer_state_bytes"] == 2 * data["memory"]["param_bytes"]
    assert main(["profile", str(path), "--train", "--batch", "4"]) == 0
    text = capsys.readouterr().out
    assert "peak memory of the planned step" in text and "bwd MACs" in text
