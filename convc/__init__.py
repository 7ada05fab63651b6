"""convc: an ahead-of-time compiler for convolutional neural networks.

    import convc
    model = convc.compile("model.onnx")          # native code for this CPU
    y = model(x)                                  # numpy in, numpy out
    sess = convc.InferenceSession("model.onnx")   # onnxruntime-style API
"""
import sys
import types

from convc.version import __version__  # noqa: E402

from convc.errors import (CompileError, ConvcError, GraphError, InputError, ModelImportError,  # noqa: E402
                          UnsupportedOpError)
from convc.library import compile_library  # noqa: E402  (the compiler is imported on first call)
from convc.load import LoadError, load  # noqa: E402  (no llvmlite: loads `convc compile` libraries)
from convc.session import CompiledModel, InferenceSession  # noqa: E402
from convc.quantize import quantize  # noqa: E402  (onnx is imported on first call)

__all__ = ["compile", "compile_library", "profile", "quantize", "models", "nn", "CompiledModel", "InferenceSession", "Graph", "Op", "Tensor", "TensorKind", "OpKind",
           "ConvcError", "ModelImportError", "UnsupportedOpError", "GraphError", "CompileError", "InputError",
           "__version__", "load", "LoadError", "optim", "Trainer", "TrainingError", "CheckpointError", "gradcheck", "Loss"]

# Imported on first use (PEP 562): the IR (networkx), the passes and the code generator cost about
# 0.5 s of CPU, which a process that only unpickles a compiled model or loads a library never needs
# (tests/test_light_load.py).
_LAZY = {"compile": "convc.compiler", "Graph": "convc.ir", "Op": "convc.ir", "Tensor": "convc.ir",
         "TensorKind": "convc.ir", "OpKind": "convc.ops", "profile": "convc.profile", "Loss": "convc.losses",
         "Trainer": "convc.train", "TrainingError": "convc.train", "CheckpointError": "convc.train",
         "gradcheck": "convc.train"}
_LAZY_SUBMODULES = ("nn", "optim", "models", "report", "check", "train_profile", "data", "distributed")


def __getattr__(name: str):
    """``convc.compile(...)``, ``convc.models.cifar_cnn()`` and the rest without importing them all
    up front: each name's module loads on first use."""
    import importlib
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _LAZY_SUBMODULES:
        value = importlib.import_module(f"convc.{name}")
    else:
        raise AttributeError(f"module 'convc' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | set(_LAZY_SUBMODULES))


class _Package(types.ModuleType):
    """Importing a submodule sets it as an attribute of its package; ``convc.profile`` and
    ``convc.quantize`` are functions named like their modules and must stay the functions when a
    module is imported after them."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in ("profile", "quantize"):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
