"""Every layer, in a Sequential, through the compiled path against the matching ONNX op on
onnxruntime (the exported file), convc's numpy reference and an independent numpy computation."""
from __future__ import annotations

import numpy as np
import pytest

from dsl import numpy_refs as ref
from dsl.checks import check_model

import convc
from convc import nn


def _conv_ref(layer: nn.Module, pads: tuple[int, ...]):
    return lambda x: ref.conv(x, layer.weight.astype(np.float64),
                              None if layer.bias is None else layer.bias.astype(np.float64),
                              layer.stride, pads, layer.dilation, layer.groups)


# (constructor arguments, input shape, the explicit pads the padding mode must resolve to)
CONV2D = {
    "k3": (dict(in_channels=3, out_channels=4, kernel_size=3), (1, 3, 8, 9), (0, 0, 0, 0)),
    "pad-int": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (1, 3, 8, 9), (1, 1, 1, 1)),
    "pad-tuple": (dict(in_channels=2, out_channels=3, kernel_size=(3, 5), padding=(1, 2)), (1, 2, 7, 9),
                  (1, 2, 1, 2)),
    "pad-explicit": (dict(in_channels=2, out_channels=3, kernel_size=3, padding=(0, 1, 2, 0)), (1, 2, 7, 9),
                     (0, 1, 2, 0)),
    # k=4: total 3 = dilation * (k - 1); PyTorch puts the odd pixel at the end
    "same-k4": (dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"), (1, 2, 7, 8), (1, 1, 2, 2)),
    # dilation 2, k=3: total 4 -> 2 and 2
    "same-dilated": (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=2, padding="same"), (1, 2, 9, 9),
                     (2, 2, 2, 2)),
    # stride 2 on 9x10: ceil(9/2)=5 outputs need (5-1)*2+3-9=2 rows -> (1, 1); ceil(10/2)=5 need 1 column -> (0, 1)
    "same-stride2": (dict(in_channels=2, out_channels=3, kernel_size=3, stride=2, padding="same"), (1, 2, 9, 10),
                     (1, 0, 1, 1)),
    "valid": (dict(in_channels=2, out_channels=3, kernel_size=3, padding="valid"), (1, 2, 7, 8), (0, 0, 0, 0)),
    # causal: top (3-1)*1 = 2 and left (3-1)*2 = 4, nothing at the bottom or right
    "causal": (dict(in_channels=2, out_channels=3, kernel_size=3, dilation=(1, 2), padding="causal"), (1, 2, 7, 9),
               (2, 4, 0, 0)),
    "stride-dilation": (dict(in_channels=2, out_channels=4, kernel_size=3, stride=(2, 1), dilation=2, padding=2),
                        (2, 2, 9, 8), (2, 2, 2, 2)),
    "groups2": (dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, padding=1), (1, 4, 6, 7), (1, 1, 1, 1)),
    "depthwise-nobias": (dict(in_channels=4, out_channels=4, kernel_size=3, groups=4, bias=False), (2, 4, 6, 7),
                         (0, 0, 0, 0)),
}

CONV1D = {
    "k3": (dict(in_channels=3, out_channels=4, kernel_size=3), (1, 3, 16), (0, 0)),
    "causal-k3": (dict(in_channels=3, out_channels=4, kernel_size=3, padding="causal"), (1, 3, 16), (2, 0)),
    # (k-1)*dilation = 2*4 = 8 on the left
    "causal-k3-d4": (dict(in_channels=3, out_channels=4, kernel_size=3, dilation=4, padding="causal"), (1, 3, 20),
                     (8, 0)),
    "causal-k2-d8": (dict(in_channels=2, out_channels=2, kernel_size=2, dilation=8, padding="causal"), (2, 2, 24),
                     (8, 0)),
    "stride2-pad2": (dict(in_channels=2, out_channels=3, kernel_size=5, stride=2, padding=2), (1, 2, 17), (2, 2)),
    "same-k4": (dict(in_channels=2, out_channels=3, kernel_size=4, padding="same"), (1, 2, 11), (1, 2)),
    "pad-explicit": (dict(in_channels=2, out_channels=3, kernel_size=3, padding=(3, 1)), (1, 2, 9), (3, 1)),
    "groups2-nobias": (dict(in_channels=4, out_channels=4, kernel_size=3, groups=2, bias=False), (1, 4, 10), (0, 0)),
}


@pytest.mark.parametrize("kwargs,shape,pads", CONV2D.values(), ids=CONV2D.keys())
def test_conv2d(rng, kwargs, shape, pads):
    layer = nn.Conv2d(**kwargs)
    model = nn.Sequential(layer)
    conv = model.to_graph(shape).ops()[0]
    assert conv.attrs.pads == pads
    check_model(model, rng.standard_normal(shape), onnx_ops=["Conv"], numpy_ref=_conv_ref(layer, pads))


@pytest.mark.parametrize("kwargs,shape,pads", CONV1D.values(), ids=CONV1D.keys())
def test_conv1d(rng, kwargs, shape, pads):
    layer = nn.Conv1d(**kwargs)
    model = nn.Sequential(layer)
    assert model.to_graph(shape).ops()[0].attrs.pads == pads
    check_model(model, rng.standard_normal(shape), onnx_ops=["Conv"], numpy_ref=_conv_ref(layer, pads))


CONV_TRANSPOSE2D = {
    "k3": (dict(in_channels=4, out_channels=6, kernel_size=3), (1, 4, 5, 6)),
    # DCGAN upsampling: (h-1)*2 - 2 + 4 = 2h
    "k4s2p1": (dict(in_channels=3, out_channels=2, kernel_size=4, stride=2, padding=1), (2, 3, 4, 5)),
    "output-padding": (dict(in_channels=3, out_channels=2, kernel_size=3, stride=2, padding=1, output_padding=1),
                       (1, 3, 4, 4)),
    "groups-dilation": (dict(in_channels=4, out_channels=6, kernel_size=3, groups=2, dilation=2, bias=False),
                        (1, 4, 5, 5)),
    "rectangular": (dict(in_channels=2, out_channels=3, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2)),
                    (1, 2, 4, 6)),
}


@pytest.mark.parametrize("kwargs,shape", CONV_TRANSPOSE2D.values(), ids=CONV_TRANSPOSE2D.keys())
def test_conv_transpose2d(rng, kwargs, shape):
    layer = nn.ConvTranspose2d(**kwargs)
    model = nn.Sequential(layer)
    assert model.to_graph(shape).tensor("output").shape == layer.output_shape(shape)

    def expected(x):
        return ref.conv_transpose2d(x, layer.weight.astype(np.float64),
                                    None if layer.bias is None else layer.bias.astype(np.float64), layer.stride,
                                    layer.padding, layer.output_padding, layer.dilation, layer.groups)
    check_model(model, rng.standard_normal(shape), onnx_ops=["ConvTranspose"], numpy_ref=expected)


def test_causal_conv1d_output_ignores_the_future(rng):
    model = nn.Sequential(nn.Conv1d(1, 2, 3, dilation=2, padding="causal"))
    x = rng.standard_normal((1, 1, 12)).astype(np.float32)
    compiled = convc.compile(model, input_shape=x.shape)
    later = x.copy()
    later[..., 7:] = 5.0
    assert compiled(x).shape == (1, 2, 12)  # causal padding keeps the length
    np.testing.assert_array_equal(compiled(later)[..., :7], compiled(x)[..., :7])
    assert not np.array_equal(compiled(later)[..., 7:], compiled(x)[..., 7:])


# (layer, input shape, numpy reference or None, ONNX op)
def _pools():
    return {
        "max2d-k2": (nn.MaxPool2d(2), (2, 3, 8, 9), lambda x: ref.pool(x, "max", (2, 2), (2, 2), (0, 0)), "MaxPool"),
        "max2d-k3s2p1": (nn.MaxPool2d(3, stride=2, padding=1), (1, 3, 9, 8),
                         lambda x: ref.pool(x, "max", (3, 3), (2, 2), (1, 1)), "MaxPool"),
        "max2d-dilated": (nn.MaxPool2d(2, stride=1, dilation=2), (1, 2, 7, 7),
                          lambda x: ref.pool(x, "max", (2, 2), (1, 1), (0, 0), (2, 2)), "MaxPool"),
        "max2d-ceil": (nn.MaxPool2d(3, stride=2, ceil_mode=True), (1, 2, 8, 8), None, "MaxPool"),
        "max1d-k3s2p1": (nn.MaxPool1d(3, stride=2, padding=1), (2, 3, 11),
                         lambda x: ref.pool(x, "max", (3,), (2,), (1,)), "MaxPool"),
        "avg2d-k2": (nn.AvgPool2d(2), (2, 3, 8, 8), lambda x: ref.pool(x, "avg", (2, 2), (2, 2), (0, 0)),
                     "AveragePool"),
        # PyTorch's default counts the padded zeros: every window divides by 9
        "avg2d-k3s2p1": (nn.AvgPool2d(3, stride=2, padding=1), (1, 2, 9, 8),
                         lambda x: ref.pool(x, "avg", (3, 3), (2, 2), (1, 1)), "AveragePool"),
        "avg2d-exclude-pad": (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (1, 2, 9, 8),
                              lambda x: ref.pool(x, "avg", (3, 3), (2, 2), (1, 1), count_include_pad=False),
                              "AveragePool"),
        "avg2d-ceil": (nn.AvgPool2d(3, stride=2, ceil_mode=True), (1, 2, 8, 8), None, "AveragePool"),
        "avg1d-k4s2p2": (nn.AvgPool1d(4, stride=2, padding=2), (1, 3, 13),
                         lambda x: ref.pool(x, "avg", (4,), (2,), (2,)), "AveragePool"),
        "gap2d": (nn.GlobalAvgPool(), (2, 3, 5, 6), lambda x: x.mean(axis=(2, 3), keepdims=True),
                  "GlobalAveragePool"),
        "gap1d": (nn.GlobalAvgPool(), (2, 3, 7), lambda x: x.mean(axis=2, keepdims=True), "GlobalAveragePool"),
    }


@pytest.mark.parametrize("case", _pools().keys())
def test_pool(rng, case):
    layer, shape, numpy_ref, op_type = _pools()[case]
    check_model(nn.Sequential(layer), rng.standard_normal(shape), onnx_ops=[op_type], numpy_ref=numpy_ref)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch", [1, 3])
def test_linear(rng, bias, batch):
    layer = nn.Linear(7, 5, bias=bias)
    assert layer.weight.shape == (5, 7)  # (out, in) like PyTorch
    gemm = nn.Sequential(layer).to_graph((batch, 7)).ops()[0]
    assert gemm.attrs.trans_b and not gemm.attrs.trans_a
    expected = lambda x: x @ layer.weight.T.astype(np.float64) + (layer.bias if bias else 0.0)  # noqa: E731
    check_model(nn.Sequential(layer), rng.standard_normal((batch, 7)), onnx_ops=["Gemm"], numpy_ref=expected)


def _randomize_batch_norm(layer: nn.Module, rng: np.random.Generator) -> None:
    c = layer.num_features
    layer.running_mean = rng.standard_normal(c)
    layer.running_var = rng.uniform(0.5, 2.0, c)
    if layer.affine:
        layer.weight = rng.uniform(0.5, 1.5, c)
        layer.bias = rng.standard_normal(c)


@pytest.mark.parametrize("layer_type,shape,affine", [
    (nn.BatchNorm1d, (4, 6), True),
    (nn.BatchNorm1d, (2, 6, 9), True),
    (nn.BatchNorm2d, (2, 5, 4, 6), True),
    (nn.BatchNorm2d, (1, 5, 4, 6), False),
], ids=["bn1d-NC", "bn1d-NCL", "bn2d", "bn2d-no-affine"])
def test_batch_norm(rng, layer_type, shape, affine):
    layer = layer_type(shape[1], eps=1e-3, affine=affine)
    _randomize_batch_norm(layer, rng)
    one, zero = np.ones(shape[1]), np.zeros(shape[1])
    expected = lambda x: ref.batch_norm(x, layer.weight if affine else one, layer.bias if affine else zero,  # noqa: E731
                                        layer.running_mean, layer.running_var, 1e-3)
    check_model(nn.Sequential(layer), rng.standard_normal(shape), onnx_ops=["BatchNormalization"],
                numpy_ref=expected)


ACTIVATIONS = {
    "relu": (nn.ReLU(), "Relu", lambda x: np.maximum(x, 0)),
    "leaky-relu": (nn.LeakyReLU(0.2), "LeakyRelu", lambda x: np.where(x >= 0, x, 0.2 * x)),
    "sigmoid": (nn.Sigmoid(), "Sigmoid", lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (nn.Tanh(), "Tanh", np.tanh),
    "dropout": (nn.Dropout(0.3), "Dropout", lambda x: x),  # the identity at inference
}


@pytest.mark.parametrize("case", ACTIVATIONS.keys())
@pytest.mark.parametrize("shape", [(2, 5), (1, 3, 4, 5)], ids=["2d", "4d"])
def test_activation(rng, case, shape):
    layer, op_type, expected = ACTIVATIONS[case]
    check_model(nn.Sequential(layer), 3 * rng.standard_normal(shape), onnx_ops=[op_type], numpy_ref=expected)


@pytest.mark.parametrize("dim,shape,axis", [(1, (3, 10), 1), (-1, (2, 4, 6), 2), (1, (2, 4, 6), 1)],
                         ids=["classes", "last-of-3d", "channels-of-3d"])
def test_softmax(rng, dim, shape, axis):
    check_model(nn.Sequential(nn.Softmax(dim)), 4 * rng.standard_normal(shape), onnx_ops=["Softmax"],
                numpy_ref=lambda x: ref.softmax(x, axis))


@pytest.mark.parametrize("start,end,shape,out,op_type", [
    (1, -1, (2, 3, 4, 5), (2, 60), "Flatten"),
    (2, -1, (2, 3, 4, 5), (2, 3, 20), "Reshape"),
    (1, 2, (2, 3, 4, 5), (2, 12, 5), "Reshape"),
], ids=["default", "spatial", "middle"])
def test_flatten(rng, start, end, shape, out, op_type):
    model = nn.Sequential(nn.Flatten(start, end))
    assert model.to_graph(shape).tensor("output").shape == out
    check_model(model, rng.standard_normal(shape), onnx_ops=[op_type], numpy_ref=lambda x: x.reshape(out))


def test_flatten_of_the_batch_dimension_is_batch_specific(rng):
    """start_dim=0 folds the batch in: the exported Reshape keeps the concrete size."""
    check_model(nn.Sequential(nn.Flatten(0)), rng.standard_normal((2, 3, 4)), onnx_ops=["Reshape"],
                numpy_ref=lambda x: x.reshape(-1), other_batch=None)


def test_sequential_of_every_family(rng):
    """A LeNet-style stack: the exported node types follow the layers one to one."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding="same"), nn.BatchNorm2d(4), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3), nn.Tanh(), nn.AvgPool2d(2), nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(6 * 2 * 2, 8), nn.Sigmoid(), nn.Linear(8, 3), nn.Softmax(1))
    _randomize_batch_norm(model[1], rng)
    check_model(model, rng.standard_normal((2, 1, 12, 12)), onnx_ops=[
        "Conv", "BatchNormalization", "LeakyRelu", "MaxPool", "Conv", "Tanh", "AveragePool", "Flatten", "Dropout",
        "Gemm", "Sigmoid", "Gemm", "Softmax"])
