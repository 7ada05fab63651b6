"""Build-time errors: shape mismatches name the layer by its dotted name and give both shapes,
before anything compiles; wrong parameter shapes name the parameter; misuse is explained."""
from __future__ import annotations

import re

import numpy as np
import pytest

import convc
from convc import nn
from convc.errors import ConvcError, GraphError


class LeNetWrongFeatures(nn.Module):
    """28x28 -> conv (same size) -> pool -> pool: 8 x 7 x 7 = 392 features, but fc1 expects 400."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(400, 10)

    def forward(self, x):
        x = self.pool(self.pool(nn.relu(self.conv1(x))))
        return self.fc1(nn.flatten(x))


LINEAR_400_VS_392 = ("Linear 'fc1' expects 400 input features but its input has shape (1, 392) "
                     "(392 features after 'flatten')")


def test_linear_after_flatten_names_both_shapes():
    with pytest.raises(nn.LayerShapeError) as info:
        LeNetWrongFeatures().to_graph((1, 1, 28, 28))
    assert str(info.value) == LINEAR_400_VS_392


def test_shape_errors_come_before_compilation(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("compile_graph must not run")
    monkeypatch.setattr("convc.driver.compile_graph", never)  # imports convc.driver (import convc is lazy)
    with pytest.raises(nn.LayerShapeError) as info:
        convc.compile(LeNetWrongFeatures(), input_shape=(1, 1, 28, 28))
    assert str(info.value) == LINEAR_400_VS_392
    assert isinstance(info.value, GraphError) and isinstance(info.value, ConvcError)


def test_summary_and_export_raise_the_same_error(tmp_path):
    for build in (lambda m: m.summary((1, 1, 28, 28)), lambda m: m.to_onnx(tmp_path / "m.onnx", (1, 1, 28, 28))):
        with pytest.raises(nn.LayerShapeError, match=re.escape(LINEAR_400_VS_392)):
            build(LeNetWrongFeatures())
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("model,shape,message", [
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(16, 4, 3)), (1, 3, 32, 32),
     "Conv2d '1' expects 16 input channels but its input has shape (1, 8, 30, 30) (8 channels after '0')"),
    (nn.Sequential(nn.Conv2d(3, 8, 3)), (1, 3, 32),
     "Conv2d '0' expects a 4-D input (N, C, H, W) but its input has shape (1, 3, 32) "
     "(from the model input 'input')"),
    (nn.Sequential(nn.Conv1d(2, 4, 3)), (1, 3, 16),
     "Conv1d '0' expects 2 input channels but its input has shape (1, 3, 16) (3 channels from the model input "
     "'input')"),
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.Linear(8, 2)), (1, 3, 5, 5),
     "Linear '1' expects an input of shape (N, 8) but its input has shape (1, 8, 3, 3) (after '0'); "
     "flatten it first (nn.Flatten())"),
    (nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), (1, 2, 2),
     "Linear '1' expects 3 input features but its input has shape (1, 4) (4 features after '0')"),
    (nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(6)), (1, 3, 5, 5),
     "BatchNorm2d '1' expects 6 channels but its input has shape (1, 8, 3, 3) (8 channels after '0')"),
    (nn.Sequential(nn.BatchNorm1d(4)), (2, 4, 3, 3),
     "BatchNorm1d '0' expects a 3-D input (N, C, L) but its input has shape (2, 4, 3, 3) "
     "(from the model input 'input')"),
    (nn.Sequential(nn.MaxPool2d(2)), (1, 3, 5),
     "MaxPool2d '0' expects a 4-D input (N, C, H, W) but its input has shape (1, 3, 5) (from the model input "
     "'input')"),
    (nn.Sequential(nn.GlobalAvgPool()), (1, 3),
     "GlobalAvgPool '0' expects an input (N, C, spatial...) of rank >= 3 but its input has shape (1, 3) "
     "(from the model input 'input')"),
    (nn.Sequential(nn.Softmax(2)), (1, 3),
     "Softmax '0' has dim=2, out of range for its input of shape (1, 3) (from the model input 'input')"),
], ids=["conv-channels", "conv-rank", "conv1d-channels", "linear-rank", "linear-features", "bn-channels",
        "bn1d-rank", "pool-rank", "gap-rank", "softmax-dim"])
def test_layer_shape_errors(model, shape, message):
    with pytest.raises(nn.LayerShapeError) as info:
        model.to_graph(shape)
    assert str(info.value) == message


def test_empty_conv_output_names_the_layer_and_the_input():
    with pytest.raises(nn.LayerShapeError) as info:
        nn.Sequential(nn.Conv2d(3, 8, 5)).to_graph((1, 3, 4, 4))
    # the part after the colon is shape inference's own message (convc/ops/conv.py)
    assert str(info.value).startswith("Conv2d '0' cannot take its input of shape (1, 3, 4, 4) "
                                      "(from the model input 'input'): ")
    assert "kernel_shape=(5, 5)" in str(info.value)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)

    def forward(self, x):
        return self.conv(x) + x


class Holder(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        return self.block(x)


def test_residual_add_mismatch_names_the_function_and_both_producers():
    with pytest.raises(nn.LayerShapeError) as info:
        Holder().to_graph((1, 4, 8, 8))
    assert str(info.value).startswith(
        "add 'block.add' cannot take inputs of shapes (1, 8, 8, 8) (after 'block.conv') and (1, 4, 8, 8) "
        "(from the model input 'input'): ")


class BadCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3)
        self.b = nn.Conv2d(4, 8, 1)

    def forward(self, x):
        return nn.cat([self.a(x), self.b(x)], dim=1)


def test_concat_mismatch():
    with pytest.raises(nn.LayerShapeError) as info:
        BadCat().to_graph((1, 4, 8, 8))
    assert str(info.value).startswith(
        "cat 'cat' cannot take inputs of shapes (1, 8, 6, 6) (after 'a') and (1, 8, 8, 8) (after 'b'): ")


class Reshaper(nn.Module):
    def forward(self, x):
        return x.reshape(x.shape[0], 5, -1)


def test_reshape_that_does_not_divide():
    with pytest.raises(nn.LayerShapeError) as info:
        Reshaper().to_graph((2, 12))
    assert str(info.value) == ("reshape 'reshape' cannot turn its input of shape (2, 12) (from the model input "
                               "'input') into (2, 5, -1)")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)


def test_assigning_a_parameter_of_the_wrong_shape():
    net = Net()
    with pytest.raises(nn.ParameterShapeError) as info:
        net.conv1.weight = np.zeros((6, 1, 3, 3))
    assert str(info.value) == ("parameter 'conv1.weight' has shape (6, 1, 5, 5); "
                               "the assigned array has shape (6, 1, 3, 3)")
    seq = nn.Sequential(nn.BatchNorm2d(3))
    with pytest.raises(nn.ParameterShapeError) as info:
        seq[0].running_var = np.ones(4)
    assert str(info.value) == "buffer '0.running_var' has shape (3,); the assigned array has shape (4,)"


def test_loading_a_state_dict_lists_every_problem_and_writes_nothing():
    net = Net()
    before = net.state_dict()
    with pytest.raises(nn.ParameterShapeError) as info:
        net.load_state_dict({"conv1.weight": np.zeros((6, 1, 3, 3)), "fc.bias": np.zeros(3)})
    assert str(info.value) == ("cannot load the state dict into Net:\n"
                               "  missing 'conv1.bias' (6,)\n"
                               "  unexpected 'fc.bias'\n"
                               "  'conv1.weight' has shape (6, 1, 5, 5); the state dict gives (6, 1, 3, 3)")
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(value, before[name])


class NoSuper(nn.Module):
    def __init__(self):
        self.conv = nn.Conv2d(1, 2, 3)


class ReturnsNone(nn.Module):
    def forward(self, x):
        return None


@pytest.mark.parametrize("build,message", [
    (NoSuper, "NoSuper.__init__ must call super().__init__() before assigning attributes (assigning 'conv')"),
    (lambda: convc.compile(nn.Sequential(nn.ReLU())),
     "tracing a convc.nn model needs input_shape, e.g. input_shape=(1, 3, 32, 32)"),
    (lambda: nn.Conv2d(3, 8, 3, padding="full"),
     "Conv2d padding='full' must be an int, a tuple or one of 'same', 'valid', 'causal'"),
    (lambda: nn.Conv2d(3, 8, 3, groups=2),
     "Conv2d(3, 8) with groups=2: both channel counts must be positive and divide by groups"),
    (lambda: nn.Conv1d(3, 8, (3, 3)), "Conv1d kernel_size=(3, 3) must be an int >= 1 or 1 of them"),
    (lambda: ReturnsNone().to_graph((1, 2)),
     "ReturnsNone.forward must return traced tensors (results of layers and convc.nn functions), but output 0 is "
     "NoneType"),
    (lambda: nn.Sequential(nn.ReLU(), "relu"), "Sequential item 1 is a str, not a convc.nn Module"),
    (lambda: nn.relu(np.zeros(3)),
     "convc.nn functions take traced tensors: call them inside a module's forward()"),
    (lambda: nn.Sequential(nn.ReLU()).to_graph((1, 0)),
     "input shape (1, 0) must be a non-empty tuple of positive ints (batch first)"),
], ids=["no-super", "no-input-shape", "padding-mode", "groups", "kernel-rank", "returns-none", "sequential-item",
        "functional-outside-forward", "input-shape"])
def test_definition_errors(build, message):
    with pytest.raises(nn.ModelDefinitionError) as info:
        build()
    assert str(info.value) == message



def test_conv_transpose_shape_errors():
    layer = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1)
    assert layer.output_shape((1, 8, 5, 5)) == (1, 4, 10, 10)  # (5-1)*2 - 2*1 + (4-1) + 1
    with pytest.raises(nn.LayerShapeError) as info:
        nn.Sequential(layer).to_graph((1, 4, 5, 5))
    assert str(info.value) == ("ConvTranspose2d '0' expects 8 input channels but its input has shape (1, 4, 5, 5) "
                               "(4 channels from the model input 'input')")
    with pytest.raises(nn.LayerShapeError) as info:  # (1-1)*1 - 2*3 + 3 + 1 = -2
        nn.Sequential(nn.ConvTranspose2d(2, 2, 3, padding=3)).to_graph((1, 2, 1, 1))
    assert str(info.value).startswith("ConvTranspose2d '0' cannot take its input of shape (1, 2, 1, 1) "
                                      "(from the model input 'input'): ")
    with pytest.raises(nn.ModelDefinitionError) as info:
        nn.ConvTranspose2d(8, 4, 4, stride=2, output_padding=2)
    assert str(info.value) == ("ConvTranspose2d output_padding=(2, 2) must be smaller than the stride (2, 2) or the "
                               "dilation (1, 1)")
