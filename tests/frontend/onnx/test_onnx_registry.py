"""The converter registry: opset ranges, duplicates, and coverage of the ops convc claims."""
from __future__ import annotations

import onnx
import pytest

from convc.frontend.onnx import CONVERTERS, FOLDERS
from convc.frontend.onnx.registry import Registry

LAST = onnx.defs.onnx_opset_version()
COMPILED = ["Conv", "Gemm", "MatMul", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "MaxPool", "AveragePool",
            "GlobalAveragePool", "GlobalMaxPool", "BatchNormalization", "Flatten", "Reshape", "Add", "Mul", "Sum",
            "Concat", "Dropout", "Softmax", "Identity", "Floor", "Ceil", "Round", "Expand", "Gather", "Where"]
FOLDED = ["Constant", "Gather", "Unsqueeze", "Squeeze", "Concat", "ConstantOfShape", "Cast", "Slice", "Reshape",
          "Range", "Add", "Sub", "Mul", "Div", "Equal", "Where", "Expand", "Transpose", "Identity", "Floor", "Ceil",
          "Round", "Neg"]


def _exists(op_type: str, opset: int) -> bool:
    try:
        onnx.defs.get_schema(op_type, opset, "")
        return True
    except onnx.defs.SchemaError:
        return False


@pytest.mark.parametrize("op_type", COMPILED)
def test_every_compiled_op_has_a_converter_in_every_opset(op_type):
    missing = [v for v in range(7, LAST + 1) if _exists(op_type, v) and CONVERTERS.lookup(op_type, v) is None]
    assert not missing


@pytest.mark.parametrize("op_type", FOLDED)
def test_every_folded_op_has_a_folder_in_every_opset(op_type):
    missing = [v for v in range(7, LAST + 1) if _exists(op_type, v) and FOLDERS.lookup(op_type, v) is None]
    assert not missing
    assert CONVERTERS.lookup("Shape", LAST) is not None  # Shape never needs its input's values


def test_opset_ranges_select_the_converter():
    assert CONVERTERS.lookup("Softmax", 12) is not CONVERTERS.lookup("Softmax", 13)
    assert CONVERTERS.lookup("Softmax", 7) is CONVERTERS.lookup("Softmax", 12)
    assert FOLDERS.lookup("Unsqueeze", 12) is not FOLDERS.lookup("Unsqueeze", 13)
    assert CONVERTERS.lookup("Conv", 5) is None and CONVERTERS.lookup("NoSuchOp", 13) is None
    assert CONVERTERS.lookup("Add", 6) is not CONVERTERS.lookup("Add", 7)  # opset 6 spelled broadcasting apart


def test_overlapping_registration_is_an_error():
    reg: Registry = Registry("converter")
    reg.register("Foo", 7, 12)(lambda ctx: None)
    reg.register("Foo", 13)(lambda ctx: None)
    with pytest.raises(RuntimeError, match=r"converter for Foo opsets 12..latest .* overlaps 7..12"):
        reg.register("Foo", 12)(lambda ctx: None)
    with pytest.raises(RuntimeError, match="overlaps"):
        reg.register("Foo", 7, 7)(lambda ctx: None)
    with pytest.raises(ValueError, match="empty"):
        reg.register("Bar", 9, 8)
