"""Quantized ONNX models imported with reference semantics: QuantizeLinear and DequantizeLinear run as
native kernels (round half to even, saturate) and QOperator nodes as DequantizeLinear -> float op ->
QuantizeLinear, so convc gives onnxruntime's answer with its graph optimizations off (its own
reference lowering) and the ONNX node tests' expected outputs."""
from __future__ import annotations

import functools
import importlib

import numpy as np
import onnx
import onnx.backend.test.case.node as node_cases
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.errors import UnsupportedOpError
from convc.ops.quant import QuantAttrs
from convc.ops.quant import quantize as quantize_reference


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 1, batch: int | None = None):
    m = convc.compile(model, threads=threads, batch=batch, cache=False)
    out = m.run(feeds)
    return list(out.values()) if isinstance(out, dict) else list(out)


def ort_run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], optimized: bool = True) -> list[np.ndarray]:
    so = ort.SessionOptions()
    if not optimized:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


# --- ONNX's node tests, with integer inputs fed at run time ---------------------------------------------
@functools.cache
def _cases() -> dict[str, object]:
    """The node cases of the four ops (importing a case module records its cases; collecting all of
    onnx's would take half a minute)."""
    for module in ("quantizelinear", "dequantizelinear", "qlinearconv", "qlinearmatmul"):
        importlib.import_module(f"onnx.backend.test.case.node.{module}")
    return {c.name: c for c in node_cases._NodeTestCases if any(k in c.name for k in ("quantizelinear", "qlinear"))}


def fed_at_run_time(case, data: list[str]) -> onnx.ModelProto:
    """The case's model with the inputs ``data`` fed at run time and the others (scales, zero points)
    as initializers. An integer data input x becomes a float32 input and QuantizeLinear(x, 1, 0) of
    x's type in front of its readers: exact for integer values, and the integer tensor is computed at
    run time, so the compiled DequantizeLinear/QLinear kernels run (convc's backend would otherwise
    compile integer inputs in as constants and fold the node at import)."""
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    g = m.graph
    values = dict(zip([vi.name for vi in case.model.graph.input], case.data_sets[0][0]))
    nodes = []
    for vi in list(g.input):
        t = vi.type.tensor_type.elem_type
        if vi.name not in data:
            v = values[vi.name]  # float8 and 4-bit data stay TensorProtos
            tensor = v if isinstance(v, TensorProto) else numpy_helper.from_array(np.asarray(v))
            tensor.name = vi.name
            g.initializer.append(tensor)
            g.input.remove(vi)
        elif t in (TensorProto.UINT8, TensorProto.INT8):
            q = f"{vi.name}__q"
            for n in g.node:
                n.input[:] = [q if i == vi.name else i for i in n.input]
            one = numpy_helper.from_array(np.array(1.0, np.float32), f"{vi.name}__one")
            zero = numpy_helper.from_array(np.array(0, helper.tensor_dtype_to_np_dtype(t)), f"{vi.name}__zero")
            g.initializer.extend([one, zero])
            nodes.append(helper.make_node("QuantizeLinear", [vi.name, one.name, zero.name], [q]))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    rest = list(g.node)
    del g.node[:]
    g.node.extend(nodes + rest)
    return m


# the data inputs of each case (the first input, and the weight or B of the products)
COMPUTED = {"test_quantizelinear": ["x"], "test_quantizelinear_axis": ["x"], "test_dequantizelinear": ["x"],
            "test_dequantizelinear_axis": ["x"], "test_qlinearconv": ["x", "w"],
            **{f"test_qlinearmatmul_{d}_{t}_float32": ["a", "b"] for d in ("2D", "3D") for t in ("uint8", "int8")}}


@pytest.mark.parametrize("name", sorted(COMPUTED))
def test_onnx_node_case_runs_compiled(name):
    case = _cases()[name]
    data = COMPUTED[name]
    values = dict(zip([vi.name for vi in case.model.graph.input], case.data_sets[0][0]))
    got = run(fed_at_run_time(case, data), {k: np.asarray(values[k]).astype(np.float32) for k in data})
    expected = case.data_sets[0][1]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = np.asarray(e)
        assert g.dtype == e.dtype and g.shape == e.shape
        np.testing.assert_allclose(g, e, rtol=case.rtol, atol=case.atol)


REFUSED = {
    "test_quantizelinear_int16": "int16", "test_quantizelinear_uint16": "uint16",
    "test_dequantizelinear_int16": "int16",
    "test_quantizelinear_e4m3fn": "float8", "test_dequantizelinear_e5m2": "float8",
    "test_quantizelinear_int4": "int4", "test_dequantizelinear_uint4": "uint4",
    "test_quantizelinear_blocked_asymmetric": "block quantization", "test_dequantizelinear_blocked": "block",
    "test_qlinearmatmul_2D_uint8_float16": "float16",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_unsupported_variants_are_named(name):
    """int16, 4-bit, float8, block quantization, float16 scales: UnsupportedOpError naming the node and why."""
    case = _cases()[name]
    first = case.model.graph.input[0]
    fed = [first.name] if first.type.tensor_type.elem_type == TensorProto.FLOAT else []  # else all constants
    with pytest.raises(UnsupportedOpError) as e:
        convc.compile(fed_at_run_time(case, fed), cache=False)
    msg = str(e.value)
    assert case.model.graph.node[-1].op_type in msg
    assert REFUSED[name].split()[0] in msg.lower()


# --- single ops on a grid, against the numpy reference and onnxruntime ------------------------------
def _qdq_model(shape, to: int, per_channel: bool, dequantize: bool, rng):
    """x -> QuantizeLinear [-> DequantizeLinear], with random scales and zero points; (model, scale, zero point)."""
    c = shape[1]
    scale = (rng.uniform(0.01, 0.1, c) if per_channel else np.array(rng.uniform(0.01, 0.1))).astype(np.float32)
    np_t = helper.tensor_dtype_to_np_dtype(to)
    lo, hi = (0, 255) if to == TensorProto.UINT8 else (-128, 127)
    zp = rng.integers(lo + 60, hi - 60, scale.shape).astype(np_t)
    inits = [numpy_helper.from_array(scale, "s"), numpy_helper.from_array(zp, "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1)]
    if dequantize:
        nodes.append(helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1))
    out = helper.make_tensor_value_info("y" if dequantize else "q", TensorProto.FLOAT if dequantize else to, shape)
    g = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)], [out], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), scale, zp


@pytest.mark.parametrize("shape,to,per_channel,dequantize,threads", [
    ((16, 5, 29, 23), TensorProto.UINT8, False, True, 2),
    ((16, 5, 29, 23), TensorProto.INT8, True, True, 1),
    ((1, 7, 3, 5), TensorProto.UINT8, True, False, 2),
    ((32, 16, 9, 9), TensorProto.INT8, False, False, 1),
])
def test_quantize_dequantize_grid(shape, to, per_channel, dequantize, threads):
    """Odd sizes leave vector remainders; the input holds exact ties (k + 0.5 steps: half to even),
    values far out of range (saturation) and -0.0."""
    rng = np.random.default_rng(sum(shape))
    model, scale, zp = _qdq_model(shape, to, per_channel, dequantize, rng)
    bshape = (1, shape[1], 1, 1) if per_channel else ()
    steps = rng.integers(-300, 300, shape) + rng.choice([0.0, 0.5, 0.25], shape)
    x = (steps * scale.reshape(bshape)).astype(np.float32)
    x.reshape(-1)[:3] = [1e9, -1e9, -0.0]
    got = run(model, {"x": x}, threads=threads)[0]
    q = quantize_reference(QuantAttrs(1, np.dtype(helper.tensor_dtype_to_np_dtype(to)).name), x, scale.reshape(-1),
                           zp.reshape(-1))[0]
    expected = ort_run(model, {"x": x})[0]
    if not dequantize:
        np.testing.assert_array_equal(q, expected)  # the numpy reference is onnxruntime's quantization
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype
