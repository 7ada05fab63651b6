"""ONNX spelling of attribute dataclasses, declared once on their fields.

A field declared with ``onnx_attr`` is an ONNX attribute (or, from the opset ``input_since`` on, a
constant input at position ``input``) of the op using the dataclass. Its ONNX name (the field's
name unless given) and its default are written there and nowhere else: the importer parses a node
with ``NodeContext.parse``, the exporter and the tests' single-node models write one with
``onnx_spelling``. Fields without it (a fused epilogue, a layout) are convc's own and not written.

The value's ONNX form follows the field's annotation: ``float``, ``int``, ``str``, ``bool`` (an int
0/1 in ONNX) or ``tuple[int, ...]`` (ints). As an input, a float is a float32 scalar and a tuple
of ints an int64 vector.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from dataclasses import MISSING, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class OnnxField:
    name: str                # the dataclass field
    onnx: str                # the ONNX attribute (and input) name
    type: Any                # float, int, str, bool or tuple (of ints)
    default: Any = MISSING   # MISSING: the attribute is required
    input: int | None = None  # from opset ``input_since`` on, this constant input instead of an attribute
    input_since: int = 0

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def decode(self, value: Any) -> Any:
        """An attribute or constant-input value in the field's Python type."""
        if self.type is tuple:
            return tuple(int(v) for v in np.asarray(value).reshape(-1))
        if isinstance(value, np.ndarray):
            value = value.reshape(-1)[0]
        return self.type(value) if self.type is not bool else bool(int(value))

    def encode(self, value: Any) -> Any:
        """The field's value as an ONNX attribute."""
        if self.type is tuple:
            return [int(v) for v in value]
        if self.type is bool:
            return int(value)
        return self.type(value)

    def encode_input(self, value: Any) -> np.ndarray:
        """The field's value as a constant input."""
        if self.type is tuple:
            return np.array(value, dtype=np.int64)
        return np.array(value, dtype=np.float32 if self.type is float else np.int64)

    def is_input(self, opset: int) -> bool:
        return self.input is not None and opset >= self.input_since


def onnx_attr(default: Any = MISSING, *, name: str | None = None, input: int | None = None,
              input_since: int = 0) -> Any:
    """A dataclass field that is an ONNX attribute named ``name`` (default: the field's name), or the
    constant input ``input`` from opset ``input_since`` on."""
    meta = {"onnx": (name, input, input_since)}
    return dataclasses.field(default=default, metadata=meta)


_TYPES = {float: float, int: int, str: str, bool: bool}


@functools.cache
def onnx_fields(cls: type) -> tuple[OnnxField, ...]:
    """The fields of ``cls`` declared with ``onnx_attr``, in declaration order."""
    if not dataclasses.is_dataclass(cls):
        return ()
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "onnx" not in f.metadata:
            continue
        name, input, since = f.metadata["onnx"]
        hint = hints[f.name]
        t = tuple if typing.get_origin(hint) is tuple else _TYPES.get(hint)
        if t is None:
            raise TypeError(f"{cls.__name__}.{f.name}: ONNX attributes are float, int, str, bool or tuple[int, ...], "
                            f"not {hint}")
        out.append(OnnxField(f.name, name or f.name, t, f.default, input, since))
    return tuple(out)


def onnx_spelling(attrs: Any, opset: int) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """(ONNX attributes, constant inputs by position) of the declared fields of ``attrs`` at ``opset``.

    Every declared attribute is written, defaults included, so a model does not depend on a reader's
    defaults."""
    attributes: dict[str, Any] = {}
    inputs: dict[int, np.ndarray] = {}
    for f in onnx_fields(type(attrs)):
        value = getattr(attrs, f.name)
        if f.is_input(opset):
            inputs[f.input] = f.encode_input(value)
        else:
            attributes[f.onnx] = f.encode(value)
    return attributes, inputs
