"""The graph IR: a bipartite networkx.DiGraph of tensor nodes and op nodes.

Edges go tensor -> op (an input, edge attribute ``index``) and op -> tensor (an output, ``index``).
Tensors are first-class nodes because everything downstream attaches to them: shape, dtype,
constant data, layout, liveness, arena offset and, for training, gradients.
"""
from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import networkx as nx
import numpy as np

from convc.errors import GraphError
from convc.limits import check_size
from convc.ops import OpKind, TensorType, op_def


class TensorKind(enum.Enum):
    INPUT = "input"            # fed by the caller at every run
    CONSTANT = "constant"      # weights and folded values, data kept as a numpy array
    ACTIVATION = "activation"  # produced by an op, lives in the arena
    PARAMETER = "parameter"    # trainable weight, lives in the persistent training state
    GRADIENT = "gradient"      # gradient of a parameter or activation
    STATE = "state"            # optimizer moments, BN running statistics


@dataclass(eq=False)
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    kind: TensorKind
    data: np.ndarray | None = None  # CONSTANT / PARAMETER / STATE initial value
    layout: str = "logical"         # passes may set "NHWC" / "NCHW16c" internally
    offset: int | None = None       # arena byte offset, set by the memory planner

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, self.dtype)

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # a Python int: never wraps around like an int64 product

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


@dataclass(eq=False)
class Op:
    name: str
    kind: OpKind
    attrs: Any
    inputs: tuple[str, ...] = ()   # tensor names in positional order (mirrors the edges)
    outputs: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Op({self.name!r}, {self.kind.value})"


@dataclass
class Graph:
    """A model: ``nx`` holds the nodes; ``inputs``/``outputs`` are graph boundary tensor names."""

    name: str = "graph"
    nx: nx.DiGraph = field(default_factory=nx.DiGraph)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    # --- construction -------------------------------------------------------------------
    def add_tensor(self, name: str, shape: Iterable[int], dtype, kind: TensorKind,
                   data: np.ndarray | None = None) -> Tensor:
        if name in self.nx:
            raise GraphError(f"name {name!r} is used twice in graph {self.name!r}")
        shape = tuple(int(d) for d in shape)
        # every tensor of every graph is within the size limit, so later shape products cannot overflow
        check_size(f"tensor {name!r}", shape, dtype)
        t = Tensor(name, shape, np.dtype(dtype), kind, data)
        self.nx.add_node(name, tensor=t)
        if kind is TensorKind.INPUT:
            self.inputs.append(name)
        return t

    def add_constant(self, name: str, data: np.ndarray, kind: TensorKind = TensorKind.CONSTANT) -> Tensor:
        data = np.require(data, requirements="C")  # keeps 0-d scalars 0-d
        return self.add_tensor(name, data.shape, data.dtype, kind, data)

    def add_op(self, kind: OpKind, attrs: Any, inputs: Iterable[str], outputs: Iterable[str] | None = None,
               name: str | None = None) -> Op:
        """Add an op and its output tensors; output shapes and dtypes come from shape inference.

        ``outputs`` are the names of the new tensors (fresh names when omitted)."""
        inputs = tuple(inputs)
        name = self.fresh_name(name or kind.value.lower())
        for t in inputs:
            if t not in self.nx or "tensor" not in self.nx.nodes[t]:
                raise GraphError(f"node {name!r} ({kind.value}) reads tensor {t!r}, which no node produces "
                                 "and which is not an input or constant")
        in_types = [self.tensor(t).type for t in inputs]
        try:
            out_types = op_def(kind).infer(attrs, in_types)
        except GraphError as e:
            raise GraphError(f"node {name!r} ({kind.value}): {e}") from None
        outputs = tuple(outputs) if outputs is not None else tuple(
            self.fresh_name(f"{name}_out{i}" if len(out_types) > 1 else f"{name}_out") for i in range(len(out_types)))
        if len(outputs) != len(out_types):
            raise GraphError(f"node {name!r} ({kind.value}) has {len(outputs)} outputs, expected {len(out_types)}")
        op = Op(name, kind, attrs, inputs, outputs)
        self.nx.add_node(name, op=op)
        for i, t in enumerate(inputs):
            # parallel edges are impossible in DiGraph: the same tensor used twice keeps a list
            if self.nx.has_edge(t, name):
                self.nx.edges[t, name]["index"].append(i)
            else:
                self.nx.add_edge(t, name, index=[i])
        for i, (t, ty) in enumerate(zip(outputs, out_types)):
            self.add_tensor(t, ty.shape, ty.dtype, TensorKind.ACTIVATION)
            self.nx.add_edge(name, t, index=[i])
        return op

    def fresh_name(self, base: str) -> str:
        if base not in self.nx:
            return base
        for i in itertools.count(1):
            if f"{base}_{i}" not in self.nx:
                return f"{base}_{i}"
        raise AssertionError

    # --- queries ------------------------------------------------------------------------
    def tensor(self, name: str) -> Tensor:
        try:
            return self.nx.nodes[name]["tensor"]
        except KeyError:
            raise GraphError(f"no tensor named {name!r} in graph {self.name!r}") from None

    def op(self, name: str) -> Op:
        try:
            return self.nx.nodes[name]["op"]
        except KeyError:
            raise GraphError(f"no op named {name!r} in graph {self.name!r}") from None

    def has_tensor(self, name: str) -> bool:
        return name in self.nx and "tensor" in self.nx.nodes[name]

    def tensors(self) -> Iterator[Tensor]:
        for _, d in self.nx.nodes(data=True):
            if "tensor" in d:
                yield d["tensor"]

    def constants(self) -> list[Tensor]:
        return [t for t in self.tensors() if t.kind is TensorKind.CONSTANT]

    def ops(self) -> list[Op]:
        """Ops in a deterministic topological order (ties broken by insertion order)."""
        # networkx's lexicographical_topological_sort gives this order too, but its generic
        # bookkeeping made it a tenth of a large model's compile time (it runs once per pass)
        nodes = self.nx.nodes
        succ, pred = self.nx._succ, self.nx._pred
        index = {n: i for i, n in enumerate(nodes)}
        names = list(nodes)
        waiting = {n: len(p) for n, p in pred.items()}
        ready = [index[n] for n, k in waiting.items() if k == 0]
        heapq.heapify(ready)
        out: list[Op] = []
        while ready:
            n = names[heapq.heappop(ready)]
            d = nodes[n]
            if "op" in d:
                out.append(d["op"])
            for m in succ[n]:
                waiting[m] -= 1
                if waiting[m] == 0:
                    heapq.heappush(ready, index[m])
        if len(out) != sum(1 for d in nodes.values() if "op" in d):
            raise GraphError(f"graph {self.name!r} has a cycle")
        return out

    def producer(self, tensor: str) -> Op | None:
        preds = list(self.nx.predecessors(tensor))
        return self.nx.nodes[preds[0]]["op"] if preds else None

    def consumers(self, tensor: str) -> list[Op]:
        return [self.nx.nodes[n]["op"] for n in self.nx.successors(tensor)]

    def op_inputs(self, op: Op) -> list[Tensor]:
        return [self.tensor(t) for t in op.inputs]

    def op_outputs(self, op: Op) -> list[Tensor]:
        return [self.tensor(t) for t in op.outputs]

    # --- rewriting ----------------------------------------------------------------------
    def remove_op(self, op: Op, remove_outputs: bool = True) -> None:
        self.nx.remove_node(op.name)
        if remove_outputs:
            for t in op.outputs:
                if t in self.outputs:
                    raise GraphError(f"removing {op.name!r} would orphan graph output {t!r}")
                self.nx.remove_node(t)

    def remove_tensor(self, name: str) -> None:
        if list(self.nx.successors(name)) or list(self.nx.predecessors(name)):
            raise GraphError(f"tensor {name!r} is still connected")
        self.nx.remove_node(name)
        if name in self.inputs:
            self.inputs.remove(name)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer of ``old`` read ``new`` instead (graph outputs keep their name)."""
        for consumer in self.consumers(old):
            self.set_inputs(consumer, tuple(new if t == old else t for t in consumer.inputs))

    def set_inputs(self, op: Op, inputs: tuple[str, ...]) -> None:
        for t in set(op.inputs):
            self.nx.remove_edge(t, op.name)
        op.inputs = tuple(inputs)
        for i, t in enumerate(op.inputs):
            if self.nx.has_edge(t, op.name):
                self.nx.edges[t, op.name]["index"].append(i)
            else:
                self.nx.add_edge(t, op.name, index=[i])

    def copy(self) -> "Graph":
        g = Graph(self.name, nx.DiGraph(), list(self.inputs), list(self.outputs), dict(self.metadata))
        for n, d in self.nx.nodes(data=True):
            if "tensor" in d:
                g.nx.add_node(n, tensor=dataclasses.replace(d["tensor"]))
            else:
                o = d["op"]
                g.nx.add_node(n, op=Op(o.name, o.kind, o.attrs, o.inputs, o.outputs))
        for a, b, d in self.nx.edges(data=True):
            g.nx.add_edge(a, b, index=list(d["index"]))
        return g

    # --- checks and views ---------------------------------------------------------------
    def verify(self) -> None:
        """Raise GraphError unless the graph is well formed."""
        from convc.verify import verify
        verify(self)

    def dump(self) -> str:
        from convc.printing import dump
        return dump(self)

    def to_dot(self) -> str:
        from convc.printing import to_dot
        return to_dot(self)

    def __str__(self) -> str:
        return self.dump()
