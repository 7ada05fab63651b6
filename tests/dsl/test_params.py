"""Parameters: PyTorch's default initialisation (bounds and statistics), seeding, and reading and
writing them by name as numpy arrays."""
from __future__ import annotations

import math

import numpy as np
import pytest

import convc
from convc import nn


def assert_uniform(w: np.ndarray, bound: float) -> None:
    """Samples of uniform(-bound, bound): inside the bound, reaching close to it, mean 0, std bound/sqrt(3)."""
    assert w.dtype == np.float32
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.98 * bound
    assert abs(w.mean()) < 0.05 * bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("layer,fan_in", [
    (lambda: nn.Conv2d(16, 32, 3), 16 * 3 * 3),            # in_channels * kH * kW
    (lambda: nn.Conv2d(64, 64, 3, groups=64), 1 * 3 * 3),  # depthwise: in_channels / groups = 1
    (lambda: nn.Conv1d(4, 64, 5), 4 * 5),
    (lambda: nn.Linear(400, 120), 400),
    (lambda: nn.ConvTranspose2d(16, 8, 4), 8 * 4 * 4),      # PyTorch uses weight.shape[1] = out / groups here
], ids=["conv2d", "depthwise", "conv1d", "linear", "conv-transpose"])
def test_kaiming_uniform_weights_and_bias_bounds(layer, fan_in):
    nn.manual_seed(0)
    m = layer()
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)): sqrt(1/3) * sqrt(3 / fan_in)
    assert_uniform(m.weight, bound)
    assert np.abs(m.bias).max() <= bound and m.bias.dtype == np.float32


def test_batch_norm_starts_as_the_identity():
    bn = nn.BatchNorm2d(5)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    np.testing.assert_array_equal(bn.weight, np.ones(5))
    np.testing.assert_array_equal(bn.bias, np.zeros(5))
    np.testing.assert_array_equal(bn.running_mean, np.zeros(5))
    np.testing.assert_array_equal(bn.running_var, np.ones(5))
    assert list(nn.BatchNorm1d(3, affine=False).state_dict()) == ["running_mean", "running_var"]


def test_no_bias():
    m = nn.Conv2d(2, 3, 3, bias=False)
    assert m.bias is None and list(m.named_parameters()) == ["weight"]


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = nn.relu(self.conv1(x))
        x = nn.relu(self.conv2(x))
        return self.fc3(nn.relu(self.fc2(nn.relu(self.fc1(nn.flatten(x))))))


def test_manual_seed_makes_initialisation_reproducible():
    nn.manual_seed(123)
    a = LeNet().state_dict()
    nn.manual_seed(123)
    b = LeNet().state_dict()
    nn.manual_seed(124)
    c = LeNet().state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not np.array_equal(a["conv1.weight"], c["conv1.weight"])


def test_init_parameters_with_a_seed_ignores_the_global_generator():
    nn.manual_seed(1)
    a = LeNet().init_parameters(seed=7).state_dict()
    nn.manual_seed(2)
    nn.Linear(3, 3)  # draws from the global generator
    b = LeNet().init_parameters(seed=7).state_dict()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_named_parameters_are_live_arrays_in_module_order():
    net = LeNet()
    named = net.named_parameters()
    assert list(named) == [f"{layer}.{p}" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")
                           for p in ("weight", "bias")]
    assert named["fc1.weight"] is net.fc1.weight
    assert all(a is b for a, b in zip(net.parameters(), named.values()))
    named["fc3.bias"][...] = 0.5
    np.testing.assert_array_equal(net.fc3.bias, np.full(10, 0.5, np.float32))
    assert net.num_parameters() == 61_706  # see test_summary for the arithmetic


def test_assignment_writes_in_place_and_casts_to_float32():
    net = LeNet()
    held = net.conv1.weight
    net.conv1.weight = np.ones((6, 1, 5, 5), dtype=np.float64)
    assert held is net.conv1.weight and held.dtype == np.float32
    np.testing.assert_array_equal(held, np.ones((6, 1, 5, 5)))
    net.fc3.bias = [float(i) for i in range(10)]
    np.testing.assert_array_equal(net.fc3.bias, np.arange(10, dtype=np.float32))


@pytest.mark.slow
def test_state_dict_copies_and_load_state_dict_round_trip(rng):
    a, b = LeNet().init_parameters(seed=1), LeNet().init_parameters(seed=2)
    state = a.state_dict()
    state["conv1.bias"][...] = 9.0  # a copy: the model is untouched
    assert not np.any(a.conv1.bias == 9.0)
    b.load_state_dict(a.state_dict())
    x = rng.standard_normal((1, 1, 13, 13)).astype(np.float32)
    np.testing.assert_array_equal(convc.compile(a, input_shape=x.shape)(x), convc.compile(b, input_shape=x.shape)(x))


def test_written_parameters_reach_the_compiled_model(rng):
    model = nn.Sequential(nn.Linear(4, 3))
    model[0].weight = np.eye(3, 4)
    model[0].bias = np.array([1.0, 2.0, 3.0])
    x = rng.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_allclose(convc.compile(model, input_shape=x.shape)(x), x[:, :3] + [1, 2, 3], rtol=1e-6)


def test_compiling_snapshots_the_parameters(rng):
    """Edits after convc.compile reach neither the compiled model nor a batch size compiled later."""
    model = nn.Sequential(nn.Linear(4, 3))
    compiled = convc.compile(model, input_shape=(1, 4))
    x = rng.standard_normal((3, 4)).astype(np.float32)
    expected = model(x)
    model[0].weight = np.zeros((3, 4))
    np.testing.assert_allclose(compiled(x[:1]), expected[:1], rtol=1e-6)
    np.testing.assert_allclose(compiled(x), expected, rtol=1e-6)  # batch 3: compiled on first use


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.full((1, 3), 2.0))
        self.register_buffer("offset", np.array([[1.0, 2.0, 3.0]]))

    def forward(self, x):
        return x * self.scale + self.offset


def test_custom_parameters_and_buffers(rng):
    m = Scaled()
    assert list(m.named_parameters()) == ["scale"] and list(m.named_buffers()) == ["offset"]
    assert list(m.state_dict()) == ["scale", "offset"]
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(convc.compile(m, input_shape=x.shape)(x), 2 * x + [1, 2, 3], rtol=1e-6)
