"""ONNX frontend: ``import_onnx(model, batch=None) -> Graph``.

Converters and folders register themselves by op type and opset range; each family is one
module, registered by the import line below.
"""
# registration: one import line per family
from convc.frontend.onnx import conv, elementwise, folding, gemm, norm, pool, shape, softmax  # noqa: F401
from convc.frontend.onnx.importer import import_onnx
from convc.frontend.onnx.registry import CONVERTERS, FOLDERS

__all__ = ["CONVERTERS", "FOLDERS", "import_onnx"]
