"""The QDQ ONNX model ``convc.quantize`` writes, and what a QDQ model's int8 layers save.

The layout is onnxruntime's ``quantize_static`` QDQ format, which onnxruntime, OpenVINO and convc
read: each quantized activation ``t`` becomes ``QuantizeLinear -> DequantizeLinear`` (u8,
asymmetric: ``scale = (high - low) / 255``, the zero point putting 0.0 on an exact level); each
Conv/Gemm/MatMul weight is stored as an int8 initializer (symmetric, zero point 0, one scale per
output channel with ``per_channel``) read through a ``DequantizeLinear``; each bias as int32 with
scale ``input scale * weight scale`` (so the integer kernel adds it to its int32 accumulator
as is). The producer of ``t`` writes ``t + "_float"``, and the DequantizeLinear writes ``t``
itself, so graph output names stay the model's.

``reduce_range`` keeps weights in [-63, 63] (7 bits), as onnxruntime does for CPUs without VNNI:
AVX2's ``vpmaddubsw`` adds two u8 x s8 products into an int16 that saturates past 32767, which
255 * 63 * 2 never reaches.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convc.quantize_calibrate import Selection, drop_unused_initializers, fresh_name, node_name

U8_MAX = 255
INT32 = np.iinfo(np.int32)
METADATA_KEY = "convc.quantize"


def activation_params(low: float, high: float) -> tuple[np.float32, np.uint8]:
    """u8 scale and zero point mapping [low, high] (which holds 0) onto 0..255."""
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low <= 0 or not np.isfinite(high - low):
        return np.float32(1.0), np.uint8(0)
    scale = np.float32((high - low) / U8_MAX)
    zero = int(np.clip(np.round(-low / float(scale)), 0, U8_MAX))
    return scale, np.uint8(zero)


def weight_params(w: np.ndarray, axis: int, per_channel: bool, reduce_range: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float32 scales): symmetric, one scale per slice along ``axis`` (or one in all)."""
    q_max = 63 if reduce_range else 127
    w = np.asarray(w, dtype=np.float64)
    if per_channel:
        reduce = tuple(i for i in range(w.ndim) if i != axis)
        absmax = np.abs(w).max(axis=reduce) if reduce else np.abs(w)
    else:
        absmax = np.array(np.abs(w).max())
    scale = np.where(absmax > 0, absmax / q_max, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    if per_channel:
        shape[axis] = -1
    q = np.clip(np.round(w / scale.astype(np.float64).reshape(shape)), -q_max, q_max).astype(np.int8)
    return q, scale


def write_qdq(model, selection: Selection, ranges: dict[str, tuple[float, float]], *, per_channel: bool,
              reduce_range: bool, note: str = ""):
    """A copy of ``model`` (opset >= 13) in QDQ form: ``selection``'s activations quantized with
    ``ranges`` and its nodes' weights and biases stored as integers."""
    import onnx
    from onnx import helper, numpy_helper
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    used = ({t.name for t in g.initializer} | {i for n in g.node for i in n.input}
            | {o for n in g.node for o in n.output}
            | {v.name for v in g.input} | {v.name for v in g.output} | {n.name for n in g.node})
    inits = {t.name: t for t in g.initializer}
    new_inits: list = []

    def const(base: str, value: np.ndarray) -> str:
        name = fresh_name(base, used)
        used.add(name)
        new_inits.append(numpy_helper.from_array(value, name))
        return name

    def fresh(base: str) -> str:
        name = fresh_name(base, used)
        used.add(name)
        return name

    graph_inputs = {v.name for v in g.input}
    scales: dict[str, np.float32] = {}
    before: list = []                 # Q/DQ of graph inputs: first
    after: dict[str, list] = {}       # producer output -> the Q/DQ nodes that follow its producer
    for t in selection.tensors:
        scale, zero = activation_params(*ranges[t])
        scales[t] = scale
        s_name, z_name = const(f"{t}_scale", np.array(scale, np.float32)), const(f"{t}_zero_point", np.array(zero))
        q_out = fresh(f"{t}_quantized")
        if t in graph_inputs:
            dq_out = fresh(f"{t}_dequantized")
            for node in g.node:
                for k, name in enumerate(node.input):
                    if name == t:
                        node.input[k] = dq_out
            src, target = t, before
        else:
            src = fresh(f"{t}_float")
            for node in g.node:
                for k, name in enumerate(node.output):
                    if name == t:
                        node.output[k] = src
            dq_out, target = t, after.setdefault(src, [])
        target.append(helper.make_node("QuantizeLinear", [src, s_name, z_name], [q_out],
                                       name=fresh(f"{t}_QuantizeLinear")))
        target.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out],
                                       name=fresh(f"{t}_DequantizeLinear")))

    dq_weights: dict[tuple, str] = {}
    by_name = {node_name(n, i): n for i, n in enumerate(g.node)}
    for qn in selection.nodes:
        node = by_name[qn.name]
        weight_key = (qn.weight, qn.weight_axis)
        w_float = numpy_helper.to_array(inits[qn.weight])
        q, w_scale = weight_params(w_float, qn.weight_axis, per_channel, reduce_range)
        if weight_key not in dq_weights:
            axis = {"axis": qn.weight_axis} if per_channel else {}
            qw = const(f"{qn.weight}_quantized", q)
            ws = const(f"{qn.weight}_scale", w_scale)
            wz = const(f"{qn.weight}_zero_point", np.zeros(w_scale.shape, np.int8))
            out = fresh(f"{qn.weight}_DequantizeLinear_Output")
            before.append(helper.make_node("DequantizeLinear", [qw, ws, wz], [out],
                                           name=fresh(f"{qn.weight}_DequantizeLinear"), **axis))
            dq_weights[weight_key] = out
        node.input[1] = dq_weights[weight_key]
        if qn.bias is not None:
            b = numpy_helper.to_array(inits[qn.bias]).astype(np.float64)
            b_scale = (scales[qn.input] * w_scale).astype(np.float32)
            b_scale = np.where(b_scale > 0, b_scale, np.float32(1.0)).astype(np.float32)
            qb = np.clip(np.round(b / b_scale.astype(np.float64)), INT32.min, INT32.max).astype(np.int32)
            qb_name = const(f"{qn.bias}_quantized", qb)
            bs = const(f"{qn.bias}_scale", b_scale)
            bz = const(f"{qn.bias}_zero_point", np.zeros(b_scale.shape, np.int32))
            out = fresh(f"{qn.bias}_DequantizeLinear_Output")
            axis = {"axis": 0} if per_channel else {}
            before.append(helper.make_node("DequantizeLinear", [qb_name, bs, bz], [out],
                                           name=fresh(f"{qn.bias}_DequantizeLinear"), **axis))
            node.input[2] = out

    nodes = list(before)
    for node in g.node:
        nodes.append(node)
        for o in node.output:
            nodes.extend(after.get(o, []))
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    drop_unused_initializers(m)
    if note:
        entry = next((p for p in m.metadata_props if p.key == METADATA_KEY), None) or m.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, note
    return m


# --- what a QDQ model's int8 layers save ----------------------------------------------------------

@dataclass(frozen=True)
class Int8Weight:
    """A Conv/Gemm/MatMul whose weight is stored as 8-bit integers behind a DequantizeLinear."""
    node: str
    op_type: str
    weight: str
    shape: tuple[int, ...]
    per_channel: bool
    float_bytes: int     # the weight as float32
    int8_bytes: int      # the integers plus their scales and zero points

    @property
    def saved_bytes(self) -> int:
        return self.float_bytes - self.int8_bytes


def int8_weights(model) -> list[Int8Weight]:
    """The int8 layers of a QDQ model, read from the ONNX graph (a float model has none)."""
    from onnx import TensorProto
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    dq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits}
    out = []
    for i, node in enumerate(g.node):
        if node.op_type not in ("Conv", "Gemm", "MatMul", "ConvTranspose") or len(node.input) < 2:
            continue
        d = dq.get(node.input[1])
        if d is None or inits[d.input[0]].data_type not in (TensorProto.INT8, TensorProto.UINT8):
            continue
        w = inits[d.input[0]]
        size = int(np.prod(w.dims)) if w.dims else 1
        extra = sum(int(np.prod(inits[x].dims)) * (4 if k == 1 else 1) if inits[x].dims else (4 if k == 1 else 1)
                    for k, x in enumerate(d.input[1:3], start=1) if x in inits)
        per_channel = bool(d.input[1] in inits and int(np.prod(inits[d.input[1]].dims or [1])) > 1)
        out.append(Int8Weight(node.name or f"{node.op_type}_{i}", node.op_type, d.input[0], tuple(w.dims),
                              per_channel, 4 * size, size + extra))
    return out


def is_quantized(model) -> bool:
    """Whether the model already holds QuantizeLinear/DequantizeLinear or QLinear* nodes."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
               or n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger", "MatMulInteger")
               for n in model.graph.node)
