"""QOperator models (onnxruntime's quantize_static with QuantFormat.QOperator): QLinearConv and the
com.microsoft nodes QGemm, QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearConcat, QLinearSigmoid
and QLinearLeakyRelu, each against onnxruntime, which runs them as integer kernels."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from nets import mobilenet_like, quantize, resnet_like
from onnx import TensorProto, helper, numpy_helper
from test_int8_conv import _run, logits_step, ort_run

import convc
from convc.driver import load_graph
from convc.ops import OpKind
from convc.passes.pipeline import pipeline


def qoperator(kind: str) -> onnx.ModelProto:
    """7-bit weights (reduce_range): onnxruntime's AVX2 QLinearConv and QGemm are exact only with those (with
    8-bit weights their vpmaddubsw saturates pairs of products, and they differ from the integer arithmetic)."""
    build = {"resnet": resnet_like, "mobilenet": mobilenet_like}[kind]
    calibration = np.random.default_rng(5).normal(size=(8, 3, 32, 32)).astype(np.float32)
    return quantize(build(), calibration, reduce_range=True, qoperator=True)


def test_qoperator_resnet_runs_its_convs_and_classifier_on_integers():
    model = qoperator("resnet")
    ops = {(n.domain, n.op_type) for n in model.graph.node}
    assert {("com.microsoft", "QLinearAdd"), ("com.microsoft", "QLinearGlobalAveragePool"),
            ("com.microsoft", "QGemm"), ("", "QLinearConv")} <= ops
    kinds = [op.kind for op in pipeline(load_graph(model, batch=2)).order]
    # 7 convs but the 3-channel stem, and QGemm as a 1x1 conv
    assert kinds.count(OpKind.INT8_CONV) == 6 and kinds.count(OpKind.CONV) == 1 and OpKind.GEMM not in kinds


@pytest.mark.slow
@pytest.mark.parametrize("kind,batch,threads", [("resnet", 16, 2), ("mobilenet", 16, 1)])
def test_qoperator_net_against_onnxruntime(kind, batch, threads):
    """The tolerance of test_int8_conv.py::test_int8_net_against_onnxruntime (at most 2% of the logits off,
    by at most 3 quantization steps); seen here: equal bit for bit."""
    model = qoperator(kind)
    x = np.random.default_rng(11).normal(size=(batch, 3, 32, 32)).astype(np.float32)
    got = _run(convc.compile(model, batch=batch, threads=threads, cache=False), {"x": x})
    err = np.abs(got - ort_run(model, x, optimized=True)) / logits_step(model)
    assert np.mean(err > 0.5) <= 0.02 and err.max() <= 3, (err.max(), np.mean(err > 0.5))


# --- single com.microsoft nodes ------------------------------------------------------------------
def _model(node: onnx.NodeProto, inputs: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray],
           float_out: bool = False, ms_opset: int = 1) -> onnx.ModelProto:
    """``node`` between QuantizeLinear of each float input ``k`` (with constants ``k_s``, ``k_z``) and, unless
    it has a float output, DequantizeLinear of its output ``y`` (``y_s``, ``y_z``) into ``out``."""
    nodes = [helper.make_node("QuantizeLinear", [f"{k}_f", f"{k}_s", f"{k}_z"], [k]) for k in inputs]
    nodes.append(node)
    if not float_out:
        nodes.append(helper.make_node("DequantizeLinear", ["y", "y_s", "y_z"], ["out"]))
    g = helper.make_graph(nodes, "single", [helper.make_tensor_value_info(f"{k}_f", TensorProto.FLOAT, shape)
                                            for k, shape in inputs.items()],
                          [helper.make_tensor_value_info("y" if float_out else "out", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in consts.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft",
                                                                                                  ms_opset)])


def _params(prefix: str, scale: float, zp: int, dtype=np.uint8) -> dict[str, np.ndarray]:
    return {f"{prefix}_s": np.array(scale, np.float32), f"{prefix}_z": np.array(zp, dtype)}


def _feeds(rng: np.random.Generator, shapes: dict[str, tuple[int, ...]], consts: dict[str, np.ndarray]):
    """Float inputs that quantize to integers spread over the whole range of their type."""
    feeds = {}
    for k, shape in shapes.items():
        info = np.iinfo(consts[f"{k}_z"].dtype)
        q = rng.integers(info.min, info.max + 1, shape)
        feeds[f"{k}_f"] = ((q - int(consts[f"{k}_z"])) * consts[f"{k}_s"]).astype(np.float32)
    return feeds


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _case(name: str, rng: np.random.Generator):
    """(node, input shapes, constants) of one per-op case; odd sizes leave vector remainders."""
    t = np.int8 if name.endswith("int8") else np.uint8
    if name.startswith(("add", "mul")):
        op = "QLinearAdd" if name.startswith("add") else "QLinearMul"
        c = {**_params("a", 0.031, 7 if t == np.int8 else 131, t), **_params("b", 0.017, -3 if t == np.int8 else 90, t),
             **_params("y", 0.043 if op == "QLinearAdd" else 0.29, 5 if t == np.int8 else 120, t)}
        node = helper.make_node(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"], ["y"], domain="com.microsoft")
        return node, {"a": (16, 13, 7, 9), "b": (16, 13, 1, 9)}, c
    if name in ("sigmoid", "leaky_relu"):
        op, attrs = ("QLinearSigmoid", {}) if name == "sigmoid" else ("QLinearLeakyRelu", {"alpha": 0.13})
        c = {**_params("a", 0.05, 128), **_params("y", 1 / 256 if op == "QLinearSigmoid" else 0.04, 0 if
                                                    op == "QLinearSigmoid" else 100)}
        node = helper.make_node(op, ["a", "a_s", "a_z", "y_s", "y_z"], ["y"], domain="com.microsoft", **attrs)
        return node, {"a": (16, 13, 7, 9)}, c
    if name == "global_average_pool":
        c = {**_params("a", 0.05, 128), **_params("y", 0.0021, 119)}
        node = helper.make_node("QLinearGlobalAveragePool", ["a", "a_s", "a_z", "y_s", "y_z"], ["y"],
                                domain="com.microsoft", channels_last=0)
        return node, {"a": (16, 13, 31, 29)}, c
    if name == "concat":
        c = {**_params("y", 0.04, 128), **_params("a", 0.05, 120), **_params("b", 0.02, 10)}
        node = helper.make_node("QLinearConcat", ["y_s", "y_z", "a", "a_s", "a_z", "b", "b_s", "b_z"], ["y"],
                                domain="com.microsoft", axis=1)
        return node, {"a": (16, 13, 7, 9), "b": (16, 5, 7, 9)}, c
    # QGemm: per-column int8 weights, an int32 bias; gemm_float has no y_scale (a float32 output)
    trans_b, alpha = name != "gemm_trans0", (0.75 if name == "gemm_alpha" else 1.0)
    w = rng.integers(-64, 64, (11, 37) if trans_b else (37, 11)).astype(np.int8)
    c = {"w": w, "w_s": rng.uniform(0.001, 0.01, 11).astype(np.float32), "w_z": np.zeros(11, np.int8),
         "bias": rng.integers(-3000, 3000, 11).astype(np.int32), **_params("a", 0.05, 128), **_params("y", 0.07, 100)}
    ins = ["a", "a_s", "a_z", "w", "w_s", "w_z", "bias"] + ([] if name == "gemm_float" else ["y_s", "y_z"])
    node = helper.make_node("QGemm", ins, ["y"], domain="com.microsoft", transB=int(trans_b), alpha=alpha)
    return node, {"a": (16, 37)}, c


CASES = ["add", "add_int8", "mul", "mul_int8", "sigmoid", "leaky_relu", "global_average_pool", "concat", "gemm",
         "gemm_trans0", "gemm_alpha", "gemm_float"]


@pytest.mark.parametrize("name", CASES)
def test_com_microsoft_op_against_onnxruntime(name, rng):
    """onnxruntime computes these in float (QLinearAdd/Mul, pools) or through lookup tables (Sigmoid,
    LeakyRelu) before rounding, convc dequantizes, runs the float op and quantizes: a value that lands within
    a float32 rounding of a half step may round the other way, so at most one step apart, on few values."""
    node, shapes, consts = _case(name, rng)
    feeds = _feeds(rng, shapes, consts)
    model = _model(node, shapes, consts, float_out=name == "gemm_float")
    expected = _ort(model, feeds)
    got = _run(convc.compile(model, batch=16, threads=2, cache=False), feeds)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if name == "gemm_float":
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        return
    steps = np.abs(got - expected) / consts["y_s"]
    assert len(np.unique(expected)) > 20  # not saturated: the requantization is exercised
    assert steps.max() <= 1.001 and np.mean(steps > 0.5) <= 0.01, (steps.max(), np.mean(steps > 0.5))


def test_other_com_microsoft_ops_and_opsets_are_listed_as_unsupported(rng):
    """Only the QOperator nodes import from com.microsoft, at its opset 1; the rest are listed with the model's
    other unsupported nodes."""
    node, shapes, consts = _case("add", rng)
    other = helper.make_node("FusedMatMul", ["a", "a"], ["z"], domain="com.microsoft", name="fused<1>")
    model = _model(node, shapes, consts)
    model.graph.node.append(other)
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    with pytest.raises(convc.UnsupportedOpError) as e:
        convc.compile(model, batch=16, cache=False)
    assert [(n[0], n[1]) for n in e.value.nodes] == [("fused<1>", "FusedMatMul")]  # the QLinearAdd imports
    assert "domain 'com.microsoft' is not supported" in str(e.value)
    with pytest.raises(convc.UnsupportedOpError, match="imports opset 2 of com.microsoft"):
        convc.compile(_model(node, shapes, consts, ms_opset=2), batch=16, cache=False)


def test_malformed_com_microsoft_nodes_are_named(rng):
    """A QLinearConcat without whole (X, scale, zero point) triples, a QGemm with a float C: the node's name
    and the offending values in a ModelImportError."""
    node, shapes, consts = _case("concat", rng)
    del node.input[-1]
    node.name = "cat'0"
    with pytest.raises(convc.ModelImportError, match=r"cat'0.*has 7 inputs"):
        convc.compile(_model(node, shapes, consts), batch=16, cache=False)
    node, shapes, consts = _case("gemm", rng)
    consts["bias"] = consts["bias"].astype(np.float32)
    with pytest.raises(convc.ModelImportError, match="C has dtype float32, expected int32"):
        convc.compile(_model(node, shapes, consts), batch=16, cache=False)


def test_profile_shows_int8_layers_with_their_integer_weight_bytes():
    """`convc profile`'s per-layer table on a QDQ ResNet-style net: the integer convs and classifier say so,
    with their int8 weights and int32 biases as their bytes; the float stem stays "Conv" with float bytes."""
    from test_int8_conv import qdq
    layers = {layer.name: layer for layer in convc.profile(qdq("resnet"), batch=2).layers}
    assert (layers["conv5"].op, layers["conv5"].weight_bytes) == ("Conv (int8)", 16 * 16 * 3 * 3 + 4 * 16)
    assert (layers["fc"].op, layers["fc"].weight_bytes) == ("Gemm (int8)", 10 * 32 + 4 * 10)
    assert (layers["conv1"].op, layers["conv1"].weight_bytes) == ("Conv", 4 * (16 * 3 * 3 * 3 + 16))
    # the residual Add runs in the epilogue of the conv that feeds it
    assert layers["conv9_1"].op == "Conv+Add (int8)" and "add12" in layers["conv9_1"].members
