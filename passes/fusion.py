"""Epilogue fusion: work a Conv, ConvTranspose or Gemm (``OpGroup.EPILOGUE``) can do while its output
is still in registers.

Two rules, applied in execution order so that Conv -> Add -> Relu ends as one op:

- residual: ``Add(y, r)`` (or a two-input Sum) where ``y`` is the only use of the output of such an
  op with an empty epilogue and ``r`` has ``y``'s shape becomes that producer with ``r`` as its last
  input, computing ``y + r``;
- activation: an activation declared fusible (``OpDef.fusible``) reading the only use of a
  producer's output becomes its epilogue activation.

The producer's output must not be a graph output, since fusing would change the value stored there.

Before those, gates become one unary op (``fuse_gates``), so that a conv whose output feeds both sides
of a product still has one reader and the gate fuses into its epilogue like any activation; after
no conv, the gate is one elementwise kernel instead of two or four:

- ``x * Sigmoid(x)`` -> Swish (SiLU), and ``x * Sigmoid(c x)`` -> Swish(alpha=c);
- ``x * HardSigmoid(x)`` with alpha 1/6, beta 1/2 -> HardSwish;
- ``x * Clip(x + 3, 0, 6) / 6`` (the division, or a multiplication by 1/6, on either side of the
  product) -> HardSwish;
- ``x * 0.5 * (1 + Erf(x / sqrt 2))`` (the products in any order) -> Gelu.

Every intermediate must be read only by the next op of the pattern (and not be a graph output).

Last, a squeeze-and-excitation ``Mul(x, s)`` read only by a conv becomes that conv's input scale
(``fuse_input_scale``).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from convc.passes.rewrite import absorb, add_const, is_constant, note, record_absorbed, record_origin, \
    single_consumer, take_output

from convc.ir import Graph, Op
from convc.ops import NoAttrs, OpGroup, OpKind, layout, op_def
from convc.ops.conv import ConvAttrs
from convc.ops.elementwise import GeluAttrs, SwishAttrs

ADDITION = frozenset({OpKind.ADD, OpKind.SUM})


def _fusible_producer(g: Graph, tensor: str, reader: Op) -> Op | None:
    producer = g.producer(tensor)
    if producer is None or producer.kind not in OpGroup.EPILOGUE or single_consumer(g, tensor) is not reader:
        return None
    return producer


def fuse_activation(g: Graph, act: Op) -> bool:
    producer = _fusible_producer(g, act.inputs[0], act)
    if producer is None:
        p = g.producer(act.inputs[0])
        if p is not None and p.kind in OpGroup.EPILOGUE:
            note(g, act.name, f"not fused: the output of {p.name!r} is also read elsewhere (or is a graph output)")
        return False
    epi = producer.attrs.epilogue
    if epi.activation is not None:
        note(g, act.name, f"not fused: {producer.name!r} already applies {epi.activation.value}")
        return False
    epi = dataclasses.replace(epi, activation=act.kind, activation_attrs=act.attrs)
    absorb(g, producer, act, dataclasses.replace(producer.attrs, epilogue=epi))
    return True


def fuse_residual(g: Graph, add: Op) -> bool:
    if len(add.inputs) != 2 or add.inputs[0] == add.inputs[1]:
        return False
    out = g.tensor(add.outputs[0])
    if any(g.tensor(t).type != out.type for t in add.inputs):
        return False  # a broadcasting add is not a residual
    candidates = []
    for side in (0, 1):
        producer = _fusible_producer(g, add.inputs[side], add)
        if producer is not None and producer.attrs.epilogue.empty:
            candidates.append((side, producer))
    if not candidates:
        return False
    side, producer = candidates[0]
    if len(candidates) == 2:  # the later producer in the op order: its residual is ready
        # (the order is a topological sort of the whole graph: only for an Add of two fusible
        # producers, not for every residual Add, which made this pass quadratic in the model's size)
        position = {op.name: i for i, op in enumerate(g.ops())}
        side, producer = max(candidates, key=lambda c: (position[c[1].name], c[0]))
    epi = dataclasses.replace(producer.attrs.epilogue, residual=True)
    absorb(g, producer, add, dataclasses.replace(producer.attrs, epilogue=epi),
           producer.inputs + (add.inputs[1 - side],))
    return True


# --- gates: x * f(x) as one unary op ------------------------------------------------------------------
def _scalar(g: Graph, tensor: str) -> float | None:
    """The value of a one-element constant, else None."""
    if not is_constant(g, tensor) or g.tensor(tensor).data is None or g.tensor(tensor).data.size != 1:
        return None
    return float(np.asarray(g.tensor(tensor).data).reshape(-1)[0])


def _feeder(g: Graph, tensor: str, reader: Op, *kinds: OpKind) -> Op | None:
    """The op of one of ``kinds`` producing ``tensor``, when ``reader`` is its only reader."""
    producer = g.producer(tensor)
    if producer is None or producer.kind not in kinds or single_consumer(g, tensor) is not reader:
        return None
    return producer


def _operands(g: Graph, op: Op) -> list[tuple[str, str]]:
    """(a, b) for both orders of a two-input op's inputs (one, for Div)."""
    a, b = op.inputs
    return [(a, b)] if op.kind is OpKind.DIV else [(a, b), (b, a)]


def _times_scalar(g: Graph, op: Op, value: float) -> str | None:
    """The other input of ``op`` when it multiplies by ``value`` (or divides by 1/value)."""
    for a, c in _operands(g, op):
        k = _scalar(g, c)
        if k is not None and np.isclose(k if op.kind is OpKind.MUL else 1.0 / k, value, rtol=1e-6, atol=0.0):
            return a
    return None


def _sigmoid_gate(g: Graph, mul: Op) -> tuple[str, object, list[Op]] | None:
    if mul.kind is not OpKind.MUL:
        return None
    for x, s in _operands(g, mul):
        sig = _feeder(g, s, mul, OpKind.SIGMOID)
        if sig is None:
            continue
        if sig.inputs[0] == x:
            return x, SwishAttrs(), [sig]
        scale = _feeder(g, sig.inputs[0], sig, OpKind.MUL)
        if scale is not None:
            for a, c in _operands(g, scale):
                alpha = _scalar(g, c)
                if a == x and alpha is not None:
                    return x, SwishAttrs(alpha), [sig, scale]
    return None


def _hard_sigmoid_gate(g: Graph, mul: Op) -> tuple[str, object, list[Op]] | None:
    if mul.kind is not OpKind.MUL:
        return None
    for x, h in _operands(g, mul):
        hs = _feeder(g, h, mul, OpKind.HARD_SIGMOID)
        if hs is not None and hs.inputs[0] == x and np.isclose(hs.attrs.alpha, 1.0 / 6.0, rtol=1e-6) \
                and hs.attrs.beta == 0.5:
            return x, NoAttrs(), [hs]
    return None


def _relu6_of_x_plus_3(g: Graph, t: str, reader: Op) -> tuple[str, list[Op]] | None:
    """(x, [Clip, Add]) when ``t`` = Clip(x + 3, 0, 6) read only by ``reader``."""
    clip = _feeder(g, t, reader, OpKind.CLIP)
    if clip is None or clip.attrs.min != 0.0 or clip.attrs.max != 6.0:
        return None
    add = _feeder(g, clip.inputs[0], clip, OpKind.ADD)
    if add is None:
        return None
    for x, c in _operands(g, add):
        if _scalar(g, c) == 3.0:
            return x, [clip, add]
    return None


def _clip_gate(g: Graph, last: Op) -> tuple[str, object, list[Op]] | None:
    """x * Clip(x + 3, 0, 6) / 6 ending in ``last``: (x * clip) / 6, or x * (clip / 6)."""
    inner = _times_scalar(g, last, 1.0 / 6.0) if last.kind in (OpKind.MUL, OpKind.DIV) else None
    if inner is not None:  # last = (x * clip) / 6
        prod = _feeder(g, inner, last, OpKind.MUL)
        for x, c in _operands(g, prod) if prod is not None else []:
            found = _relu6_of_x_plus_3(g, c, prod)
            if found is not None and found[0] == x:
                return x, NoAttrs(), [prod] + found[1]
    if last.kind is OpKind.MUL:  # last = x * (clip / 6)
        for x, d in _operands(g, last):
            scaled = _feeder(g, d, last, OpKind.MUL, OpKind.DIV)
            clip_out = _times_scalar(g, scaled, 1.0 / 6.0) if scaled is not None else None
            found = _relu6_of_x_plus_3(g, clip_out, scaled) if clip_out is not None else None
            if found is not None and found[0] == x:
                return x, NoAttrs(), [scaled] + found[1]
    return None


def _product_leaves(g: Graph, op: Op, depth: int = 2) -> tuple[list[str], list[Op]]:
    """The factors of the Mul ``op``, looking through Muls whose output only ``op`` reads (``depth``
    levels): (leaf tensors, the inner Muls)."""
    leaves, inner = [], []
    for t in op.inputs:
        sub = _feeder(g, t, op, OpKind.MUL) if depth > 0 else None
        if sub is None:
            leaves.append(t)
        else:
            sub_leaves, sub_inner = _product_leaves(g, sub, depth - 1)
            leaves += sub_leaves
            inner += [sub] + sub_inner
    return leaves, inner


def _gelu_gate(g: Graph, last: Op) -> tuple[str, object, list[Op]] | None:
    """x * 0.5 * (1 + Erf(x / sqrt 2)), the products in any order (PyTorch's export of nn.GELU
    before opset 20)."""
    if last.kind is not OpKind.MUL:
        return None
    leaves, inner = _product_leaves(g, last)
    halves = [t for t in leaves if _scalar(g, t) is not None and np.isclose(_scalar(g, t), 0.5, rtol=1e-6)]
    if len(leaves) != 3 or len(halves) != 1:
        return None
    for e in leaves:
        add = _feeder(g, e, next(op for op in [last] + inner if e in op.inputs), OpKind.ADD)
        if add is None:
            continue
        erf_out = None
        for a, one in _operands(g, add):
            if _scalar(g, one) == 1.0:
                erf_out = a
        erf_op = _feeder(g, erf_out, add, OpKind.ERF) if erf_out is not None else None
        scaled = _feeder(g, erf_op.inputs[0], erf_op, OpKind.MUL, OpKind.DIV) if erf_op is not None else None
        x = _times_scalar(g, scaled, 1.0 / math.sqrt(2.0)) if scaled is not None else None
        if x is not None and sorted(leaves) == sorted([x, halves[0], e]):
            return x, GeluAttrs(), inner + [add, erf_op, scaled]
    return None


GATES = [(OpKind.SWISH, _sigmoid_gate), (OpKind.HARD_SWISH, _hard_sigmoid_gate), (OpKind.HARD_SWISH, _clip_gate),
         (OpKind.GELU, _gelu_gate)]


def fuse_gate(g: Graph, last: Op) -> bool:
    """Rewrite the gate ending in ``last`` (a Mul or Div) into one unary op that keeps ``last``'s name
    and output; the pattern's other ops are removed."""
    if len(last.inputs) != 2:
        return False
    for kind, match in GATES:
        found = match(g, last)
        if found is None:
            continue
        x, attrs, others = found
        if g.tensor(x).type != g.tensor(last.outputs[0]).type:
            continue  # a broadcasting product is not a gate
        g.set_inputs(last, (x,))
        for op in others:  # each one's output is read only by the op before it in the list
            g.remove_op(op)
            record_absorbed(g, last.name, op.name)
        last.kind, last.attrs = kind, attrs
        return True
    return False


def fuse_gates(g: Graph) -> Graph:
    for op in g.ops():
        if op.name in g.nx and op.kind in (OpKind.MUL, OpKind.DIV):
            fuse_gate(g, op)
    return g


def fuse_input_scale(g: Graph, mul: Op) -> bool:
    """A squeeze-and-excitation tail, ``Mul(x, s)`` with ``s`` a run-time (N, C, 1, 1) scale, read only by
    a conv (2-D, one group, constant W, more than 4 input channels: the channels-last implicit GEMM,
    passes/kernel_selection.py): the conv reads ``x`` and scales it itself (``ConvAttrs.input_scale``),
    so the scaled copy of ``x`` is never written. codegen/kernels/conv_nhwc.py scales the packed weights
    per image instead (C x M multiplies against the conv's H x W x C x M)."""
    if len(mul.inputs) != 2 or mul.inputs[0] == mul.inputs[1]:
        return False
    (out,) = mul.outputs
    conv = single_consumer(g, out)
    if conv is None or conv.kind is not OpKind.CONV or conv.inputs[0] != out:
        return False
    a = conv.attrs
    if a.input_scale or a.channels_last or a.group != 1 or a.spatial_rank != 2 or not is_constant(g, conv.inputs[1]):
        return False
    y = g.tensor(out)
    if y.dtype != np.float32 or len(y.shape) != 4 or y.shape[1] <= 4:
        return False
    for x, scale in (mul.inputs, mul.inputs[::-1]):
        tx, ts = g.tensor(x), g.tensor(scale)
        if tx.type == y.type and ts.shape == y.shape[:2] + (1, 1) and ts.dtype == y.dtype and not is_constant(g, scale):
            g.set_inputs(conv, (x,) + conv.inputs[1:] + (scale,))
            g.remove_op(mul)
            conv.attrs = dataclasses.replace(a, input_scale=True)
            record_absorbed(g, conv.name, mul.name)
            return True
    return False


def matmul_as_pointwise_conv(g: Graph, mm: Op) -> bool:
    """``MatMul(x, B)`` of a channels-last activation x (N, H, W, C) by a constant B (C, M) (ConvNeXt's Linear
    layers between permutes) is a 1x1 conv in channels-last layout with W = B^T: it then runs as the
    implicit GEMM, and what follows fuses into it as into any conv: a constant bias Add (M,) becomes its bias,
    a constant per-channel Mul after it (ConvNeXt's layer scale) is folded into W and the bias, and the
    activation after that (GELU) its epilogue."""
    x, w = mm.inputs
    tx, tw = g.tensor(x), g.tensor(w)
    if len(tx.shape) != 4 or tx.dtype != np.float32 or not is_constant(g, w) or len(tw.shape) != 2 or \
            tw.dtype != np.float32 or tx.shape[0] * tx.shape[1] * tx.shape[2] == 1:
        return False
    c, m = tw.shape
    weight = add_const(g, f"{w}_as_conv", np.ascontiguousarray(np.asarray(tw.data).T.reshape(m, c, 1, 1)))
    attrs = ConvAttrs(kernel_shape=(1, 1), strides=(1, 1), pads=(0, 0, 0, 0), dilations=(1, 1),
                      layout=layout.CHANNELS_LAST)
    (y,) = mm.outputs
    g.remove_op(mm, remove_outputs=False)
    conv = g.add_op(OpKind.CONV, attrs, [x, weight], name=f"{mm.name}_conv")
    take_output(g, conv, y)
    record_origin(g, conv.name, mm.name)
    bias = None
    while True:  # the constant per-channel Add and Mul after it, in any order
        nxt = single_consumer(g, conv.outputs[0])
        if nxt is None or nxt.kind not in (OpKind.ADD, OpKind.MUL) or len(nxt.inputs) != 2 or \
                conv.outputs[0] in g.outputs:
            break
        other = nxt.inputs[1] if nxt.inputs[0] == conv.outputs[0] else nxt.inputs[0]
        t = g.tensor(other)
        if not is_constant(g, other) or t.size != m or (t.shape and t.shape[-1] != m) or t.dtype != np.float32:
            break
        v = np.asarray(t.data, dtype=np.float64).reshape(m)
        if nxt.kind is OpKind.ADD:
            bias = v if bias is None else bias + v
        else:
            w64 = np.asarray(g.tensor(conv.inputs[1]).data, dtype=np.float64) * v.reshape(m, 1, 1, 1)
            conv_w = add_const(g, f"{w}_scaled", w64.astype(np.float32))
            g.set_inputs(conv, (conv.inputs[0], conv_w) + conv.inputs[2:])
            bias = None if bias is None else bias * v
        inputs = conv.inputs[:2] + ((add_const(g, f"{w}_bias", bias.astype(np.float32)),) if bias is not None else ())
        absorb(g, conv, nxt, conv.attrs, inputs)
    return True


def fuse_epilogues(g: Graph) -> Graph:
    for op in g.ops():
        if op.kind is OpKind.MATMUL:
            matmul_as_pointwise_conv(g, op)
    fuse_gates(g)
    for op in g.ops():
        if op.name not in g.nx:  # already fused into its producer
            continue
        if op_def(op.kind).fusible:
            fuse_activation(g, op)
        elif op.kind in ADDITION:
            fuse_residual(g, op)
    for op in g.ops():  # after the residuals: the scale is the conv's last input
        if op.kind is OpKind.MUL:
            fuse_input_scale(g, op)
    return g
