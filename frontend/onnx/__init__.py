"""ONNX frontend: ``import_onnx(model, batch=None) -> Graph``.

Converters (ONNX node -> convc ops) and folders (numpy evaluation of all-constant nodes) are
registered by op type and opset range, one module per op family, each registered by the import
line below. Unary ops import through one converter derived from their OpDef (elementwise.py). To
claim another op: add ``@converter("OpType", since=..., until=...)`` (and
``@folder(...)`` if it also appears in shape arithmetic) to its family module, then a test in
``tests/frontend/onnx/test_onnx_<family>.py`` comparing with onnxruntime.
"""
# registration: one import line per family
from convc.frontend.onnx import conv, elementwise, folding, gemm, norm, pool, shape, softmax  # noqa: F401
from convc.frontend.onnx import conv_transpose, indexing, reduce, resize  # noqa: F401
from convc.frontend.onnx import quant  # noqa: F401
from convc.frontend.onnx.importer import import_onnx
from convc.frontend.onnx.registry import CONVERTERS, FOLDERS

__all__ = ["CONVERTERS", "FOLDERS", "import_onnx"]
