"""ONNX ModelProto -> convc Graph.

The import walks the nodes in topological order. A node whose inputs are all constants is folded
with numpy; any other node goes to its converter. Nodes convc cannot compile are collected and
reported together in one UnsupportedOpError; malformed models raise ModelImportError at once.
"""
from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import onnx

from convc.errors import ConvcError, GraphError, ModelImportError, UnsupportedOpError
from convc.frontend.onnx.context import ImportState, NodeContext, Unsupported
from convc.frontend.onnx.quant import CONTRIB_DOMAIN, CONTRIB_OPSET, CONTRIB_SCHEMAS
from convc.frontend.onnx.reader import read_once, tensor_value
from convc.frontend.onnx.signature import check_input_shapes, declared_inputs, fixed_symbols, unfixed_message
from convc.frontend.onnx.registry import CONVERTERS, FIRST_OPSET, FOLDERS
from convc.ir import Graph, TensorKind
from convc.limits import check_size, held_limit, positive_int

DEFAULT_DOMAINS = ("", "ai.onnx")
LAST_OPSET = onnx.defs.onnx_opset_version()


def import_onnx(model: str | os.PathLike | bytes | onnx.ModelProto, batch: int | None = None, *,
                runtime: Collection[str] = (), bind: Mapping[str, np.ndarray] | None = None,
                input_shapes: Mapping[str, Any] | None = None) -> Graph:
    """Import an ONNX model (a path, serialized bytes or a ModelProto) as a convc Graph.

    ``batch`` fixes the first dimension of every graph input whose first dimension is symbolic
    (default 1). ``input_shapes`` gives whole shapes for some graph inputs (``{"x": (1, 3, 512,
    512)}``), fixing their symbolic dimensions (and the same-named ones of other inputs); it must
    agree with the declared dimensions and ``batch`` (frontend/onnx/signature.py). Every other
    symbolic dimension is refused. Graph inputs and outputs keep their ONNX names and order.

    Initializers that are also listed as graph inputs are overridable constants (ONNX: the
    initializer is the default value of the input). They import as constants, so the compiler folds
    and packs them; their names are in ``graph.metadata["initializer_inputs"]`` (and those that end
    up in the graph in ``graph.metadata["overridable"]``). ``runtime`` names those to import as
    run-time inputs instead, fed by the caller: convc.CompiledModel does so when a caller feeds one.

    ``bind`` maps graph inputs to values to compile in as constants (specializing the model on them,
    e.g. the integer shapes or the scales the ONNX backend tests feed as inputs).

    Raises ModelImportError for unreadable or malformed models and UnsupportedOpError (a subclass)
    listing every node convc cannot compile (and, in ``constant_inputs``, the graph inputs some
    node needs as constants).
    """
    batch = positive_int("batch", batch)
    with held_limit():
        return _import(model, batch, runtime, bind, input_shapes)


def _import(model: Any, batch: int | None, runtime: Collection[str], bind: Mapping[str, np.ndarray] | None,
            input_shapes: Mapping[str, Any] | None) -> Graph:
    read = read_once(model)
    proto = read.proto
    declared = declared_inputs(proto)
    shapes = check_input_shapes(declared, input_shapes, batch)
    opset = _default_opset(proto)
    importer = _Importer(proto.graph, opset, batch, frozenset(runtime), dict(bind or {}), shapes,
                         fixed_symbols(declared, shapes), read.raw_data)
    importer.contrib_opset = max((o.version for o in proto.opset_import if o.domain == CONTRIB_DOMAIN), default=None)
    return importer.run()


def _default_opset(proto: onnx.ModelProto) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in DEFAULT_DOMAINS]
    if not versions:
        raise ModelImportError("the model imports no opset of the default ONNX domain")
    opset = max(versions)
    if not FIRST_OPSET <= opset <= LAST_OPSET:
        raise ModelImportError(f"the model uses opset {opset} of the default domain; convc imports opsets "
                               f"{FIRST_OPSET} to {LAST_OPSET}")
    return opset


# --- attributes ---------------------------------------------------------------------------
def _attribute_value(a: onnx.AttributeProto, where: str = "a schema default") -> Any:
    try:
        v = onnx.helper.get_attribute_value(a)
    except Exception as e:  # noqa: BLE001 -- an attribute type number onnx does not know
        raise ModelImportError(f"{where}: attribute {a.name!r} cannot be read ({e})") from None
    if a.type == onnx.AttributeProto.TENSOR:
        return tensor_value(v, f"{where}: tensor attribute {a.name!r}")
    if a.type == onnx.AttributeProto.TENSORS:
        return [tensor_value(t, f"{where}: tensor attribute {a.name!r}[{i}]") for i, t in enumerate(v)]
    try:
        if a.type == onnx.AttributeProto.STRING:
            return v.decode("utf-8")
        if a.type == onnx.AttributeProto.STRINGS:
            return [s.decode("utf-8") for s in v]
    except UnicodeDecodeError:
        raise ModelImportError(f"{where}: attribute {a.name!r} is not UTF-8 text") from None
    if a.type in (onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS):
        return list(v)
    return v


# (domain, op type, version) -> the schema's attribute defaults, types and required names: read from
# onnx's schema once per op, not once per node (a default is a protobuf each node parsed again)
_SCHEMA_ATTRIBUTES: dict[tuple[str, str, int], tuple[dict[str, Any], dict[str, int], tuple[str, ...]]] = {}


def _schema_attributes(schema: Any) -> tuple[dict[str, Any], dict[str, int], tuple[str, ...]]:
    key = (schema.domain, schema.name, schema.since_version)
    found = _SCHEMA_ATTRIBUTES.get(key)
    if found is None:
        specs = schema.attributes
        defaults = {k: _attribute_value(a.default_value) for k, a in specs.items()
                    if a.default_value.type != onnx.AttributeProto.UNDEFINED}
        found = (defaults, {k: int(a.type.value) for k, a in specs.items()},
                 tuple(k for k, a in specs.items() if a.required))
        _SCHEMA_ATTRIBUTES[key] = found
    return found


def _fresh(value: Any) -> Any:
    """A default shared by every node of an op, as a node's own (a converter may change its lists)."""
    if isinstance(value, list):
        return [_fresh(v) for v in value]
    return value.copy() if isinstance(value, np.ndarray) else value


def _enum_name(enum: Any, value: int) -> str:
    """The name of an ONNX enum value; a number no version of ONNX defines is shown as one."""
    try:
        return enum.Name(value)
    except ValueError:
        return f"{value} (not a valid value)"


def _node_name(node: onnx.NodeProto, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


class _Importer:
    def __init__(self, g: onnx.GraphProto, opset: int, batch: int | None, runtime: frozenset[str] = frozenset(),
                 bind: dict[str, np.ndarray] | None = None, shapes: dict[str, tuple[int, ...]] | None = None,
                 symbols: dict[str, int] | None = None,
                 raw_data: Callable[[int], memoryview | None] = lambda index: None) -> None:
        self.onnx = g
        self.raw_data = raw_data  # an initializer's raw_data when the proto was parsed without it
        self.opset = opset
        self.batch = batch
        self.shapes = shapes or {}    # input name -> the shape the caller gave (checked against the declared one)
        self.symbols = symbols or {}  # symbol name -> the size those shapes give it
        self.runtime = runtime
        self.bind = bind or {}
        self.state = ImportState(Graph(name=g.name or "graph"))
        self.unknown: set[str] = set()  # outputs of nodes that could not be converted
        self.unsupported: list[tuple[str, str, int, str]] = []
        self.contrib_opset: int | None = None  # the model's com.microsoft opset (its quantized ops)

    @property
    def graph(self) -> Graph:
        return self.state.graph

    def run(self) -> Graph:
        g = self.onnx
        self.state.reserved = ({t.name for t in g.initializer} | {i.name for i in g.input}
                               | {o for n in g.node for o in n.output if o})
        self.state.consumed = {i for n in g.node for i in n.input if i} | {o.name for o in g.output}
        self.state.initializers = {t.name for t in g.initializer}
        overridable = self._add_inputs()
        for index in self._topological_order():
            self._convert(index, g.node[index])
        self._check_outputs()
        if self.unsupported:
            raise UnsupportedOpError(self.unsupported, sorted(self.state.needed_constants))
        for out in g.output:
            self.state.materialize(out.name)
            self.graph.outputs.append(out.name)
        self.graph.metadata["overridable"] = [n for n in overridable if self.graph.has_tensor(n)]
        self.graph.metadata["initializer_inputs"] = [vi.name for vi in g.input
                                                     if vi.name in {t.name for t in g.initializer}]
        self.graph.metadata["onnx_opset"] = self.opset
        return self.graph

    # --- boundary ---------------------------------------------------------------------------
    def _add_inputs(self) -> list[str]:
        """Initializers become constant values; the other graph inputs become runtime inputs, except the
        initializers named in ``runtime`` (run-time inputs) and the inputs given in ``bind`` (constants)."""
        for i, t in enumerate(self.onnx.initializer):
            self.state.values[t.name] = tensor_value(t, f"initializer {t.name!r}", self.raw_data(i))
        declared = {vi.name for vi in self.onnx.input}
        for what, names in (("bind", set(self.bind)), ("runtime", set(self.runtime))):
            unknown = sorted(names - declared)
            if unknown:
                raise ModelImportError(f"{what}={unknown}: not graph inputs (the graph inputs are {sorted(declared)})")
        not_initializers = sorted(self.runtime - set(self.state.values))
        if not_initializers:
            raise ModelImportError(f"runtime={not_initializers}: only initializers listed as graph inputs can be "
                                   "made run-time inputs (the other graph inputs already are)")
        overridable = []
        for vi in self.onnx.input:
            if vi.name in self.bind:
                self.state.values[vi.name] = np.array(self.bind[vi.name])  # a copy: the caller may change theirs
            elif vi.name in self.runtime:
                default = self.state.values.pop(vi.name)
                if default.dtype != np.float32:
                    raise ModelImportError(f"graph input {vi.name!r} is a {default.dtype} initializer; convc can only "
                                           "feed float32 run-time inputs, so it stays a constant")
                self.graph.add_tensor(vi.name, default.shape, default.dtype, TensorKind.INPUT)
            elif vi.name in self.state.values:
                overridable.append(vi.name)
            elif not self.graph.has_tensor(vi.name):
                shape, dtype = self._input_type(vi)
                self.graph.add_tensor(vi.name, shape, dtype, TensorKind.INPUT)
        return overridable

    def _input_type(self, vi: onnx.ValueInfoProto) -> tuple[tuple[int, ...], np.dtype]:
        if not vi.type.HasField("tensor_type"):
            raise ModelImportError(f"graph input {vi.name!r} is not a tensor ({vi.type.WhichOneof('value')})")
        tt = vi.type.tensor_type
        type_name = _enum_name(onnx.TensorProto.DataType, tt.elem_type)
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise ModelImportError(f"graph input {vi.name!r} has element type {type_name}; convc compiles float32 "
                                   "models only, so every runtime input must be FLOAT")
        given = self.shapes.get(vi.name)
        if given is not None:  # checked against the declared dimensions by check_input_shapes
            shape = list(given)
        elif not tt.HasField("shape"):
            raise ModelImportError(f"graph input {vi.name!r} has no shape; convc needs static input shapes (give "
                                   f"one with input_shapes={{{vi.name!r}: (...)}}, --input-shape {vi.name}=...)")
        else:
            shape = self._declared_shape(vi.name, tt.shape.dim)
        check_size(f"graph input {vi.name!r}", shape, np.float32, ModelImportError)  # 2**62 must not wrap
        return tuple(shape), np.dtype(np.float32)

    def _declared_shape(self, name: str, dims) -> list[int]:
        """The shape of a graph input the caller gave no shape for: its declared dimensions, symbols
        fixed by the shapes given for other inputs, a symbolic first dimension fixed to the batch."""
        shape: list[int] = []
        unfixed: list[int] = []
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                if d.dim_value < 0:
                    raise ModelImportError(f"graph input {name!r} dimension {i} is {d.dim_value}")
                if i == 0 and self.batch is not None and d.dim_value != self.batch:
                    raise ModelImportError(f"graph input {name!r} has a fixed batch dimension {d.dim_value}, "
                                           f"but batch={self.batch} was requested")
                shape.append(d.dim_value)
            elif i == 0 and self.batch is not None:
                shape.append(self.batch)
            elif d.dim_param and d.dim_param in self.symbols:
                shape.append(self.symbols[d.dim_param])
            elif i == 0:
                shape.append(1)
            else:
                unfixed.append(i)
                shape.append(0)
        if unfixed:
            declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]
            raise ModelImportError(unfixed_message(name, declared, unfixed))
        return shape

    def _check_outputs(self) -> None:
        if not self.onnx.output:
            raise ModelImportError("the graph has no outputs: there is nothing to compute")
        for out in self.onnx.output:
            if out.name not in self.unknown and not self.state.is_known(out.name):
                raise ModelImportError(f"graph output {out.name!r} is not produced by any node and is not an input "
                                       "or initializer")
            # a declared type that is not what the graph computes: the model is wrong, and returning
            # float32 where the file promises, say, bool would hand the caller another type than declared
            declared = out.type.tensor_type.elem_type if out.type.HasField("tensor_type") else 0
            if declared and self.state.is_known(out.name):
                have = self.state.type_of(out.name).dtype
                try:
                    same = onnx.helper.np_dtype_to_tensor_dtype(have) == declared
                except (KeyError, ValueError, TypeError):  # numpy types ONNX has no name for
                    same = False
                if not same:
                    raise ModelImportError(f"graph output {out.name!r} is declared "
                                           f"{_enum_name(onnx.TensorProto.DataType, declared)}, but the graph "
                                           f"computes {have} for it")

    # --- order ------------------------------------------------------------------------------
    def _topological_order(self) -> list[int]:
        """Node indices in dependency order, file order among ready nodes; malformed wiring raises."""
        nodes = self.onnx.node
        producer: dict[str, int] = {}
        available = set(self.state.values) | set(self.graph.inputs)
        for i, n in enumerate(nodes):
            for o in n.output:
                if not o:
                    continue
                if o in producer:
                    j = producer[o]
                    raise ModelImportError(f"tensor {o!r} is produced twice: by node {_node_name(nodes[j], j)!r} "
                                           f"({nodes[j].op_type}) and node {_node_name(n, i)!r} ({n.op_type})")
                if o in available:
                    raise ModelImportError(f"node {_node_name(n, i)!r} ({n.op_type}) writes tensor {o!r}, which is "
                                           "already a graph input or initializer")
                producer[o] = i
        waiting = [0] * len(nodes)
        users: dict[int, list[int]] = {}
        for i, n in enumerate(nodes):
            deps = set()
            for t in n.input:
                if not t or t in available:
                    continue
                if t not in producer:
                    raise ModelImportError(f"node {_node_name(n, i)!r} ({n.op_type}) reads tensor {t!r}, which no node "
                                           "produces and which is not a graph input or initializer")
                deps.add(producer[t])
            waiting[i] = len(deps)
            for d in deps:
                users.setdefault(d, []).append(i)
        ready = [i for i, w in enumerate(waiting) if w == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for u in users.get(i, []):
                waiting[u] -= 1
                if waiting[u] == 0:
                    heapq.heappush(ready, u)
        if len(order) != len(nodes):
            stuck = [f"{_node_name(nodes[i], i)!r} ({nodes[i].op_type})" for i, w in enumerate(waiting) if w]
            raise ModelImportError(f"the graph has a cycle through nodes {', '.join(stuck[:10])}")
        return order

    # --- nodes ------------------------------------------------------------------------------
    def _convert(self, index: int, node: onnx.NodeProto) -> None:
        name = _node_name(node, index)
        op_type = node.op_type
        inputs = tuple(node.input)
        outputs = tuple(node.output)
        depends_on_unknown = any(t in self.unknown for t in inputs if t)

        contrib = node.domain == CONTRIB_DOMAIN and op_type in CONTRIB_SCHEMAS
        if node.domain not in DEFAULT_DOMAINS and not contrib:
            return self._skip(name, node, f"domain {node.domain!r} is not supported; convc imports the default "
                                          f"ONNX domain and {CONTRIB_DOMAIN}'s {', '.join(CONTRIB_SCHEMAS)}")
        if contrib and self.contrib_opset != CONTRIB_OPSET:
            seen = "no opset" if self.contrib_opset is None else f"opset {self.contrib_opset}"
            return self._skip(name, node, f"the model imports {seen} of {CONTRIB_DOMAIN}; convc imports its opset "
                                          f"{CONTRIB_OPSET}")
        try:
            schema = CONTRIB_SCHEMAS[op_type] if contrib else onnx.defs.get_schema(op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return self._skip(name, node, f"not an operator of ONNX opset {self.opset}")
        convert = CONVERTERS.lookup(op_type, self.opset)
        fold = FOLDERS.lookup(op_type, self.opset)
        if convert is None and fold is None:
            return self._skip(name, node, f"convc has no converter for {op_type}-{schema.since_version}")
        if depends_on_unknown:
            self.unknown.update(o for o in outputs if o)
            return None

        ctx = NodeContext(self.state, node, name, self.opset, self._attributes(name, node, schema), inputs, outputs,
                          tuple(p.name for p in schema.inputs), tuple(p.name for p in schema.outputs))
        self._check_arity(ctx, schema)
        try:
            if fold is not None and all(t in self.state.values for t in inputs if t):
                values = fold(ctx)
                for i, v in enumerate(values):
                    ctx.set_output(i, v)
            elif convert is not None:
                convert(ctx)
            else:
                runtime = [t for t in inputs if t and t not in self.state.values]
                raise Unsupported(f"{op_type} is only supported on constants (folded at import), but "
                                  f"{', '.join(map(repr, runtime))} is computed at run time")
            missing = [f"{schema.outputs[min(i, len(schema.outputs) - 1)].name!r} ({o!r})"
                       for i, o in enumerate(outputs) if o and not self.state.is_known(o) and o in self.state.consumed]
            if missing:
                raise Unsupported(f"output(s) {', '.join(missing)} are used but not supported")
        except Unsupported as e:
            return self._skip(name, node, e.reason)
        except GraphError as e:
            raise ctx.error(str(e)) from None
        except ConvcError:
            raise
        except Exception as e:  # numpy errors while folding: name the node, keep the cause
            raise ctx.error(f"{type(e).__name__}: {e}") from e
        return None

    def _skip(self, name: str, node: onnx.NodeProto, reason: str) -> None:
        self.unsupported.append((name, node.op_type, self.opset, reason))
        self.unknown.update(o for o in node.output if o)

    def _attributes(self, name: str, node: onnx.NodeProto, schema: Any) -> dict[str, Any]:
        where = f"node {name!r} ({node.op_type}, opset {self.opset})"
        defaults, types, required = _schema_attributes(schema)
        attrs = {key: _fresh(value) for key, value in defaults.items()}
        for a in node.attribute:
            expected = types.get(a.name)
            if expected is None:
                raise ModelImportError(f"{where}: attribute {a.name!r} is not part of "
                                       f"{node.op_type}-{schema.since_version} (known: {sorted(types)})")
            if a.ref_attr_name:
                raise ModelImportError(f"{where}: attribute {a.name!r} refers to a function attribute")
            if a.type != expected:
                raise ModelImportError(f"{where}: attribute {a.name!r} has type "
                                       f"{_enum_name(onnx.AttributeProto.AttributeType, a.type)}, expected "
                                       f"{_enum_name(onnx.AttributeProto.AttributeType, expected)}")
            attrs[a.name] = _attribute_value(a, where)
        for key in required:
            if key not in attrs:
                raise ModelImportError(f"{where}: required attribute {key!r} is missing")
        return attrs

    def _check_arity(self, ctx: NodeContext, schema: Any) -> None:
        n = len(ctx.inputs)
        if n > schema.max_input:
            raise ctx.error(f"has {n} inputs, {ctx.op_type}-{schema.since_version} takes at most {schema.max_input}")
        if n < schema.min_input:
            raise ctx.error(f"has {n} inputs, {ctx.op_type}-{schema.since_version} needs at least {schema.min_input}")
        single = onnx.defs.OpSchema.FormalParameterOption.Single
        for i, p in enumerate(schema.inputs):
            if p.option == single and not ctx.has_input(i):
                raise ctx.error(f"required input #{i} {p.name!r} is missing")
