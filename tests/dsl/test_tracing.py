"""Tracing custom models: residual and inception blocks (graph structure, then numbers against
onnxruntime), functional ops and arithmetic, parameters used in forward, several outputs, shared
and anonymous modules."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from dsl.checks import check_model, run_onnxruntime

import convc
from convc import nn
from convc.ir import TensorKind
from convc.ops import OpKind


def randomize_batch_norms(model: nn.Module, rng: np.random.Generator) -> None:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean, m.running_var = rng.standard_normal(c), rng.uniform(0.5, 2.0, c)
            m.weight, m.bias = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)


class ResidualBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nn.relu(y + (self.shortcut(x) if self.shortcut is not None else x))


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = ResidualBlock(8, 8)
        self.block2 = ResidualBlock(8, 16, stride=2)
        self.pool = nn.GlobalAvgPool()
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = self.block2(self.block1(self.stem(x)))
        return self.fc(nn.flatten(self.pool(x)))


def test_residual_block_graph_structure():
    g = ResNetTiny().to_graph((1, 3, 8, 8))
    counts = Counter(op.kind for op in g.ops())
    # convs: stem 1 + block1 2 + block2 2 + projection 1; every conv has its BN
    assert counts == {OpKind.CONV: 6, OpKind.BATCH_NORM: 6, OpKind.RELU: 5, OpKind.ADD: 2,
                      OpKind.GLOBAL_AVERAGE_POOL: 1, OpKind.FLATTEN: 1, OpKind.GEMM: 1}
    add1 = g.op("block1.add")
    # the identity shortcut adds the block's input (the stem's output) to bn2's output
    assert [g.producer(t).name for t in add1.inputs] == ["block1.bn2", "stem.2"]
    add2 = g.op("block2.add")
    assert [g.producer(t).name for t in add2.inputs] == ["block2.bn2", "block2.shortcut.1"]
    assert g.consumers(g.op("stem.2").outputs[0]) == [g.op("block1.conv1"), add1]
    assert {op.name for op in g.ops() if op.kind is OpKind.RELU} == {
        "stem.2", "block1.relu", "block1.relu_1", "block2.relu", "block2.relu_1"}
    assert g.tensor("output").shape == (1, 5)


def test_residual_block_constants_are_the_state_dict():
    model = ResNetTiny()
    g = model.to_graph((1, 3, 8, 8))
    constants = {t.name: t for t in g.tensors() if t.kind is TensorKind.CONSTANT}
    assert set(constants) == set(model.state_dict())
    assert g.metadata["parameters"] and set(g.metadata["parameters"]) == set(model.named_parameters())
    assert set(g.metadata["buffers"]) == set(model.named_buffers())
    np.testing.assert_array_equal(constants["block2.shortcut.0.weight"].data, model.block2.shortcut[0].weight)
    assert constants["block2.shortcut.0.weight"].data is not model.block2.shortcut[0].weight  # a copy


@pytest.mark.slow
def test_residual_block_numbers(rng):
    model = ResNetTiny()
    randomize_batch_norms(model, rng)
    check_model(model, rng.standard_normal((2, 3, 8, 8)))


class Inception(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.b1 = nn.Conv2d(c_in, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(c_in, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))
        self.b5 = nn.Sequential(nn.Conv2d(c_in, 2, 1), nn.ReLU(), nn.Conv2d(2, 4, 5, padding=2))
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(c_in, 4, 1))

    def forward(self, x):
        return nn.relu(nn.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], dim=1))


def test_inception_block_graph_structure():
    g = Inception(6).to_graph((1, 6, 7, 7))
    counts = Counter(op.kind for op in g.ops())
    assert counts == {OpKind.CONV: 6, OpKind.RELU: 3, OpKind.MAX_POOL: 1, OpKind.CONCAT: 1}
    assert len(g.consumers("input")) == 4  # the four branches read the block input
    cat = g.op("cat")
    assert cat.attrs.axis == 1
    assert [g.producer(t).name for t in cat.inputs] == ["b1", "b3.2", "b5.2", "pool.1"]
    assert g.tensor(cat.outputs[0]).shape == (1, 8 + 8 + 4 + 4, 7, 7)


@pytest.mark.slow
def test_inception_block_numbers(rng):
    check_model(Inception(6), rng.standard_normal((1, 6, 7, 7)))


class Arithmetic(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)
        self.scale = nn.Parameter(np.linspace(0.5, 1.5, 2).reshape(1, 2, 1, 1))

    def forward(self, x):
        y = self.conv(x)
        z = 2.0 * y + 1 - x * self.scale
        return nn.tanh(-z) + nn.sigmoid(y) * nn.leaky_relu(x, 0.3) / 2


def test_arithmetic_and_parameters_in_forward(rng):
    model = Arithmetic()
    assert set(model.named_parameters()) == {"conv.weight", "conv.bias", "scale"}
    g = model.to_graph((1, 2, 5, 5))
    assert g.tensor("scale").kind is TensorKind.CONSTANT and "scale" in g.metadata["parameters"]
    counts = Counter(op.kind for op in g.ops())
    # Mul: 2*y, x*scale, -z (as z * -1), sigmoid*leaky; Add: + 1, tanh + ...; Sub: - x*scale; Div: / 2
    assert (counts[OpKind.MUL], counts[OpKind.ADD], counts[OpKind.SUB], counts[OpKind.DIV]) == (4, 2, 1, 1)
    x = rng.standard_normal((1, 2, 5, 5))
    w, b, s = model.conv.weight, model.conv.bias, model.scale
    from dsl.numpy_refs import conv

    def expected(x):
        y = conv(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)
        z = 2 * y + 1 - x * s
        return np.tanh(-z) + 1 / (1 + np.exp(-y)) * np.where(x >= 0, x, 0.3 * x) / 2
    check_model(model, x, numpy_ref=expected)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 6)
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 2)

    def forward(self, x):
        h = nn.relu(self.body(x))
        return nn.softmax(self.a(h), dim=1), self.b(h)


def test_several_outputs(rng):
    model = TwoHeads()
    g = model.to_graph((2, 4))
    assert g.outputs == ["output0", "output1"]
    x = rng.standard_normal((2, 4)).astype(np.float32)
    probs, values = convc.compile(model, input_shape=x.shape)(x)
    ref_probs, ref_values = model(x)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(values, ref_values, rtol=1e-5, atol=1e-6)
    sess_out = run_onnxruntime(model.to_onnx(None, x.shape), x)
    np.testing.assert_allclose(probs, sess_out, rtol=1e-5, atol=1e-6)


class Passthrough(nn.Module):
    def forward(self, x):
        return x


def test_returning_the_input_adds_an_identity(rng):
    g = Passthrough().to_graph((1, 3))
    assert [op.kind for op in g.ops()] == [OpKind.IDENTITY]
    x = rng.standard_normal((1, 3)).astype(np.float32)
    np.testing.assert_array_equal(convc.compile(Passthrough(), input_shape=x.shape)(x), x)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(nn.relu(self.conv(x)))


def test_a_module_called_twice_shares_its_parameters(rng):
    model = Shared()
    g = model.to_graph((1, 3, 6, 6))
    convs = [op for op in g.ops() if op.kind is OpKind.CONV]
    assert [op.name for op in convs] == ["conv", "conv_1"]
    assert convs[0].inputs[1:] == convs[1].inputs[1:] == ("conv.weight", "conv.bias")
    rows = model.summarize((1, 3, 6, 6)).layers
    assert [(r.name, r.params) for r in rows] == [("conv", 84), ("relu", 0), ("conv", 0)]  # 3*3*9 + 3 once
    check_model(model, rng.standard_normal((1, 3, 6, 6)))


class Anonymous(nn.Module):
    def forward(self, x):
        return nn.Sigmoid()(nn.ReLU()(x))


def test_modules_created_inside_forward_get_names():
    g = Anonymous().to_graph((1, 4))
    assert [op.name for op in g.ops()] == ["relu", "sigmoid"]


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Conv1d(2, 2, 2, dilation=d, padding="causal") for d in (1, 2, 4))

    def forward(self, x):
        for block in self.blocks:
            x = x + nn.relu(block(x))
        return x


def test_module_list_names_and_numbers(rng):
    model = Blocks()
    assert list(model.named_parameters()) == [f"blocks.{i}.{p}" for i in range(3) for p in ("weight", "bias")]
    g = model.to_graph((1, 2, 16))
    assert [op.name for op in g.ops()][:3] == ["blocks.0", "relu", "add"]
    check_model(model, rng.standard_normal((1, 2, 16)))


def test_sequential_with_names():
    model = nn.Sequential({"conv": nn.Conv2d(1, 2, 3), "act": nn.ReLU()})
    assert list(model.state_dict()) == ["conv.weight", "conv.bias"]
    assert [op.name for op in model.to_graph((1, 1, 5, 5)).ops()] == ["conv", "act"]
    assert isinstance(model[0], nn.Conv2d) and len(model) == 2
    assert repr(model) == ("Sequential(\n  (conv): Conv2d(1, 2, kernel_size=(3, 3), stride=(1, 1))\n"
                           "  (act): ReLU()\n)")


def test_calling_a_model_on_numpy_runs_the_reference(rng):
    model = nn.Sequential(nn.Linear(3, 2))
    x = rng.standard_normal((4, 3)).astype(np.float32)
    # atol too: the layer's initial weights depend on the models built before it in this process, and
    # an output near zero differs from numpy's float32 product by more than 1e-6 relative
    np.testing.assert_allclose(model(x), x @ model[0].weight.T + model[0].bias, rtol=1e-6, atol=1e-6)


class Branchy(nn.Module):
    def forward(self, x):
        if x:
            return x
        return nn.relu(x)


def test_branching_on_a_traced_tensor_is_an_error():
    with pytest.raises(nn.ModelDefinitionError, match="forward\\(\\) cannot branch on tensor values"):
        Branchy().to_graph((1, 2))


class InlineConvs(nn.Module):
    def forward(self, x):
        return nn.Conv2d(2, 2, 1)(nn.Conv2d(2, 2, 1)(x))  # two temporaries: each keeps its own weights


def test_temporary_modules_do_not_share_parameters():
    g = InlineConvs().to_graph((1, 2, 3, 3))
    convs = [op for op in g.ops() if op.kind is OpKind.CONV]
    assert [op.name for op in convs] == ["conv2d", "conv2d_1"]
    assert convs[0].inputs[1] != convs[1].inputs[1]
