"""The differential harness over every model the other tests and the examples build: convc.models'
LeNet-5 and CIFAR CNN, the training nets of tests/train, the real-net patterns of
tests/test_real_nets.py (a TCN, a DCGAN generator, a depthwise-separable net) and the DSL examples
(WaveNet, DCGAN), at batch 1 and at batch 16, inference and, where every op has a gradient, the
training step."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import convc
from convc import models
from tests.differential import harness
from tests.test_real_nets import dcgan_generator, depthwise_separable_net, temporal_conv_net
from tests.train import nets

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wavenet():
    convc.nn.manual_seed(0)
    return example("wavenet_tcn").WaveNet(channels=8, skip_channels=12)


def dcgan_dsl():
    convc.nn.manual_seed(0)
    return example("dcgan_generator").Generator(latent=16, features=8)


# name -> (model factory, input shape without the batch, loss or None when it does not train)
MODELS = {
    "lenet5": (models.lenet5, (1, 28, 28), None),  # ends in Softmax: inference only
    "cifar_cnn": (models.cifar_cnn, (3, 32, 32), "cross_entropy"),
    "digits_cnn": (lambda: nets.digits_cnn(dropout=0.0, c1=6, c2=10), (1, 8, 8), "cross_entropy"),
    "digits_cnn_dropout": (lambda: nets.digits_cnn(c1=6, c2=10), (1, 8, 8), "cross_entropy"),
    "residual_net": (nets.residual_net, (2, 6, 6), "cross_entropy"),
    "mlp": (nets.mlp, (3, 2, 2), "mse"),
    "pool_net": (nets.pool_net, (1, 5, 5), "cross_entropy"),
    "autoencoder": (nets.autoencoder, (1, 8, 8), "bce"),
    "temporal_conv_net": (temporal_conv_net, (4, 100), None),
    "dcgan_generator": (dcgan_generator, (32, 1, 1), None),
    "depthwise_separable_net": (depthwise_separable_net, (3, 32, 32), None),  # ReLU6 (Clip)
    "wavenet_example": (wavenet, (1, 64), "mse"),
    "dcgan_example": (dcgan_dsl, (16, 1, 1), None),
}


@pytest.fixture(autouse=True)
def arena_check(monkeypatch):
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.slow
def test_inference(name, batch):
    factory, shape, _ = MODELS[name]
    harness.inference(factory(), (batch,) + shape, threads=2, case=f"{name} batch {batch}").check()


TRAINED = [n for n, (_, _, loss) in MODELS.items() if loss]
QUICK = {("cifar_cnn", 16), ("digits_cnn_dropout", 16), ("residual_net", 1)}  # `-m "not slow"`; CI runs all


@pytest.mark.parametrize("name,batch", [(n, b) if (n, b) in QUICK else pytest.param(n, b, marks=pytest.mark.slow)
                                        for n in TRAINED for b in (1, 16)])
def test_training_step(name, batch):
    factory, shape, loss = MODELS[name]
    model = factory()
    harness.training(model, (batch,) + shape, loss=loss, threads=2, case=f"{name} batch {batch}").check()
    harness.training(model, (batch,) + shape, loss=loss, threads=1, case=f"{name} batch {batch} momentum",
                     optimizer=convc.optim.SGD(0.05, momentum=0.9, nesterov=True)).check()
