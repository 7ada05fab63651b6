"""QuantizeLinear, DequantizeLinear (opsets 10-21) and the QOperator nodes: QLinearConv and QLinearMatMul
of the default domain, and the com.microsoft ones onnxruntime's ``quantize_static(...,
quant_format=QuantFormat.QOperator)`` writes (QGemm, QLinearAdd, QLinearMul, QLinearGlobalAveragePool,
QLinearConcat, QLinearSigmoid, QLinearLeakyRelu; opset 1 of com.microsoft, as onnxruntime writes it).

Scales and zero points must be constants (QDQ files from onnxruntime's ``quantize_static`` and
from ``convc quantize`` always have them so). convc computes with uint8 and int8 tensors, int8
weights and int32 biases, per tensor or per channel (``axis``); every other quantized variant
(int16, int4, float8, block quantization, float16 scales) is refused with the reason, and the
model's other unsupported nodes are listed with it.

A QOperator node imports as what it means, DequantizeLinear -> float op -> QuantizeLinear, with
its constant weights and bias dequantized at import: passes/quantize.py turns the pattern into an
integer kernel where it can, as it does for a QDQ model.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx.defs import OpSchema

from convc.frontend.onnx.context import NodeContext, Unsupported
from convc.frontend.onnx.conv import conv
from convc.frontend.onnx.gemm import matmul
from convc.frontend.onnx.registry import CONVERTERS, converter
from convc.frontend.onnx_export import exporter
from convc.ir import Op
from convc.ops import OpKind
from convc.ops.attrs import onnx_spelling
from convc.ops.quant import QUANTIZED, QUANTIZED_CONSTANTS, QuantAttrs, dequantize

_WHY = "convc computes with uint8/int8 activations, int8 weights and int32 biases"


def _axis(ctx: NodeContext, rank: int, scale: str) -> int:
    """The channel axis of a per-channel scale, non-negative (a per-tensor scale ignores it)."""
    axis = int(ctx.attr("axis", 1))
    if ctx.state.values[scale].size == 1:
        return 1
    if not -rank <= axis < rank:
        raise ctx.error(f"axis={axis} is out of range for an input of rank {rank}")
    return axis % rank


def _params(ctx: NodeContext, scale_at: int, zp_at: int, rank: int, default: str) -> tuple[str, str, str]:
    """(scale, zero point, quantized type) as constants of shape (1,) or (channels,). Raises
    Unsupported for the variants convc does not compute."""
    if int(ctx.attr("block_size", 0)) != 0:
        raise Unsupported(f"block quantization (block_size={ctx.attr('block_size')}); {_WHY}, per tensor or channel")
    scale = np.asarray(ctx.constant(scale_at))
    if scale.dtype != np.float32:
        raise Unsupported(f"scale has dtype {scale.dtype}; convc takes float32 scales")
    if scale.ndim > 1:
        raise Unsupported(f"scale has shape {scale.shape}: block quantization; {_WHY}, per tensor or channel")
    if ctx.has_input(zp_at):
        zp = np.asarray(ctx.constant(zp_at))
    else:
        zp = np.zeros(scale.shape, dtype=default)
    if zp.dtype.name not in QUANTIZED and not (zp.dtype == np.int32 and ctx.op_type == "DequantizeLinear"):
        raise Unsupported(f"quantized type {_type_name(ctx, zp_at, zp.dtype)}; {_WHY}")
    if zp.size != scale.size:  # (1,) against () is the same single value
        raise ctx.error(f"scale has shape {scale.shape} but zero point {zp.shape}")
    s = ctx.fresh_tensor("scale")
    z = ctx.fresh_tensor("zero_point")
    ctx.state.values[s] = scale.reshape(-1).astype(np.float32)
    ctx.state.values[z] = zp.reshape(-1)
    return s, z, zp.dtype.name


def _type_name(ctx: NodeContext, i: int, dtype: np.dtype) -> str:
    """The ONNX name of a zero point's element type (float8 and 4-bit types have no numpy name)."""
    return str(dtype) if dtype.kind in "iuf" else f"{dtype} (input {ctx.inputs[i]!r})"


def _output_type(ctx: NodeContext) -> str:
    """QuantizeLinear's type when it has no zero point: opset 21's output_dtype, else uint8."""
    to = int(ctx.attr("output_dtype", 0))
    if to == 0:
        return "uint8"
    name = onnx.TensorProto.DataType.Name(to).lower()
    if name not in QUANTIZED:
        raise Unsupported(f"output_dtype={name.upper()}; {_WHY}")
    return name


def _record(ctx: NodeContext, name: str, q: np.ndarray, scale: np.ndarray, zp: np.ndarray, axis: int) -> None:
    """Remember the integers behind a constant DequantizeLinear folded at import (int8 weights, int32
    biases), by the folded tensor's name: passes/quantize.py multiplies with them instead of the floats."""
    if name in ctx.state.values:
        ctx.graph.metadata.setdefault(QUANTIZED_CONSTANTS, {})[name] = (np.asarray(q), np.asarray(scale).reshape(-1),
                                                                        np.asarray(zp).reshape(-1), axis)


@converter("QuantizeLinear", since=10)
def quantize_linear(ctx: NodeContext) -> None:
    x = ctx.input_type(0)
    if x.dtype != np.float32:
        raise Unsupported(f"input has dtype {x.dtype}; convc quantizes float32 tensors")
    s, z, to = _params(ctx, 1, 2, len(x.shape), _output_type(ctx))
    ctx.add_op(OpKind.QUANTIZE_LINEAR, QuantAttrs(_axis(ctx, len(x.shape), s), to), [ctx.inputs[0], s, z])


@converter("DequantizeLinear", since=10)
def dequantize_linear(ctx: NodeContext) -> None:
    x = ctx.input_type(0)
    if x.dtype.name not in (*QUANTIZED, "int32"):
        raise Unsupported(f"input has dtype {x.dtype}; {_WHY}")
    s, z, to = _params(ctx, 1, 2, len(x.shape), x.dtype.name)
    if to != x.dtype.name:
        raise ctx.error(f"input has dtype {x.dtype} but the zero point {to}")
    axis = _axis(ctx, len(x.shape), s)
    ctx.add_op(OpKind.DEQUANTIZE_LINEAR, QuantAttrs(axis, to), [ctx.inputs[0], s, z])
    if ctx.is_constant(0) and ctx.has_input(0):
        _record(ctx, ctx.outputs[0], ctx.constant(0), ctx.state.values[s], ctx.state.values[z], axis)


def _dequantized(ctx: NodeContext, x: int, scale: int, zp: int, axis: int) -> str:
    """Input ``x`` of a QOperator node as float32: DequantizeLinear with its scale and zero point."""
    t = ctx.input_type(x)
    if t.dtype.name not in QUANTIZED:
        raise Unsupported(f"input #{x} has dtype {t.dtype}; {_WHY}")
    sub = dataclasses.replace(ctx, attrs={"axis": axis})
    s, z, to = _params(sub, scale, zp, len(t.shape), t.dtype.name)
    out = ctx.fresh_tensor(f"dequantized{x}")
    axis = axis if ctx.state.values[s].size > 1 else 1
    ctx.add_op(OpKind.DEQUANTIZE_LINEAR, QuantAttrs(axis, to), [ctx.inputs[x], s, z], [out])
    if ctx.is_constant(x):
        _record(ctx, out, ctx.constant(x), ctx.state.values[s], ctx.state.values[z], axis)
    return out


def _requantized(ctx: NodeContext, y: str, scale: int, zp: int) -> None:
    """The float result ``y`` of a QOperator node quantized into the node's output."""
    sub = dataclasses.replace(ctx, attrs={})
    s, z, to = _params(sub, scale, zp, len(ctx.state.type_of(y).shape), "uint8")
    ctx.add_op(OpKind.QUANTIZE_LINEAR, QuantAttrs(1, to), [y, s, z])


@converter("QLinearConv", since=10)
def qlinear_conv(ctx: NodeContext) -> None:
    """x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point[, B (int32)]."""
    x = _dequantized(ctx, 0, 1, 2, 1)
    w = _dequantized(ctx, 3, 4, 5, 0)  # per output channel when w_scale has one value per channel
    inputs = [x, w]
    if ctx.has_input(8):
        bias = np.asarray(ctx.constant(8))
        if bias.dtype != np.int32:
            raise ctx.error(f"B has dtype {bias.dtype}, expected int32")
        # B is in units of x_scale * w_scale (onnxruntime adds it to the int32 accumulator)
        x_scale, w_scale = (np.asarray(ctx.constant(i), np.float32).reshape(-1) for i in (1, 4))
        scale = x_scale * w_scale
        b = ctx.fresh_tensor("bias")
        zero = np.zeros(scale.shape, np.int32)
        ctx.state.values[b] = dequantize(QuantAttrs(0), bias, scale.astype(np.float32), zero)[0]
        _record(ctx, b, bias, scale.astype(np.float32), zero, 0)
        inputs.append(b)
    y = ctx.fresh_tensor("accumulated")
    conv(dataclasses.replace(ctx, inputs=tuple(inputs), outputs=(y,)))
    _requantized(ctx, y, 6, 7)


@converter("QLinearMatMul", since=10)
def qlinear_matmul(ctx: NodeContext) -> None:
    """a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point."""
    for i in (1, 4, 6):
        if np.asarray(ctx.constant(i)).dtype != np.float32:
            raise Unsupported(f"input #{i} (a scale) has dtype {np.asarray(ctx.constant(i)).dtype}; "
                              "convc takes float32 scales")
    a = _dequantized(ctx, 0, 1, 2, 1)
    b_rank = len(ctx.input_shape(3))
    b = _dequantized(ctx, 3, 4, 5, b_rank - 1)  # a per-column scale of B
    y = ctx.fresh_tensor("accumulated")
    matmul(dataclasses.replace(ctx, inputs=(a, b), outputs=(y,)))
    _requantized(ctx, y, 6, 7)


# --- com.microsoft QOperator nodes (onnxruntime's ContribOperators.md) ----------------------------------
CONTRIB_DOMAIN = "com.microsoft"
CONTRIB_OPSET = 1  # the version onnxruntime's quantization tools write for the domain


def _schema(op_type: str, inputs: str, output: str, attrs: tuple[OpSchema.Attribute, ...] = ()) -> OpSchema:
    """A com.microsoft schema for the importer's attribute and arity checks: ``inputs`` spaced names, an
    optional one ending in ``?``, a variadic one in ``*``."""
    option = OpSchema.FormalParameterOption
    params = [OpSchema.FormalParameter(n.rstrip("?*"), "T", is_homogeneous=not n.endswith("*"),
                                       param_option=option.Optional if n.endswith("?") else
                                       option.Variadic if n.endswith("*") else option.Single)
              for n in inputs.split()]
    types = [("T", ["tensor(float)", "tensor(uint8)", "tensor(int8)", "tensor(int32)"], "")]
    return OpSchema(op_type, CONTRIB_DOMAIN, CONTRIB_OPSET, inputs=params,
                    outputs=[OpSchema.FormalParameter(output, "T")], type_constraints=types, attributes=list(attrs))


def _float_attr(name: str, value: float) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, onnx.helper.make_attribute(name, value), "")


def _int_attr(name: str, value: int | None = None) -> OpSchema.Attribute:
    if value is None:
        return OpSchema.Attribute(name, OpSchema.AttrType.INT, "", required=True)
    return OpSchema.Attribute(name, onnx.helper.make_attribute(name, value), "")


_BINARY = "A A_scale A_zero_point? B B_scale B_zero_point? C_scale C_zero_point?"
_UNARY = "X X_scale X_zero_point? Y_scale Y_zero_point?"
CONTRIB_SCHEMAS: dict[str, OpSchema] = {
    "QGemm": _schema("QGemm", "A a_scale a_zero_point B b_scale b_zero_point C? y_scale? y_zero_point?", "Y",
                     (_float_attr("alpha", 1.0), _int_attr("transA", 0), _int_attr("transB", 0))),
    "QLinearAdd": _schema("QLinearAdd", _BINARY, "C"),
    "QLinearMul": _schema("QLinearMul", _BINARY, "C"),
    "QLinearGlobalAveragePool": _schema("QLinearGlobalAveragePool", "X x_scale x_zero_point y_scale y_zero_point", "Y",
                                        (_int_attr("channels_last", 0),)),
    "QLinearConcat": _schema("QLinearConcat", "Y_scale Y_zero_point inputs*", "Y", (_int_attr("axis"),)),
    "QLinearSigmoid": _schema("QLinearSigmoid", _UNARY, "Y"),
    "QLinearLeakyRelu": _schema("QLinearLeakyRelu", _UNARY, "Y", (_float_attr("alpha", 0.01),)),
}


def _float_op(ctx: NodeContext, op_type: str, inputs: list[str], attrs: dict | None = None, y: str = "") -> str:
    """The default-domain ``op_type`` on float ``inputs`` (its converter, at the model's opset) into ``y`` (default
    a fresh tensor); returns ``y``."""
    y = y or ctx.fresh_tensor("float")
    CONVERTERS.lookup(op_type, ctx.opset)(dataclasses.replace(ctx, inputs=tuple(inputs), outputs=(y,),
                                                              attrs=attrs or {}))
    return y


def _binary(op_type: str) -> None:
    def convert(ctx: NodeContext) -> None:
        """A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point: per-tensor parameters,
        numpy broadcasting."""
        a, b = _dequantized(ctx, 0, 1, 2, 1), _dequantized(ctx, 3, 4, 5, 1)
        _requantized(ctx, _float_op(ctx, op_type, [a, b]), 6, 7)
    convert.__name__ = f"qlinear_{op_type.lower()}"
    converter(f"QLinear{op_type}", since=1)(convert)


_binary("Add")
_binary("Mul")


def _unary(op_type: str, *attrs: str) -> None:
    def convert(ctx: NodeContext) -> None:
        """X, X_scale, X_zero_point, Y_scale, Y_zero_point."""
        x = _dequantized(ctx, 0, 1, 2, 1)
        _requantized(ctx, _float_op(ctx, op_type, [x], {a: ctx.attr(a) for a in attrs}), 3, 4)
    convert.__name__ = f"qlinear_{op_type.lower()}"
    converter(f"QLinear{op_type}", since=1)(convert)


_unary("Sigmoid")
_unary("LeakyRelu", "alpha")


@converter("QLinearGlobalAveragePool", since=1)
def qlinear_global_average_pool(ctx: NodeContext) -> None:
    """X, x_scale, x_zero_point, y_scale, y_zero_point; ``channels_last`` 1 means an (N, H, W, C) input."""
    if int(ctx.attr("channels_last")) != 0:
        raise Unsupported("channels_last=1 (an NHWC input); convc takes the (N, C, H, W) form onnxruntime's "
                          "quantize_static writes")
    x = _dequantized(ctx, 0, 1, 2, 1)
    _requantized(ctx, _float_op(ctx, "GlobalAveragePool", [x]), 3, 4)


@converter("QLinearConcat", since=1)
def qlinear_concat(ctx: NodeContext) -> None:
    """Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) for each input."""
    if len(ctx.inputs) < 5 or (len(ctx.inputs) - 2) % 3:
        raise ctx.error(f"has {len(ctx.inputs)} inputs; QLinearConcat takes Y_scale, Y_zero_point and "
                        "(X, X_scale, X_zero_point) triples")
    xs = [_dequantized(ctx, i, i + 1, i + 2, 1) for i in range(2, len(ctx.inputs), 3)]
    _requantized(ctx, _float_op(ctx, "Concat", xs, {"axis": ctx.attr("axis")}), 0, 1)


@converter("QGemm", since=1)
def qgemm(ctx: NodeContext) -> None:
    """A, a_scale, a_zero_point, B, b_scale, b_zero_point, C (int32, optional), y_scale, y_zero_point (both
    omitted: a float32 output). onnxruntime adds C to the int32 accumulator and multiplies the sum by
    alpha * a_scale * b_scale (one b_scale per output column)."""
    trans_a, trans_b, alpha = int(ctx.attr("transA")), int(ctx.attr("transB")), float(ctx.attr("alpha"))
    a = _dequantized(ctx, 0, 1, 2, 1)
    b = _dequantized(ctx, 3, 4, 5, 0 if trans_b else 1)
    inputs = [a, b]
    if ctx.has_input(6):
        bias = np.asarray(ctx.constant(6))
        if bias.dtype != np.int32:
            raise ctx.error(f"C has dtype {bias.dtype}, expected int32")
        a_scale, b_scale = (np.asarray(ctx.constant(i), np.float32).reshape(-1) for i in (1, 4))
        scale = (a_scale * b_scale * np.float32(alpha)).astype(np.float32)
        if bias.ndim > 1 or bias.size not in (1, ctx.input_shape(3)[0 if trans_b else 1]):
            raise Unsupported(f"C has shape {bias.shape}; convc takes a bias per output column")
        c = ctx.fresh_tensor("bias")
        zero = np.zeros(scale.shape, np.int32)
        ctx.state.values[c] = (bias.astype(np.float64) * scale.astype(np.float64)).astype(np.float32)
        if alpha == 1.0 and bias.size == scale.size:
            _record(ctx, c, bias, scale, zero, 0)
        inputs.append(c)
    quantized = ctx.has_input(7)
    y = _float_op(ctx, "Gemm", inputs, {"alpha": alpha, "beta": 1.0, "transA": trans_a, "transB": trans_b},
                  "" if quantized else ctx.outputs[0])
    if quantized:
        _requantized(ctx, y, 7, 8)


@exporter(OpKind.QUANTIZE_LINEAR, OpKind.DEQUANTIZE_LINEAR)
def _export(w, op: Op) -> None:
    """Written back as the ONNX node it came from: x, scale and zero point (of the quantized type) and axis."""
    w.node(op.kind.value, list(op.inputs), list(op.outputs), op.name, **onnx_spelling(op.attrs, w.opset)[0])
