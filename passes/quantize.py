"""Integer convs: DequantizeLinear -> Conv/Gemm/MatMul [-> Relu/Clip] -> QuantizeLinear becomes one Int8Conv.

A QDQ model (onnxruntime's ``quantize_static``, ``convc quantize``) says "this conv reads uint8/int8
values and its output is quantized again" with float ops between DequantizeLinear and QuantizeLinear.
Imported as written, convc runs that float conv (exact reference semantics). This pass runs the conv
on the integers instead: the int8 weights and int32 bias the importer recorded
(``QUANTIZED_CONSTANTS``), int32 accumulation, and the requantization to the output's scale and zero
point fused into the kernel's epilogue (convc/ops/quant.py defines it, codegen/kernels/int8_conv.py
runs it). A fused ReLU or Clip becomes a narrower clamp of the quantized output (quantization is
monotonic, so Q(relu(y)) = max(Q(y), Q(0))).

It applies when (otherwise the float path stays, with a note for ``convc profile``):
- the conv runs channels last (passes/layout.py converts per-tensor QuantizeLinear/DequantizeLinear
  with it), is plain or depthwise 2-D, and its epilogue has no residual;
- its input is a per-tensor DequantizeLinear of uint8/int8 values, and its output's only reader a
  per-tensor QuantizeLinear;
- it has more than 4 input channels or is depthwise (an RGB stem is no faster in int8: see the note it leaves);
- its weight is a folded int8 DequantizeLinear with zero points 0 (per tensor or per output channel)
  and its bias absent, a folded int32 DequantizeLinear with scale x_scale * w_scale (as quantize_static
  writes it: added to the accumulator exactly) or any float constant (added in float, divided by y_scale).

A Gemm (no transA, alpha = beta = 1, any transB) or a MatMul of 2-D operands with a constant int8
right operand runs as a 1x1 Int8Conv over its (N, K) input viewed as (N, 1, 1, K) (Reshape views, no copy).

A residual Add of two per-tensor DequantizeLinears, one of an Int8Conv's output read by nothing else,
followed by a per-tensor QuantizeLinear, folds into that conv's epilogue: the conv's integers as the model
quantizes them, then onnxruntime's QLinearAdd arithmetic with the other integers (convc/ops/quant.py,
Int8Residual), so the sum never exists in float32.

A channels-last 2-D MaxPool between a per-tensor DequantizeLinear and a QuantizeLinear of the same type,
scale (> 0) and zero point runs on the integers (Int8MaxPool): dequantization is then increasing, so the
max commutes with it, and Q(DQ(q)) = q, so the result is the same integers.

A channels-last GlobalAveragePool of a 2-D image between per-tensor DequantizeLinear and QuantizeLinear
runs on the integers (Int8GlobalAveragePool: an int32 sum requantized as onnxruntime's
QLinearGlobalAveragePool does).

Other float ops between (non-residual Add, average pooling) stay float on dequantized values, as the model has
them.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from convc.passes.dce import eliminate_dead_code
from convc.passes.rewrite import note, record_absorbed, record_origin, single_consumer, take_output

from convc.ir import Graph, Op
from convc.ops import OpKind
from convc.ops.epilogue import NO_EPILOGUE
from convc.ops.quant import QUANTIZED, QUANTIZED_CONSTANTS, Int8ConvAttrs, Int8GlobalPoolAttrs, Int8Residual, quantize
from convc.ops.shape import ReshapeAttrs

INT8_ACTIVATIONS = (OpKind.RELU, OpKind.CLIP)
FEW_CHANNELS = 4  # plain convs with at most this many input channels (an RGB stem) stay float32


def int8_convs(g: Graph) -> Graph:
    """Rewrite every DQ -> Conv -> Q the module docstring describes; drop the recorded integers."""
    g = int8_global_average_pools(int8_max_pools(g))
    known = g.metadata.pop(QUANTIZED_CONSTANTS, None)
    if not known:
        return g
    for q in [op for op in g.ops() if op.kind is OpKind.QUANTIZE_LINEAR]:
        conv = g.producer(q.inputs[0])
        if conv is None or conv.kind not in (OpKind.CONV, OpKind.GEMM, OpKind.MATMUL):
            continue
        found = (_match if conv.kind is OpKind.CONV else _match_product)(g, conv, q, known)
        if isinstance(found, str):
            note(g, conv.name, f"stays float32: {found}")
            continue
        _rewrite(g, conv, q, *found)
    for q in [op for op in g.ops() if op.kind is OpKind.QUANTIZE_LINEAR]:
        add = g.producer(q.inputs[0])
        if add is not None and add.kind is OpKind.ADD:
            found = _match_residual(g, add, q)
            if isinstance(found, str):
                note(g, add.name, f"stays float32: {found}")
            else:
                _fold_residual(g, add, q, *found)
    return eliminate_dead_code(g)


def _scalar(g: Graph, name: str) -> float:
    return float(np.asarray(g.tensor(name).data).reshape(-1)[0])


def _match(g: Graph, conv: Op, q: Op, known: dict):
    """(x, attrs, weight, bias) of the Int8Conv replacing ``conv`` and ``q``, or why not."""
    a = conv.attrs
    if not a.channels_last or a.spatial_rank != 2:
        return "not a channels-last 2-D conv"
    if single_consumer(g, q.inputs[0]) is not q:
        return "its float output is read by more than the QuantizeLinear"
    epi = a.epilogue
    if epi.residual or (epi.activation is not None and epi.activation not in INT8_ACTIVATIONS):
        return "its fused epilogue is not ReLU or Clip"
    dq = g.producer(conv.inputs[0])
    if dq is None or dq.kind is not OpKind.DEQUANTIZE_LINEAR or g.tensor(dq.inputs[1]).size != 1:
        return "its input is not a per-tensor DequantizeLinear"
    x = dq.inputs[0]
    if g.tensor(x).dtype.name not in QUANTIZED or g.tensor(q.inputs[1]).size != 1:
        return "its output is not quantized per tensor to uint8/int8"
    w = known.get(conv.inputs[1])
    if w is None or w[0].dtype != np.int8 or np.any(w[2] != 0) or (w[1].size > 1 and w[3] != 0):
        return "its weight is not a constant int8 DequantizeLinear with zero points 0 per output channel"
    m, cg = w[0].shape[:2]
    c = g.tensor(x).shape[3]
    if not (a.group == 1 or (a.group == c == m and cg == 1)):
        return f"group={a.group} (Int8Conv runs plain and depthwise convs)"
    if a.group == 1 and c <= FEW_CHANNELS:
        return (f"{c} input channels: a stem conv, no faster on Int8Conv than on the float32 few-channel kernel "
                "(gathering 3-byte taps costs what the integer multiply saves: ResNet-18 with its 7x7 stem in "
                "int8 ran 2-6% slower on AVX2)")
    bias_name = conv.inputs[2] if len(conv.inputs) > 2 + epi.residual else None
    bias, fields = _requantization(g, dq, q, w[1], m, bias_name, epi, known)
    attrs = Int8ConvAttrs(kernel_shape=tuple(a.kernel_shape), strides=tuple(a.strides),
                          pads=(a.pads[0], a.pads[1], a.pads[2], a.pads[3]), dilations=tuple(a.dilations),
                          group=a.group, **fields)
    return x, attrs, w[0], bias


def _requantization(g: Graph, dq: Op, q: Op, w_scale: np.ndarray, m: int, bias_name: str | None, epi, known: dict):
    """(int32 bias, the Int8ConvAttrs fields of the epilogue) for an integer product between ``dq`` and ``q``."""
    xs, ys = np.float32(_scalar(g, dq.inputs[1])), np.float32(_scalar(g, q.inputs[1]))
    acc_scale = (xs * np.broadcast_to(w_scale.astype(np.float32), (m,))).astype(np.float32)
    bias, offset = np.zeros(m, np.int32), np.zeros(m, np.float32)
    if bias_name is not None:
        recorded = known.get(bias_name)
        if recorded is not None and recorded[0].dtype == np.int32 and not np.any(recorded[2]) and \
                recorded[0].size == m and \
                np.array_equal(np.broadcast_to(recorded[1].astype(np.float32), (m,)), acc_scale):
            bias = recorded[0].astype(np.int32).reshape(m)
        else:  # a float bias: added in float, in units of y_scale
            offset = (np.broadcast_to(np.asarray(g.tensor(bias_name).data, np.float32).reshape(-1), (m,)) / ys)
            offset = offset.astype(np.float32)
    to, yzp = g.tensor(q.outputs[0]).dtype.name, int(_scalar(g, q.inputs[2]))
    lo, hi = QUANTIZED[to]
    if epi.activation is not None:
        bounds = np.array([0.0, np.inf] if epi.activation is OpKind.RELU else
                          [epi.activation_attrs.min, epi.activation_attrs.max], np.float32)
        qb = quantize(q.attrs, bounds, np.array([ys], np.float32), np.array([yzp], np.dtype(to)))[0].astype(int)
        lo, hi = max(lo, int(qb[0])), min(hi, int(qb[1]))
    return bias, dict(x_zero_point=int(_scalar(g, dq.inputs[2])),
                      multiplier=tuple(float(v) for v in (acc_scale / ys).astype(np.float32)),
                      offset=tuple(float(v) for v in offset), y_zero_point=yzp, to=to, lo=lo, hi=hi)


def _match_product(g: Graph, op: Op, q: Op, known: dict):
    """(x, attrs, weight, bias) of a 1x1 Int8Conv over x viewed as (N, 1, 1, K) replacing a Gemm (no
    transA, alpha = beta = 1) or a MatMul of 2-D operands with a constant right operand, or why not."""
    if single_consumer(g, q.inputs[0]) is not q:
        return "its float output is read by more than the QuantizeLinear"
    epi = op.attrs.epilogue if op.kind is OpKind.GEMM else NO_EPILOGUE
    if epi.residual or (epi.activation is not None and epi.activation not in INT8_ACTIVATIONS):
        return "its fused epilogue is not ReLU or Clip"
    if op.kind is OpKind.GEMM and (op.attrs.trans_a or op.attrs.alpha != 1 or op.attrs.beta != 1):
        return "transA, alpha or beta is not the default"
    dq = g.producer(op.inputs[0])
    if dq is None or dq.kind is not OpKind.DEQUANTIZE_LINEAR or g.tensor(dq.inputs[1]).size != 1:
        return "its input is not a per-tensor DequantizeLinear"
    x = dq.inputs[0]
    if len(g.tensor(x).shape) != 2 or g.tensor(x).dtype.name not in QUANTIZED or g.tensor(q.inputs[1]).size != 1:
        return "its input is not 2-D or its output is not quantized per tensor to uint8/int8"
    w = known.get(op.inputs[1])
    trans = op.kind is OpKind.GEMM and op.attrs.trans_b
    if w is None or w[0].dtype != np.int8 or w[0].ndim != 2 or np.any(w[2] != 0) or \
            (w[1].size > 1 and w[3] != (0 if trans else 1)):
        return "its weight is not a constant int8 DequantizeLinear with zero points 0 per output column"
    wm = w[0] if trans else w[0].T  # (M, K)
    m = wm.shape[0]
    bias_name = op.inputs[2] if op.kind is OpKind.GEMM and len(op.inputs) > 2 else None
    if bias_name is not None and g.tensor(bias_name).size not in (1, m):
        return "its bias is not one value per output column"
    bias, fields = _requantization(g, dq, q, w[1], m, bias_name, epi, known)
    attrs = Int8ConvAttrs(kernel_shape=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1), group=1, **fields)
    return x, attrs, np.ascontiguousarray(wm.reshape(m, -1, 1, 1)), bias


def _rewrite(g: Graph, conv: Op, q: Op, x: str, attrs: Int8ConvAttrs, w: np.ndarray, bias: np.ndarray) -> None:
    target = q.outputs[0]
    flat = len(g.tensor(x).shape) == 2  # a Gemm/MatMul: (N, K) viewed as (N, 1, 1, K), the output back as (N, M)
    if flat:
        n, k = g.tensor(x).shape
        x = g.add_op(OpKind.RESHAPE, ReshapeAttrs((n, 1, 1, k)), [x], [g.fresh_name(f"{x}_nhwc")],
                     name=g.fresh_name(f"{conv.name}_input_view")).outputs[0]
    wname = g.add_constant(g.fresh_name(f"{conv.name}/w_int8"), np.ascontiguousarray(w)).name
    bname = g.add_constant(g.fresh_name(f"{conv.name}/bias_int32"), np.ascontiguousarray(bias)).name
    new = g.add_op(OpKind.INT8_CONV, attrs, [x, wname, bname], [g.fresh_name(f"{target}_int8")],
                   name=g.fresh_name(f"{conv.name}_int8"))
    g.remove_op(q, remove_outputs=False)
    g.remove_op(conv)
    if flat:
        out = g.add_op(OpKind.RESHAPE, ReshapeAttrs(g.tensor(target).shape), [new.outputs[0]],
                       [g.fresh_name(f"{target}_flat")], name=g.fresh_name(f"{conv.name}_output_view"))
        take_output(g, out, target)
        record_origin(g, out.name, conv.name)
    else:
        take_output(g, new, target)
    record_origin(g, new.name, conv.name)


def int8_max_pools(g: Graph) -> Graph:
    """Rewrite every DequantizeLinear -> MaxPool -> QuantizeLinear the module docstring describes."""
    for q in [op for op in g.ops() if op.kind is OpKind.QUANTIZE_LINEAR]:
        pool = g.producer(q.inputs[0])
        if pool is None or pool.kind is not OpKind.MAX_POOL:
            continue
        found = _match_max_pool(g, pool, q)
        if isinstance(found, str):
            note(g, pool.name, f"stays float32: {found}")
            continue
        target = q.outputs[0]
        new = g.add_op(OpKind.INT8_MAX_POOL, pool.attrs, [found[0]], [g.fresh_name(f"{target}_int8")],
                       name=g.fresh_name(f"{pool.name}_int8"))
        g.remove_op(q, remove_outputs=False)
        g.remove_op(pool)
        take_output(g, new, target)
        record_origin(g, new.name, pool.name)
    return eliminate_dead_code(g)


def _match_max_pool(g: Graph, pool: Op, q: Op) -> str | tuple[str]:
    """(the integer input of the Int8MaxPool replacing ``pool`` and ``q``,), or why not (a sentence)."""
    if not pool.attrs.channels_last or pool.attrs.spatial_rank != 2:
        return "not a channels-last 2-D max pool"
    if len(pool.outputs) > 1 or single_consumer(g, pool.outputs[0]) is not q:
        return "its float output is read by more than the QuantizeLinear"
    dq = g.producer(pool.inputs[0])
    if dq is None or dq.kind is not OpKind.DEQUANTIZE_LINEAR:
        return "its input is not a DequantizeLinear"
    x = dq.inputs[0]
    if g.tensor(dq.inputs[1]).size != 1 or g.tensor(q.inputs[1]).size != 1:
        return "its DequantizeLinear or QuantizeLinear is per channel"
    xs, ys = _scalar(g, dq.inputs[1]), _scalar(g, q.inputs[1])
    xz, yz = _scalar(g, dq.inputs[2]), _scalar(g, q.inputs[2])
    if g.tensor(x).dtype != g.tensor(q.outputs[0]).dtype or xs != ys or xz != yz or not xs > 0:
        return (f"its input and output quantization differ (scale {xs} vs {ys}, zero point {xz:g} vs {yz:g}, "
                f"{g.tensor(x).dtype} vs {g.tensor(q.outputs[0]).dtype}) or the scale is not positive")
    return (x,)


def _match_residual(g: Graph, add: Op, q: Op):
    """(Int8Conv, the residual's integers, Int8Residual, its DequantizeLinear) of a foldable Add, or why not."""
    if single_consumer(g, add.outputs[0]) is not q or g.tensor(q.inputs[1]).size != 1:
        return "its output is read by more than one per-tensor QuantizeLinear"
    dqs = [g.producer(t) for t in add.inputs[:2]]
    if any(d is None or d.kind is not OpKind.DEQUANTIZE_LINEAR or g.tensor(d.inputs[1]).size != 1 for d in dqs):
        return "its inputs are not both per-tensor DequantizeLinears"
    shape = g.tensor(add.outputs[0]).shape
    if any(g.tensor(t).shape != shape for t in add.inputs[:2]):
        return "it broadcasts"
    for side, dq in enumerate(dqs):
        conv = g.producer(dq.inputs[0])
        if conv is not None and conv.kind is OpKind.INT8_CONV and conv.attrs.residual is None and \
                single_consumer(g, dq.inputs[0]) is dq and single_consumer(g, dq.outputs[0]) is add:
            break
    else:
        return "neither input is the only use of an Int8Conv's output"
    other = dqs[1 - side]
    if g.tensor(other.inputs[0]).dtype.name not in QUANTIZED:
        return "the other input is not uint8/int8"
    f32 = np.float32
    sc, zc = f32(_scalar(g, q.inputs[1])), f32(_scalar(g, q.inputs[2]))
    rc, ro = f32(_scalar(g, dq.inputs[1])) / sc, f32(_scalar(g, other.inputs[1])) / sc
    za, zb = (f32(_scalar(g, d.inputs[2])) for d in (dqs[0], dqs[1]))
    ra, rb = (rc, ro) if side == 0 else (ro, rc)
    fixed = f32(zc - f32(f32(ra * za) + f32(rb * zb)))
    a = conv.attrs
    residual = Int8Residual(a.y_zero_point, a.lo, a.hi, int(_scalar(g, other.inputs[2])), float(rc), float(ro),
                            float(fixed), side == 0)
    return conv, other.inputs[0], residual


def _fold_residual(g: Graph, add: Op, q: Op, conv: Op, r: str, residual: Int8Residual) -> None:
    to = g.tensor(q.outputs[0]).dtype.name
    lo, hi = QUANTIZED[to]
    attrs = dataclasses.replace(conv.attrs, y_zero_point=int(_scalar(g, q.inputs[2])), to=to, lo=lo, hi=hi,
                                residual=residual)
    target = q.outputs[0]
    new = g.add_op(OpKind.INT8_CONV, attrs, [*conv.inputs, r], [g.fresh_name(f"{target}_int8")],
                   name=g.fresh_name(f"{conv.name}_residual"))
    dq = g.consumers(conv.outputs[0])[0]
    g.remove_op(q, remove_outputs=False)
    g.remove_op(add)
    g.remove_op(dq)
    g.remove_op(conv)
    take_output(g, new, target)
    record_origin(g, new.name, conv.name)
    record_absorbed(g, new.name, add.name)


def int8_global_average_pools(g: Graph) -> Graph:
    """Rewrite every per-tensor DequantizeLinear -> channels-last GlobalAveragePool -> QuantizeLinear."""
    for q in [op for op in g.ops() if op.kind is OpKind.QUANTIZE_LINEAR]:
        pool = g.producer(q.inputs[0])
        if pool is None or pool.kind is not OpKind.GLOBAL_AVERAGE_POOL:
            continue
        dq = g.producer(pool.inputs[0])
        why = None
        if not pool.attrs.channels_last or len(g.tensor(pool.inputs[0]).shape) != 4:
            why = "not a channels-last 2-D pool"
        elif single_consumer(g, pool.outputs[0]) is not q or g.tensor(q.inputs[1]).size != 1:
            why = "its output is read by more than one per-tensor QuantizeLinear"
        elif dq is None or dq.kind is not OpKind.DEQUANTIZE_LINEAR or g.tensor(dq.inputs[1]).size != 1 or \
                g.tensor(dq.inputs[0]).dtype.name not in QUANTIZED:
            why = "its input is not a per-tensor DequantizeLinear of uint8/int8"
        if why:
            note(g, pool.name, f"stays float32: {why}")
            continue
        _, h, w, _ = g.tensor(pool.inputs[0]).shape
        f32 = np.float32
        scale = f32(_scalar(g, dq.inputs[1])) / (f32(_scalar(g, q.inputs[1])) * f32(h * w))
        attrs = Int8GlobalPoolAttrs(int(_scalar(g, dq.inputs[2])), float(f32(scale)), int(_scalar(g, q.inputs[2])),
                                    g.tensor(q.outputs[0]).dtype.name)
        target = q.outputs[0]
        new = g.add_op(OpKind.INT8_GLOBAL_AVERAGE_POOL, attrs, [dq.inputs[0]], [g.fresh_name(f"{target}_int8")],
                       name=g.fresh_name(f"{pool.name}_int8"))
        g.remove_op(q, remove_outputs=False)
        g.remove_op(pool)
        take_output(g, new, target)
        record_origin(g, new.name, pool.name)
    return eliminate_dead_code(g)
