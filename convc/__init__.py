"""convc: an ahead-of-time compiler for convolutional neural networks.

    import convc
    model = convc.compile("model.onnx")          # native code for this CPU
    y = model(x)                                  # numpy in, numpy out
    sess = convc.InferenceSession("model.onnx")   # onnxruntime-style API
"""
from convc.version import __version__  # noqa: E402

from convc.errors import (CompileError, ConvcError, GraphError, InputError, ModelImportError,  # noqa: E402
                          UnsupportedOpError)
from convc.ir import Graph, Op, Tensor, TensorKind  # noqa: E402
from convc.compiler import compile  # noqa: E402
from convc.library import compile_library  # noqa: E402
from convc.load import LoadError, load  # noqa: E402  (no llvmlite: loads `convc compile` libraries)
from convc.session import CompiledModel, InferenceSession  # noqa: E402
from convc.ops import OpKind  # noqa: E402
from convc.profile import profile  # noqa: E402
from convc.quantize import quantize  # noqa: E402  (onnx is imported on first call)
from convc import nn  # noqa: E402
from convc import optim  # noqa: E402
from convc.losses import Loss  # noqa: E402
from convc.train import CheckpointError, Trainer, TrainingError, gradcheck  # noqa: E402

__all__ = ["compile", "compile_library", "profile", "quantize", "models", "nn", "CompiledModel", "InferenceSession", "Graph", "Op", "Tensor", "TensorKind", "OpKind",
           "ConvcError", "ModelImportError", "UnsupportedOpError", "GraphError", "CompileError", "InputError",
           "__version__", "load", "LoadError", "optim", "Trainer", "TrainingError", "CheckpointError", "gradcheck", "Loss"]

# imported on first use (PEP 562)
_LAZY_SUBMODULES = ("models", "report", "check", "train_profile", "data", "distributed")


def __getattr__(name: str):
    """``convc.models.cifar_cnn()`` without ``import convc.models``: submodules load on first use."""
    if name in _LAZY_SUBMODULES:
        import importlib
        return importlib.import_module(f"convc.{name}")
    raise AttributeError(f"module 'convc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY_SUBMODULES))
