"""convc: an ahead-of-time compiler for convolutional neural networks.

    import convc
    model = convc.compile("model.onnx")          # native code for this CPU
    y = model(x)                                  # numpy in, numpy out
    sess = convc.InferenceSession("model.onnx")   # onnxruntime-style API
"""
__version__ = "0.1.0"

from convc.errors import (CompileError, ConvcError, GraphError, InputError, ModelImportError,  # noqa: E402
                          UnsupportedOpError)
from convc.ir import Graph, Op, Tensor, TensorKind  # noqa: E402
from convc.compiler import compile  # noqa: E402
from convc.load import LoadError, load  # noqa: E402  (no llvmlite: loads `convc compile` libraries)
from convc.session import CompiledModel, InferenceSession  # noqa: E402
from convc.ops import OpKind  # noqa: E402
from convc.profile import profile  # noqa: E402
from convc import nn  # noqa: E402
from convc import optim  # noqa: E402
from convc.train import Trainer, TrainingError, gradcheck  # noqa: E402

__all__ = ["compile", "profile", "nn", "CompiledModel", "InferenceSession", "Graph", "Op", "Tensor", "TensorKind", "OpKind",
           "ConvcError", "ModelImportError", "UnsupportedOpError", "GraphError", "CompileError", "InputError",
           "__version__", "load", "LoadError", "optim", "Trainer", "TrainingError", "gradcheck"]
