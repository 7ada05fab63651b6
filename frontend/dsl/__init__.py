"""convc.nn: a PyTorch-like Python DSL that traces models into convc Graphs.

    from convc import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding="same")
            self.fc = nn.Linear(8 * 28 * 28, 10)

        def forward(self, x):
            return self.fc(nn.flatten(nn.relu(self.conv(x))))

    model = Net()
    print(model.summary((1, 1, 28, 28)))
    compiled = convc.compile(model, input_shape=(1, 1, 28, 28))
    model.to_onnx("net.onnx", (1, 1, 28, 28))
"""
from convc.frontend.dsl.activation import Dropout, Flatten, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh
from convc.frontend.dsl.containers import ModuleList, Sequential
from convc.frontend.dsl.conv import Conv1d, Conv2d, ConvTranspose2d
from convc.frontend.dsl.errors import LayerShapeError, ModelDefinitionError, ParameterShapeError
from convc.frontend.dsl.functional import (add, cat, dropout, flatten, leaky_relu, mul, relu, reshape, sigmoid,
                                           softmax, tanh)
from convc.frontend.dsl.init import manual_seed
from convc.frontend.dsl.linear import Linear
from convc.frontend.dsl.module import Module, Parameter
from convc.frontend.dsl.norm import BatchNorm1d, BatchNorm2d
from convc.frontend.dsl.pool import AvgPool1d, AvgPool2d, GlobalAvgPool, MaxPool1d, MaxPool2d
from convc.frontend.dsl.summary import LayerSummary, Summary
from convc.frontend.dsl.tracing import SymbolicTensor

__all__ = [
    # layers
    "Conv1d", "Conv2d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "GlobalAvgPool",
    "Linear", "BatchNorm1d", "BatchNorm2d", "Dropout", "ReLU", "LeakyReLU", "Sigmoid", "Tanh", "Softmax", "Flatten",
    # structure
    "Module", "Parameter", "Sequential", "ModuleList", "SymbolicTensor",
    # functional
    "relu", "sigmoid", "tanh", "leaky_relu", "softmax", "flatten", "reshape", "cat", "add", "mul", "dropout",
    # seeding, summaries, errors
    "manual_seed", "Summary", "LayerSummary",
    "ModelDefinitionError", "LayerShapeError", "ParameterShapeError",
]
