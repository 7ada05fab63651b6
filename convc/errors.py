"""The exceptions convc raises. Every message names the node or tensor and the offending values."""
from __future__ import annotations


class ConvcError(Exception):
    """Root of every error convc raises on purpose."""


class ModelImportError(ConvcError):
    """The model could not be read or is malformed (names the node)."""


class UnsupportedOpError(ModelImportError):
    """One or more nodes use ops or attributes convc cannot compile; lists all of them at once."""

    def __init__(self, nodes: list[tuple[str, str, int, str]], constant_inputs: list[str] | None = None):
        self.nodes = nodes  # (node name, op type, opset, reason)
        # graph inputs some node needs as constants (shapes, pads, scales, clip bounds): binding them to
        # values at import (``import_onnx(..., bind=...)``) lifts those reasons
        self.constant_inputs = list(constant_inputs or [])
        lines = [f"  - node {name!r}: {op} (opset {opset}){': ' + why if why else ''}"
                 for name, op, opset, why in nodes]
        super().__init__(f"convc cannot compile {len(nodes)} node(s):\n" + "\n".join(lines))


class GraphError(ConvcError):
    """The graph breaks an invariant: shapes, dtypes, dangling edges, cycles."""


class CompileError(ConvcError):
    """Native code generation or the LLVM toolchain failed."""


class InputError(ConvcError, ValueError):
    """The arrays given to a compiled model do not match what it was compiled for."""
