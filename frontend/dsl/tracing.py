"""Tracing: ``forward`` runs once on symbolic tensors and every operation adds an op to a convc Graph.

A ``SymbolicTensor`` is a tensor name in the graph being built plus where it came from (the layer
or function that produced it), so shape errors can say "after 'flatten'". The ``Tracer`` owns the
graph, knows every module's dotted name from the root, names ops after their layer
("block1.conv"), turns parameters into constants named like the state dict ("block1.conv.weight")
and records one row per layer call for ``summary``.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import networkx as nx
import numpy as np

from convc.errors import GraphError
from convc.frontend.dsl.errors import LayerShapeError, ModelDefinitionError
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind, op_def

if TYPE_CHECKING:
    from convc.frontend.dsl.module import Module

class SymbolicTensor:
    """A tensor of the graph being traced: its name, shape and dtype, and the layer that produced it.

    Arithmetic (``+``, ``-``, ``*``, ``/``) and the methods below add ops to the graph; Python values and
    numpy arrays on the other side become constants. There is no value, so ``if x:`` is an error."""

    __array_ufunc__ = None  # numpy must defer to our reflected operators, not broadcast over us
    __slots__ = ("tracer", "name", "origin")

    def __init__(self, tracer: Tracer, name: str, origin: str | None):
        self.tracer = tracer
        self.name = name
        self.origin = origin  # the layer / function / parameter that produced it; None for a graph input

    @property
    def shape(self) -> tuple[int, ...]:
        return self.tracer.graph.tensor(self.name).shape

    @property
    def dtype(self) -> np.dtype:
        return self.tracer.graph.tensor(self.name).dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def after(self) -> str:
        """Where the tensor comes from, for error messages: "after 'flatten'"."""
        return f"after {self.origin!r}" if self.origin is not None else f"from the model input {self.name!r}"

    # --- arithmetic ---------------------------------------------------------------------
    def __add__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.ADD, NoAttrs(), [self, other], "add")

    def __radd__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.ADD, NoAttrs(), [other, self], "add")

    def __mul__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.MUL, NoAttrs(), [self, other], "mul")

    def __rmul__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.MUL, NoAttrs(), [other, self], "mul")

    def __neg__(self) -> SymbolicTensor:
        # convc has no Neg op: multiplying by -1 is exact
        return self.tracer.emit(OpKind.MUL, NoAttrs(), [self, -1.0], "neg")

    def __sub__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.SUB, NoAttrs(), [self, other], "sub")

    def __rsub__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.SUB, NoAttrs(), [other, self], "sub")

    def __truediv__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.DIV, NoAttrs(), [self, other], "div")

    def __rtruediv__(self, other: Any) -> SymbolicTensor:
        return self.tracer.emit(OpKind.DIV, NoAttrs(), [other, self], "div")

    # --- methods mirroring the functional API -------------------------------------------
    def reshape(self, *shape: int | Sequence[int]) -> SymbolicTensor:
        from convc.frontend.dsl.functional import reshape
        return reshape(self, *shape)

    view = reshape

    def flatten(self, start_dim: int = 1, end_dim: int = -1) -> SymbolicTensor:
        from convc.frontend.dsl.functional import flatten
        return flatten(self, start_dim, end_dim)

    def relu(self) -> SymbolicTensor:
        from convc.frontend.dsl.functional import relu
        return relu(self)

    def sigmoid(self) -> SymbolicTensor:
        from convc.frontend.dsl.functional import sigmoid
        return sigmoid(self)

    def tanh(self) -> SymbolicTensor:
        from convc.frontend.dsl.functional import tanh
        return tanh(self)

    def softmax(self, dim: int = -1) -> SymbolicTensor:
        from convc.frontend.dsl.functional import softmax
        return softmax(self, dim)

    # --- things a traced tensor cannot do -----------------------------------------------
    def __bool__(self) -> bool:
        raise ModelDefinitionError(f"the truth value of traced tensor {self.name!r} is unknown while tracing: "
                                   "forward() cannot branch on tensor values")

    def __iter__(self):
        raise ModelDefinitionError(f"traced tensor {self.name!r} cannot be iterated or indexed")

    def __repr__(self) -> str:
        return f"SymbolicTensor({self.name!r}, shape={self.shape}, {self.after()})"


@dataclass
class LayerCall:
    """One row of the summary: a leaf layer call or a functional op outside any leaf layer."""
    name: str
    type: str
    ops: list[str] = field(default_factory=list)
    params: int = 0  # trainable parameters this call reads for the first time in the trace
    output_shape: tuple[int, ...] | None = None


@dataclass
class _Scope:
    module: Module
    name: str      # dotted name from the root ("" for the root)
    display: str   # the name used for ops and messages (the root gets its lower-cased type name)
    leaf: bool     # a built-in layer: its ops are named after it and its params counted in its row
    call: LayerCall | None

    @property
    def label(self) -> str:
        return f"{type(self.module).__name__} {self.display!r}"


def dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


class _Active(threading.local):
    def __init__(self) -> None:
        self.stack: list[Tracer] = []  # per thread: tracing in two threads at once must not mix


class Tracer:
    """Builds one Graph from one call of a root module's forward."""

    _active: ClassVar[_Active] = _Active()

    def __init__(self, root: Module, graph_name: str):
        self.root = root
        self.graph = Graph(graph_name)
        self.rows: list[LayerCall] = []
        self._names: dict[int, str] = {}
        for name, m in root.named_modules():
            self._names.setdefault(id(m), name)
        self._anonymous: list[Module] = []
        self._scopes: list[_Scope] = []
        self._params: dict[tuple[int, str], str] = {}  # (module id, attribute) -> constant name
        self._trainable: dict[str, int] = {}           # constant name -> size, for trainable parameters
        self._charged: set[str] = set()
        self.graph.metadata["parameters"] = []  # constant names that are trainable parameters
        self.graph.metadata["buffers"] = []     # constant names that are buffers (BN running statistics)

    @classmethod
    def current(cls) -> Tracer | None:
        stack = cls._active.stack
        return stack[-1] if stack else None

    def __enter__(self) -> Tracer:
        Tracer._active.stack.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        Tracer._active.stack.remove(self)

    # --- graph boundary -----------------------------------------------------------------
    def add_input(self, name: str, shape: tuple[int, ...]) -> SymbolicTensor:
        self.graph.add_tensor(name, shape, np.float32, TensorKind.INPUT)
        return SymbolicTensor(self, name, None)

    def finish(self, result: Any) -> Graph:
        """Make the forward result (a tensor or a tuple of tensors) the graph outputs, named "output"."""
        outs = list(result) if isinstance(result, (tuple, list)) else [result]
        if not outs:
            raise ModelDefinitionError(f"{type(self.root).__name__}.forward returned no tensor")
        names: list[str] = []
        for i, o in enumerate(outs):
            if not isinstance(o, SymbolicTensor) or o.tracer is not self:
                raise ModelDefinitionError(
                    f"{type(self.root).__name__}.forward must return traced tensors (results of layers and convc.nn "
                    f"functions), but output {i} is {type(o).__name__}")
            name = o.name
            if self.graph.tensor(name).kind is not TensorKind.ACTIVATION or name in names:
                # an input, a parameter or a repeated output gets its own tensor
                name = self.graph.add_op(OpKind.IDENTITY, NoAttrs(), [name], name="output_identity").outputs[0]
            names.append(name)
        final = []
        for i, name in enumerate(names):
            new = self.graph.fresh_name("output" if len(names) == 1 else f"output{i}")
            rename_tensor(self.graph, name, new)
            final.append(new)
        self.graph.outputs = final
        self.graph.verify()
        return self.graph

    # --- modules and parameters ---------------------------------------------------------
    def module_name(self, module: Module) -> str:
        name = self._names.get(id(module))
        if name is None:  # created inside forward rather than assigned as an attribute
            prefix = self._scopes[-1].name if self._scopes else ""
            name = self._unique(dotted(prefix, type(module).__name__.lower()))
            self._names[id(module)] = name
            self._anonymous.append(module)  # keeps its id from being reused by a later temporary
        return name

    def _unique(self, base: str) -> str:
        taken = set(self._names.values())
        name, i = base, 0
        while name in taken or name in self.graph.nx:
            i += 1
            name = f"{base}_{i}"
        return name

    def call_module(self, module: Module, args: tuple, kwargs: dict) -> Any:
        name = self.module_name(module)
        leaf = module._leaf and not any(s.leaf for s in self._scopes)
        display = name or type(module).__name__.lower()
        call = LayerCall(display, type(module).__name__) if leaf else None
        if call is not None:
            self.rows.append(call)
        self._scopes.append(_Scope(module, name, display, leaf, call))
        try:
            out = module.forward(*args, **kwargs)
        finally:
            self._scopes.pop()
        if call is not None and isinstance(out, SymbolicTensor):
            call.output_shape = out.shape
        return out

    def param(self, module: Module, attr: str) -> SymbolicTensor:
        """The constant holding ``module.<attr>`` (a parameter or a buffer), added on first use."""
        key = (id(module), attr)
        name = self._params.get(key)
        if name is None:
            trainable = attr in module._parameters
            data = module._parameters[attr] if trainable else module._buffers[attr]
            name = self.graph.fresh_name(dotted(self.module_name(module), attr))
            self.graph.add_constant(name, np.array(data, dtype=np.float32))
            self.graph.metadata["parameters" if trainable else "buffers"].append(name)
            if trainable:
                self._trainable[name] = int(data.size)
            self._params[key] = name
        kind = "parameter" if name in self._trainable else "buffer"
        return SymbolicTensor(self, name, f"{kind} {name}")

    def as_tensor(self, value: Any, hint: str) -> SymbolicTensor:
        """A traced tensor as is; a Python number or numpy array as a float32 constant."""
        if isinstance(value, SymbolicTensor):
            if value.tracer is not self:
                raise ModelDefinitionError(f"tensor {value.name!r} belongs to another trace")
            return value
        if isinstance(value, (int, float, np.ndarray, np.number)) and not isinstance(value, bool):
            prefix = self._scopes[-1].display if self._scopes and self._scopes[-1].name else ""
            name = self.graph.fresh_name(dotted(prefix, hint))
            self.graph.add_constant(name, np.asarray(value, dtype=np.float32))
            return SymbolicTensor(self, name, f"constant {name}")
        raise ModelDefinitionError(f"cannot use a {type(value).__name__} as a tensor while tracing")

    # --- ops ------------------------------------------------------------------------------
    def emit(self, kind: OpKind, attrs: Any, inputs: Sequence[Any], fn: str) -> SymbolicTensor:
        """Add one op. Inside a built-in layer the op is named after the layer ("block1.conv");
        elsewhere after the function ``fn`` in the current module ("block1.add")."""
        scope = self._scopes[-1] if self._scopes else None
        tensors = [self.as_tensor(x, "const") for x in inputs]
        name, label, origin = self._naming(fn)
        try:
            op_def(kind).infer(attrs, [self.graph.tensor(t.name).type for t in tensors])
        except GraphError as e:
            raise LayerShapeError(f"{label} cannot take {describe(tensors)}: {e}") from None
        op = self.graph.add_op(kind, attrs, [t.name for t in tensors], name=name)
        call = next((s.call for s in reversed(self._scopes) if s.call is not None), None)
        if call is None:
            call = LayerCall(name, fn)
            self.rows.append(call)
        call.ops.append(op.name)
        for t in op.inputs:
            if t in self._trainable and t not in self._charged:
                self._charged.add(t)
                call.params += self._trainable[t]
        out = SymbolicTensor(self, op.outputs[0], origin)
        if scope is None or not scope.leaf:
            call.output_shape = out.shape
        return out

    def _naming(self, fn: str) -> tuple[str, str, str]:
        """(op name, label for messages, origin of its output) of the next op of function ``fn``."""
        scope = self._scopes[-1] if self._scopes else None
        if scope is not None and scope.leaf:
            return self.graph.fresh_name(scope.display), scope.label, scope.display
        name = self.graph.fresh_name(dotted(scope.name if scope else "", fn))
        return name, f"{fn} {name!r}", name

    def label(self, fn: str) -> str:
        """How messages name the layer being traced, or the function ``fn`` outside any layer."""
        return self._naming(fn)[1]

    def shape_error(self, fn: str, message: str) -> LayerShapeError:
        """A LayerShapeError naming the layer (or the function ``fn``) being traced: "<label> <message>"."""
        return LayerShapeError(f"{self._naming(fn)[1]} {message}")


def describe(tensors: Sequence[SymbolicTensor]) -> str:
    """'its input of shape (1, 3) (after 'fc1')' or 'inputs of shapes (..) (after ..) and (..) (after ..)'."""
    g = tensors[0].tracer.graph
    data = [t for t in tensors if g.tensor(t.name).kind is not TensorKind.CONSTANT] or list(tensors)
    parts = [f"{t.shape} ({t.after()})" for t in data]
    if len(parts) == 1:
        return f"its input of shape {parts[0]}"
    return "inputs of shapes " + ", ".join(parts[:-1]) + " and " + parts[-1]


def rename_tensor(g: Graph, old: str, new: str) -> None:
    """Rename a tensor node, keeping its edges and the names its producer and consumers hold."""
    if old == new:
        return
    nx.relabel_nodes(g.nx, {old: new}, copy=False)
    g.nx.nodes[new]["tensor"].name = new
    for n in list(g.nx.predecessors(new)) + list(g.nx.successors(new)):
        op = g.nx.nodes[n]["op"]
        op.inputs = tuple(new if t == old else t for t in op.inputs)
        op.outputs = tuple(new if t == old else t for t in op.outputs)
    g.inputs = [new if t == old else t for t in g.inputs]
    g.outputs = [new if t == old else t for t in g.outputs]


def current_tracer() -> Tracer | None:
    return Tracer.current()


def tracer_of(*xs: Any) -> Tracer:
    """The tracer of the first traced tensor among ``xs``."""
    for x in xs:
        if isinstance(x, SymbolicTensor):
            return x.tracer
    raise ModelDefinitionError("convc.nn functions take traced tensors: call them inside a module's forward()")
