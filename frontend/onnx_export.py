"""convc Graph -> onnx.ModelProto, opset 13 unless asked for a newer one.

One exporter per OpKind, registered in ``EXPORTERS``; ops without one (those passes and training
introduce, like Im2Col) and attribute values the opset cannot express (a dilated AveragePool
before opset 19, say) are reported together in one ExportError. Attributes are written
explicitly, defaults included, so the file does not depend on a reader's defaults; HardSwish
before opset 14 is written as x * HardSigmoid(x, 1/6, 1/2). A Conv, ConvTranspose or Gemm whose
epilogue fused a residual and an activation is written back as op -> Add -> activation. With
``dynamic_batch`` the first dimension of the inputs (and of the outputs that share it) is the
symbol "N"; a Reshape that keeps the batch dimension writes 0 ("copy") for it, and Resize writes
scales rather than sizes where they give the same shape, so other batch sizes run.
"""
from __future__ import annotations

import dataclasses
import math

from typing import Any, Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from convc.errors import ConvcError
from convc.ir import Graph, Op, TensorKind
from convc.ops import OpGroup, OpKind
from convc.ops.attrs import onnx_fields, onnx_spelling
from convc.ops.epilogue import Epilogue

DEFAULT_OPSET = 13
BATCH_SYMBOL = "N"


class ExportError(ConvcError):
    """The graph holds ops (or attribute values) the requested ONNX opset cannot express; lists them all."""


class _Unexportable(Exception):
    pass


class _Writer:
    """Collects nodes and initializers; hands out names that collide with nothing in the graph."""

    def __init__(self, graph: Graph, opset: int):
        self.graph = graph
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.reshape_batch = False
        self._used = set(graph.nx.nodes)

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str], name: str, **attrs: Any) -> None:
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(name), **attrs))

    def constant(self, base: str, value: np.ndarray) -> str:
        name = self.fresh(base)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name


Exporter = Callable[[_Writer, Op], None]
EXPORTERS: dict[OpKind, Exporter] = {}


def exporter(*kinds: OpKind) -> Callable[[Exporter], Exporter]:
    def register(fn: Exporter) -> Exporter:
        for k in kinds:
            if k in EXPORTERS:
                raise RuntimeError(f"ONNX exporter for {k.value} is registered twice")
            EXPORTERS[k] = fn
        return fn
    return register


# --- op exporters -------------------------------------------------------------------------
def _unary_node(w: _Writer, kind: OpKind, attrs: Any, x: str, y: str, name: str) -> None:
    """One unary op, spelled for the writer's opset from its attributes' declaration."""
    if kind is OpKind.HARD_SWISH and w.opset < 14:  # HardSwish arrived in opset 14: x * HardSigmoid(x, 1/6, 1/2)
        hs = w.fresh(f"{name}_hard_sigmoid")
        w.node("HardSigmoid", [x], [hs], f"{name}_hard_sigmoid", alpha=1.0 / 6.0, beta=0.5)
        w.node("Mul", [x, hs], [y], name)
    elif kind is OpKind.SWISH and w.opset < 24:  # Swish arrived in opset 24: x * Sigmoid(alpha x)
        ax = x
        if attrs.alpha != 1.0:
            ax = w.fresh(f"{name}_scaled")
            w.node("Mul", [x, w.constant(f"{name}.alpha", np.array(attrs.alpha, np.float32))], [ax], f"{name}_scale")
        s = w.fresh(f"{name}_sigmoid")
        w.node("Sigmoid", [ax], [s], f"{name}_sigmoid")
        w.node("Mul", [x, s], [y], name)
    elif kind is OpKind.GELU and w.opset < 20:  # Gelu arrived in opset 20
        _gelu_nodes(w, attrs, x, y, name)
    elif kind is OpKind.MISH and w.opset < 18:  # Mish arrived in opset 18: x * Tanh(Softplus(x))
        sp, t = w.fresh(f"{name}_softplus"), w.fresh(f"{name}_tanh")
        w.node("Softplus", [x], [sp], f"{name}_softplus")
        w.node("Tanh", [sp], [t], f"{name}_tanh")
        w.node("Mul", [x, t], [y], name)
    else:
        inputs, attributes = _spelled(w, attrs, [x], name)
        w.node(kind.value, inputs, [y], name, **attributes)


def _gelu_nodes(w: _Writer, attrs: Any, x: str, y: str, name: str) -> None:
    """Gelu before opset 20: x * 0.5 * (1 + Erf(x / sqrt 2)), or with Tanh(sqrt(2/pi) (x + 0.044715 x^3))."""
    def const(tag: str, v: float) -> str:
        return w.constant(f"{name}.{tag}", np.array(v, np.float32))

    def step(op_type: str, inputs: list[str], tag: str) -> str:
        out = w.fresh(f"{name}_{tag}")
        w.node(op_type, inputs, [out], f"{name}_{tag}")
        return out
    if attrs.approximate == "tanh":
        cube = step("Mul", [step("Mul", [x, x], "square"), x], "cube")
        inner = step("Add", [x, step("Mul", [cube, const("c", 0.044715)], "cubic")], "inner")
        s = step("Tanh", [step("Mul", [inner, const("k", math.sqrt(2.0 / math.pi))], "scaled")], "tanh")
    else:
        s = step("Erf", [step("Div", [x, const("sqrt2", math.sqrt(2.0))], "scaled")], "erf")
    half = step("Mul", [x, const("half", 0.5)], "half")
    w.node("Mul", [half, step("Add", [s, const("one", 1.0)], "plus_one")], [y], name)


def _spelled(w: _Writer, attrs: Any, inputs: list[str], name: str) -> tuple[list[str], dict[str, Any]]:
    """(inputs, attributes) of a node whose attributes are declared with ``onnx_attr``: the fields that are
    inputs at the writer's opset become initializers after ``inputs``."""
    attributes, extra = onnx_spelling(attrs, w.opset)
    fields = {f.input: f.name for f in onnx_fields(type(attrs)) if f.input is not None}
    names = list(inputs) + [""] * (max(extra, default=0) + 1 - len(inputs))
    for i, value in extra.items():
        names[i] = w.constant(f"{name}.{fields[i]}", value)
    return names, attributes


def _with_epilogue(w: _Writer, op: Op, op_type: str, inputs: list[str], epilogue: Epilogue, **attrs: Any) -> None:
    """Write the main node, then the fused residual Add and activation it stands for."""
    steps: list[tuple[str, list[str], dict[str, Any]]] = [(op_type, inputs, attrs)]
    if epilogue.residual:
        steps.append(("Add", [op.inputs[-1]], {}))
    act = epilogue.activation
    previous: list[str] = []
    for i, (kind, extra, a) in enumerate(steps):
        last = i == len(steps) - 1 and act is None
        out = op.outputs[0] if last else w.fresh(f"{op.name}_{kind.lower()}_out")
        w.node(kind, previous + extra, [out], op.name if i == 0 else f"{op.name}_{kind.lower()}", **a)
        previous = [out]
    if act is not None:
        _unary_node(w, act, epilogue.activation_attrs, previous[0], op.outputs[0], f"{op.name}_{act.value.lower()}")


@exporter(OpKind.CONV)
def _conv(w: _Writer, op: Op) -> None:
    a = op.attrs
    _with_epilogue(w, op, "Conv", list(op.inputs[:len(op.inputs) - a.epilogue.residual]), a.epilogue,
                   **onnx_spelling(a, w.opset)[0])


@exporter(OpKind.CONV_TRANSPOSE)
def _conv_transpose(w: _Writer, op: Op) -> None:
    a = op.attrs
    _with_epilogue(w, op, "ConvTranspose", list(op.inputs[:len(op.inputs) - a.epilogue.residual]), a.epilogue,
                   **onnx_spelling(a, w.opset)[0], output_padding=list(a.extra))


@exporter(OpKind.GEMM)
def _gemm(w: _Writer, op: Op) -> None:
    a = op.attrs
    _with_epilogue(w, op, "Gemm", list(op.inputs[:len(op.inputs) - a.epilogue.residual]), a.epilogue,
                   **onnx_spelling(a, w.opset)[0])


@exporter(OpKind.MATMUL, *OpGroup.BROADCAST, OpKind.GLOBAL_AVERAGE_POOL, OpKind.GLOBAL_MAX_POOL, OpKind.LRN,
          OpKind.BATCH_NORM, OpKind.FLATTEN, OpKind.CONCAT, OpKind.SOFTMAX, OpKind.LOG_SOFTMAX, OpKind.TRANSPOSE)
def _declared(w: _Writer, op: Op) -> None:
    """An op whose ONNX op type is its kind's name and whose attributes are all declared with ``onnx_attr``."""
    inputs, attributes = _spelled(w, op.attrs, list(op.inputs), op.name)
    w.node(op.kind.value, inputs, list(op.outputs), op.name, **attributes)


@exporter(OpKind.EXPAND)
def _expand(w: _Writer, op: Op) -> None:
    shape = list(op.attrs.shape)
    x = w.graph.tensor(op.inputs[0]).shape
    if w.reshape_batch and len(x) == len(shape) and shape and shape[0] == x[0]:
        shape[0] = 1  # a 1 keeps the input's dimension: the batch stays symbolic
    target = w.constant(f"{op.name}.shape", np.array(shape, dtype=np.int64))
    w.node("Expand", [op.inputs[0], target], list(op.outputs), op.name)


@exporter(OpKind.WHERE)
def _where(w: _Writer, op: Op) -> None:
    """The 0/1 mask back to ONNX's boolean condition: Cast(mask != 0 as BOOL) (a Cast to BOOL maps non-zero to true)."""
    cond = w.fresh(f"{op.name}.condition")
    w.node("Cast", [op.inputs[0]], [cond], f"{op.name}/condition", to=TensorProto.BOOL)
    w.node("Where", [cond, op.inputs[1], op.inputs[2]], list(op.outputs), op.name)


@exporter(OpKind.LAYER_NORM)
def _layer_norm(w: _Writer, op: Op) -> None:
    if w.opset < 17:
        raise _Unexportable(f"LayerNormalization needs opset 17 (asked for {w.opset})")
    _declared(w, op)


@exporter(*OpGroup.UNARY)
def _unary(w: _Writer, op: Op) -> None:
    # Dropout without training_mode is the identity, as it is in convc at inference
    _unary_node(w, op.kind, op.attrs, op.inputs[0], op.outputs[0], op.name)


def _declared_for(w: _Writer, op_type: str, attrs: Any, **neutral: Any) -> dict[str, Any]:
    """The declared attributes of ``attrs`` (``onnx_attr``) that ``op_type`` has at the writer's opset.

    ONNX's schema says which those are (AveragePool gained dilations in opset 19, LpPool dilations
    and ceil_mode in 18, Resize antialias in 18; MaxPool never has count_include_pad). One it lacks
    is left out when it holds the value that means "absent": its declared default, or ``neutral``'s
    (all-ones dilations); any other value cannot be written at this opset."""
    attributes, _ = onnx_spelling(attrs, w.opset)
    absent = {f.onnx: f.encode(f.default) for f in onnx_fields(type(attrs)) if not f.required} | neutral
    have = onnx.defs.get_schema(op_type, w.opset).attributes
    out = {}
    for name, value in attributes.items():
        if name in have:
            out[name] = value
        elif name not in absent or value != absent[name]:
            since = next((v for v in range(w.opset + 1, onnx.defs.onnx_opset_version() + 1)
                          if name in onnx.defs.get_schema(op_type, v).attributes), None)
            shown = tuple(value) if isinstance(value, list) else value
            needs = f"need opset {since}" if since else "have no ONNX spelling"
            raise _Unexportable(f"{op_type} {name}={shown} {needs} (asked for {w.opset})")
    return out


@exporter(OpKind.MAX_POOL, OpKind.AVERAGE_POOL, OpKind.LP_POOL)
def _pool(w: _Writer, op: Op) -> None:
    a = op.attrs
    if op.kind is OpKind.MAX_POOL:  # count_include_pad is AveragePool's (they share PoolAttrs): no max reads it
        a = dataclasses.replace(a, count_include_pad=False)
    attrs = _declared_for(w, op.kind.value, a, dilations=[1] * a.spatial_rank)
    w.node(op.kind.value, list(op.inputs), list(op.outputs), op.name, **attrs)


@exporter(OpKind.RESHAPE)
def _reshape(w: _Writer, op: Op) -> None:
    shape = list(op.attrs.shape)
    x = w.graph.tensor(op.inputs[0]).shape
    if w.reshape_batch and shape and x and shape[0] == x[0]:
        shape[0] = 0  # "copy dimension 0 of the input": the batch stays symbolic
    target = w.constant(f"{op.name}.shape", np.array(shape, dtype=np.int64))
    w.node("Reshape", [op.inputs[0], target], list(op.outputs), op.name)


@exporter(OpKind.SPLIT)
def _split(w: _Writer, op: Op) -> None:
    sizes = w.constant(f"{op.name}.split", np.array(op.attrs.sizes, dtype=np.int64))
    w.node("Split", [op.inputs[0], sizes], list(op.outputs), op.name, axis=int(op.attrs.axis))


@exporter(OpKind.PAD)
def _pad(w: _Writer, op: Op) -> None:
    a = op.attrs
    if a.mode == "wrap" and w.opset < 19:
        raise _Unexportable(f"Pad mode 'wrap' needs opset 19 (asked for {w.opset})")
    pads = w.constant(f"{op.name}.pads", np.array(a.pads, dtype=np.int64))
    value = w.constant(f"{op.name}.value", np.array(a.value, dtype=w.graph.tensor(op.inputs[0]).dtype))
    w.node("Pad", [op.inputs[0], pads, value], list(op.outputs), op.name, mode=a.mode)


@exporter(OpKind.STRIDED_SLICE)
def _strided_slice(w: _Writer, op: Op) -> None:
    a = op.attrs
    dims = w.graph.tensor(op.inputs[0]).shape
    # ONNX ends are exclusive and a negative end counts from the back: walking backwards past index 0
    # needs an end below -dim
    ends = [s + n * st if s + n * st >= 0 else -d - 1 for s, st, n, d in zip(a.starts, a.steps, a.shape, dims)]
    ints = lambda name, v: w.constant(f"{op.name}.{name}", np.array(v, dtype=np.int64))  # noqa: E731
    w.node("Slice", [op.inputs[0], ints("starts", a.starts), ints("ends", ends), ints("axes", range(len(dims))),
                     ints("steps", a.steps)], list(op.outputs), op.name)


@exporter(OpKind.RESIZE)
def _resize(w: _Writer, op: Op) -> None:
    a = op.attrs
    x = w.graph.tensor(op.inputs[0]).shape
    if a.coordinate_transformation_mode == "half_pixel_symmetric" and w.opset < 19:
        raise _Unexportable(f"Resize coordinate_transformation_mode 'half_pixel_symmetric' needs opset 19 "
                            f"(asked for {w.opset})")
    if a.nearest_mode == "simple":
        raise _Unexportable("Resize nearest_mode 'simple' (Upsample's rounding) has no Resize spelling")
    attrs = _declared_for(w, "Resize", a)
    roi = w.constant(f"{op.name}.roi", np.array(a.roi, dtype=np.float32)) if a.roi else ""
    # scales keep the batch dimension symbolic; sizes only when the scales do not reproduce the shape
    by_scales = all(int(np.float32(d) * np.float32(sc)) == o for d, sc, o in zip(x, a.scales, a.shape))
    scales = w.constant(f"{op.name}.scales", np.array(a.scales, dtype=np.float32)) if by_scales else ""
    sizes = "" if by_scales else w.constant(f"{op.name}.sizes", np.array(a.shape, dtype=np.int64))
    inputs = [op.inputs[0], roi, scales] + ([sizes] if sizes else [])
    w.node("Resize", inputs, list(op.outputs), op.name, **attrs)


@exporter(OpKind.REDUCE_SUM, OpKind.REDUCE_MAX, OpKind.REDUCE_MIN, OpKind.REDUCE_PROD)
def _reduce(w: _Writer, op: Op) -> None:
    a = op.attrs
    x = w.graph.tensor(op.inputs[0]).shape
    kept = tuple(d for i, d in enumerate(x) if i not in a.axes)
    out = op.outputs[0] if kept == tuple(a.shape) else w.fresh(f"{op.name}_reduced")
    # the axes became an input in opset 13 for ReduceSum, in opset 18 for the others
    if w.opset >= (13 if op.kind is OpKind.REDUCE_SUM else 18):
        axes = w.constant(f"{op.name}.axes", np.array(a.axes, dtype=np.int64))
        w.node(op.kind.value, [op.inputs[0], axes], [out], op.name, keepdims=0, noop_with_empty_axes=0)
    else:
        w.node(op.kind.value, [op.inputs[0]], [out], op.name, keepdims=0, axes=list(a.axes))
    if out != op.outputs[0]:
        shape = w.constant(f"{op.name}.shape", np.array(a.shape, dtype=np.int64))
        w.node("Reshape", [out, shape], [op.outputs[0]], f"{op.name}_reshape")


@exporter(OpKind.SLICE)
def _slice(w: _Writer, op: Op) -> None:
    a = op.attrs
    ints = lambda name, v: w.constant(f"{op.name}.{name}", np.array([v], dtype=np.int64))  # noqa: E731
    w.node("Slice", [op.inputs[0], ints("starts", a.start), ints("ends", a.stop), ints("axes", a.axis),
                     ints("steps", 1)], list(op.outputs), op.name)


# --- the model ------------------------------------------------------------------------------
_ONNX_DTYPES = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float64): TensorProto.DOUBLE,
                np.dtype(np.float16): TensorProto.FLOAT16}


def _value_info(g: Graph, name: str, batch: int | None) -> onnx.ValueInfoProto:
    t = g.tensor(name)
    if t.dtype not in _ONNX_DTYPES:
        raise ExportError(f"tensor {name!r} has dtype {t.dtype}, which the exporter does not write")
    dims: list[int | str] = list(t.shape)
    if batch is not None and dims and dims[0] == batch:
        dims[0] = BATCH_SYMBOL
    return helper.make_tensor_value_info(name, _ONNX_DTYPES[t.dtype], dims)


def export_onnx(graph: Graph, *, opset: int | None = None, dynamic_batch: bool = True,
                producer: str = "convc") -> onnx.ModelProto:
    """Write ``graph`` as an ONNX model at ``opset`` (default 13; 13 is the oldest supported, since
    Softmax's semantics changed there). Raises ExportError listing every op it cannot write."""
    from convc.version import __version__
    opset = DEFAULT_OPSET if opset is None else int(opset)
    if not DEFAULT_OPSET <= opset <= onnx.defs.onnx_opset_version():
        raise ExportError(f"opset {opset} is not supported: the exporter writes opsets {DEFAULT_OPSET} to "
                          f"{onnx.defs.onnx_opset_version()}")
    w = _Writer(graph, opset)
    batch = graph.tensor(graph.inputs[0]).shape[0] if dynamic_batch and graph.inputs else None
    if batch is not None and any(not graph.tensor(n).shape or graph.tensor(n).shape[0] != batch
                                 for n in graph.inputs):
        batch = None  # inputs disagree on a batch dimension: keep every shape static
    w.reshape_batch = batch is not None
    problems: list[str] = []
    for op in graph.ops():
        fn = EXPORTERS.get(op.kind)
        if fn is None:
            why = ("has no ONNX exporter" if onnx.defs.has(op.kind.value) else
                   "is not an ONNX op (passes or training introduce it: export the graph before compiling)")
            problems.append(f"  - node {op.name!r}: {op.kind.value} {why}")
            continue
        if getattr(op.attrs, "channels_last", False):
            problems.append(f"  - node {op.name!r}: {op.kind.value} runs channels last (NHWC), which ONNX's "
                            f"{op.kind.value} cannot say (the layout pass set it: export the graph before compiling)")
            continue
        try:
            fn(w, op)
        except _Unexportable as e:
            problems.append(f"  - node {op.name!r}: {e}")
    if problems:
        raise ExportError(f"cannot export {len(problems)} node(s) of graph {graph.name!r} to ONNX:\n"
                          + "\n".join(problems))
    outputs = []
    for name in graph.outputs:
        info = _value_info(graph, name, batch)
        if graph.producer(name) is None:  # an input or constant returned as is gets a node of its own
            info.name = w.fresh(f"{name}_identity")
            w.node("Identity", [name], [info.name], info.name)
        outputs.append(info)
    inits = [numpy_helper.from_array(t.data, t.name) for t in graph.tensors()
             if t.kind is not TensorKind.INPUT and t.data is not None and not graph.nx.in_degree(t.name)]
    g = helper.make_graph(w.nodes, graph.name,
                          [_value_info(graph, n, batch) for n in graph.inputs], outputs,
                          initializer=inits + w.initializers)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], producer_name=producer,
                              producer_version=__version__)
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import))
    onnx.checker.check_model(model)
    return model
