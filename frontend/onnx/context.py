"""What a converter sees of the model: one node, its parsed attributes, its inputs and the graph."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import onnx

from convc.errors import GraphError, ModelImportError
from convc.ir import Graph, TensorKind
from convc.limits import check_size
from convc.ops import OpKind, TensorType, op_def
from convc.ops.attrs import onnx_fields

A = TypeVar("A")


class Unsupported(Exception):
    """Raised by a converter: the node is valid ONNX that convc cannot compile (collected, not fatal)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class ImportState:
    """Everything shared by the nodes of one import."""

    graph: Graph
    values: dict[str, np.ndarray] = field(default_factory=dict)  # constants, added to the graph on first use
    reserved: set[str] = field(default_factory=set)               # every tensor name of the ONNX graph
    consumed: set[str] = field(default_factory=set)               # read by some node or a graph output
    needed_constants: set[str] = field(default_factory=set)       # graph inputs a converter needed as constants
    initializers: set[str] = field(default_factory=set)           # the model's initializers (its parameters and buffers)

    def is_known(self, name: str) -> bool:
        return name in self.values or self.graph.has_tensor(name)

    def type_of(self, name: str) -> TensorType:
        if name in self.values:
            v = self.values[name]
            return TensorType(v.shape, v.dtype)
        return self.graph.tensor(name).type

    def materialize(self, name: str) -> str:
        """Make sure a constant value is a tensor of the graph (it is only added when a compiled op reads it)."""
        if name in self.values and not self.graph.has_tensor(name):
            # not Graph.add_constant: np.ascontiguousarray turns 0-d scalars into shape (1,)
            data = np.require(self.values[name], requirements="C")
            self.graph.add_tensor(name, data.shape, data.dtype, TensorKind.CONSTANT, data)
        return name

    def fresh_name(self, base: str) -> str:
        """A name neither the graph nor the ONNX model uses (ops and tensors share one namespace)."""
        name, i = base, 0
        while name in self.reserved or name in self.graph.nx:
            i += 1
            name = f"{base}_{i}"
        return name


_REQUIRED = object()


@dataclass
class NodeContext:
    """One ONNX node being converted.

    ``attrs`` holds every attribute the node sets plus the schema defaults of those it does not
    (strings decoded, tensors as numpy arrays). ``inputs``/``outputs`` keep ONNX positions; an
    omitted optional one is ``""``.
    """

    state: ImportState
    node: onnx.NodeProto
    name: str
    opset: int
    attrs: dict[str, Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    input_names: tuple[str, ...] = ()   # formal names from the schema, for messages
    output_names: tuple[str, ...] = ()

    @property
    def graph(self) -> Graph:
        return self.state.graph

    @property
    def op_type(self) -> str:
        return self.node.op_type

    # --- attributes ---------------------------------------------------------------------
    def attr(self, name: str, default: Any = _REQUIRED) -> Any:
        if name in self.attrs:
            return self.attrs[name]
        if default is _REQUIRED:
            raise self.error(f"required attribute {name!r} is missing")
        return default

    def ints(self, name: str, default: Sequence[int] | None = None) -> tuple[int, ...] | None:
        v = self.attrs.get(name)
        return tuple(int(x) for x in v) if v is not None else (tuple(default) if default is not None else None)

    def parse(self, cls: type[A], **given: Any) -> A:
        """``cls`` from this node: each field declared with ``onnx_attr`` read under its ONNX name (from its
        constant input in the opsets where it is one), its declared default when the node omits it.
        ``given`` holds the fields the converter works out itself (a window's pads, say)."""
        values = dict(given)
        for f in onnx_fields(cls):
            if f.name in given:
                continue
            if f.is_input(self.opset):
                if not self.has_input(f.input):
                    if f.required:
                        raise self.error(f"required input #{f.input} {self._formal(f.input)}is missing")
                    continue
                value = np.asarray(self.constant(f.input))
                if f.type is not tuple and value.size != 1:
                    raise self.error(f"{f.onnx} must be a scalar, got shape {value.shape}")
            else:
                value = self.attr(f.onnx) if f.required else self.attr(f.onnx, f.default)
            values[f.name] = f.decode(value)
        return cls(**values)

    # --- inputs -------------------------------------------------------------------------
    def has_input(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] != ""

    def present_inputs(self) -> list[str]:
        return [t for t in self.inputs if t]

    def is_constant(self, i: int) -> bool:
        return self.has_input(i) and self.inputs[i] in self.state.values

    def constant(self, i: int) -> np.ndarray:
        """The value of input ``i``; raises Unsupported when it is computed at run time."""
        if not self.has_input(i):
            raise self.error(f"input #{i} {self._formal(i)}is missing")
        if not self.is_constant(i):
            if self.inputs[i] in self.graph.inputs:
                self.state.needed_constants.add(self.inputs[i])
            raise Unsupported(f"input #{i} {self._formal(i)}({self.inputs[i]!r}) must be a constant, "
                              "but it is computed at run time")
        return self.state.values[self.inputs[i]]

    def input_type(self, i: int) -> TensorType:
        if not self.has_input(i):
            raise self.error(f"input #{i} {self._formal(i)}is missing")
        return self.state.type_of(self.inputs[i])

    def input_shape(self, i: int) -> tuple[int, ...]:
        return self.input_type(i).shape

    def require_float(self, *indices: int) -> None:
        for i in indices or range(len(self.inputs)):
            if self.has_input(i) and self.input_type(i).dtype.kind != "f":
                raise Unsupported(f"input #{i} {self._formal(i)}has dtype {self.input_type(i).dtype}; "
                                  "convc compiles this op on float tensors only")

    # --- outputs ------------------------------------------------------------------------
    def output_used(self, i: int) -> bool:
        return i < len(self.outputs) and self.outputs[i] != "" and self.outputs[i] in self.state.consumed

    def set_output(self, i: int, value: np.ndarray) -> None:
        """Make output ``i`` a constant (folded) value."""
        if i < len(self.outputs) and self.outputs[i]:
            self.state.values[self.outputs[i]] = np.asarray(value)

    def fresh_tensor(self, suffix: str) -> str:
        return self.state.fresh_name(f"{self.name}/{suffix}")

    # --- building -----------------------------------------------------------------------
    def add_op(self, kind: OpKind, attrs: Any, inputs: Iterable[str], outputs: Sequence[str] | None = None,
               name: str | None = None) -> tuple[str, ...]:
        """Add one convc op reading ``inputs`` (tensor names) and writing ``outputs`` (default: the node's).

        When every input is a constant the op is evaluated with its numpy reference instead, so its
        outputs become constants and no op is added."""
        inputs = tuple(inputs)
        outputs = tuple(outputs) if outputs is not None else tuple(t for t in self.outputs[:1])
        in_types = [self.state.type_of(t) for t in inputs]
        try:
            out_types = op_def(kind).infer(attrs, in_types)
        except GraphError as e:
            raise self.error(str(e)) from None
        if len(out_types) != len(outputs):
            raise self.error(f"{kind.value} gives {len(out_types)} outputs, the node names {len(outputs)}")
        for t, ty in zip(outputs, out_types):
            self.check_size(ty.shape, ty.dtype, f"output {t!r}")
        if all(t in self.state.values for t in inputs):
            values = op_def(kind).reference(attrs, *[self.state.values[t] for t in inputs])
            for t, v in zip(outputs, values):
                self.state.values[t] = np.asarray(v)
            return outputs
        for t in inputs:
            self.state.materialize(t)
        op_name = self.state.fresh_name(name or self.name)
        try:
            self.graph.add_op(kind, attrs, inputs, outputs, name=op_name)
        except GraphError as e:
            raise self.error(str(e)) from None
        return outputs

    def check_size(self, shape: Sequence[int], dtype, what: str = "its output") -> None:
        """Before numpy computes a folded value: shapes taken from the model's data (ConstantOfShape,
        Expand, broadcasting, Resize scales) can ask for any number of elements."""
        try:
            check_size(what, shape, dtype, ModelImportError)
        except ModelImportError as e:
            raise self.error(str(e)) from None

    # --- errors -------------------------------------------------------------------------
    def error(self, message: str) -> ModelImportError:
        return ModelImportError(f"node {self.name!r} ({self.op_type}, opset {self.opset}): {message}")

    def _formal(self, i: int) -> str:
        return f"{self.input_names[i]!r} " if i < len(self.input_names) else ""
