"""LayerNormalization (opset 17): import, the compiled kernel at real sizes against onnxruntime, ConvNeXt's
channels-last use, Scale/B broadcasting, export, and the refusals; InstanceNormalization, which the importer
builds from it."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_import_helpers import check_model, make_model, op_kinds, run_onnx

import convc
from convc.frontend.onnx_export import ExportError, export_onnx
from convc.ops import OpKind


def ln_model(shape, axis=-1, epsilon=None, bias=True, scale_shape=None, seed=0, outputs=("Y",)):
    rng = np.random.default_rng(seed)
    a = axis % len(shape)
    row = tuple(shape[a:])
    inits = {"scale": rng.uniform(0.5, 1.5, scale_shape or row).astype(np.float32)}
    inputs = ["R", "scale"]
    if bias:
        inits["bias"] = rng.uniform(-0.5, 0.5, scale_shape or row).astype(np.float32)
        inputs.append("bias")
    attrs = {"axis": axis}
    if epsilon is not None:
        attrs["epsilon"] = epsilon
    nodes = [helper.make_node("Relu", ["X"], ["R"]),
             helper.make_node("LayerNormalization", inputs, list(outputs), **attrs)]
    return make_model(nodes, {"X": shape}, ["Y"], inits, opset=17)


@pytest.mark.parametrize("shape,axis", [((2, 5, 7), -1), ((2, 5, 7), 1), ((2, 5, 7), 0), ((3, 4, 6, 9), 2),
                                        ((3, 4, 6, 9), -3)])
def test_import_matches_onnxruntime(shape, axis):
    g = check_model(ln_model(shape, axis))
    assert op_kinds(g) == [OpKind.RELU, OpKind.LAYER_NORM]


def test_without_bias_and_with_epsilon():
    check_model(ln_model((4, 6, 10), epsilon=1e-2, bias=False))


def test_constant_scale_broadcasts_to_the_row():
    check_model(ln_model((2, 3, 5, 8), axis=2, scale_shape=(1, 8)))


@pytest.mark.parametrize("shape,axis,threads", [
    ((16, 56, 56, 96), -1, 2),    # ConvNeXt-T's first stage, channels last: 50176 rows of 96
    ((16, 14, 14, 385), -1, 1),   # an odd row length
    ((16, 24, 31, 33), 1, 2),     # a whole image per row (24 x 31 x 33 = 24552 elements)
    ((1, 7, 7, 768), -1, 1)])
def test_compiled_at_real_sizes(shape, axis, threads):
    model = ln_model(shape, axis, seed=1)
    x = (np.random.default_rng(2).standard_normal(shape) * 3 + 1).astype(np.float32)
    want = run_onnx(model, {"X": x})["Y"]
    got = convc.compile(model, threads=threads).run({"X": x})["Y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5 * float(np.abs(want).max()))


def test_convnext_block_channels_last():
    """ConvNeXt: depthwise 7x7 conv, permute to channels last, LayerNorm, pointwise MLP, permute back."""
    rng = np.random.default_rng(0)
    c = 24
    inits = {"dw": (rng.standard_normal((c, 1, 7, 7)) * 0.2).astype(np.float32),
             "scale": rng.uniform(0.5, 1.5, c).astype(np.float32), "bias": rng.uniform(-0.5, 0.5, c).astype(np.float32),
             "w1": (rng.standard_normal((c, 4 * c)) * 0.2).astype(np.float32),
             "w2": (rng.standard_normal((4 * c, c)) * 0.2).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["X", "dw"], ["d"], group=c, pads=[3, 3, 3, 3]),
             helper.make_node("Transpose", ["d"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("LayerNormalization", ["t", "scale", "bias"], ["n"], axis=-1, epsilon=1e-6),
             helper.make_node("MatMul", ["n", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["a"]),
             helper.make_node("MatMul", ["a", "w2"], ["o"]),
             helper.make_node("Transpose", ["o"], ["p"], perm=[0, 3, 1, 2]),
             helper.make_node("Add", ["p", "X"], ["Y"])]
    model = make_model(nodes, {"X": (16, c, 28, 28)}, ["Y"], inits, opset=17)
    x = rng.standard_normal((16, c, 28, 28)).astype(np.float32)
    want = run_onnx(model, {"X": x})["Y"]
    got = convc.compile(model, threads=2).run({"X": x})["Y"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_export_round_trip_needs_opset_17():
    model = ln_model((2, 3, 8), axis=1)
    g = convc.frontend.onnx.import_onnx(model)
    back = export_onnx(g, opset=17)
    x = np.random.default_rng(4).standard_normal((2, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(back, {"X": x})["Y"], run_onnx(model, {"X": x})["Y"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ExportError, match="LayerNormalization needs opset 17"):
        export_onnx(g)


@pytest.mark.parametrize("outputs", [("Y", "Mean", "InvStdDev"), ("Y", "Mean"), ("Y", "", "InvStdDev")])
def test_mean_and_inverse_standard_deviation_outputs(outputs):
    model = ln_model((16, 10, 7, 33), axis=2, outputs=outputs)
    for name in outputs[1:]:
        if name:
            model.graph.output.append(helper.make_tensor_value_info(name, 1, None))
    x = np.random.default_rng(5).standard_normal((16, 10, 7, 33)).astype(np.float32)
    want = run_onnx(model, {"X": x})
    got = convc.compile(model, threads=2).run({"X": x})
    assert set(got) == set(want)
    for name in want:
        assert got[name].shape == want[name].shape == ((16, 10, 7, 33) if name == "Y" else (16, 10, 1, 1))
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5 * float(np.abs(want[name]).max()))


def test_refusals_name_the_node():
    model = ln_model((2, 3, 8), scale_shape=(3,))
    with pytest.raises(convc.ModelImportError, match="does not broadcast"):
        convc.compile(model)
    with pytest.raises(convc.ModelImportError, match="axis=3 is out of range"):
        convc.compile(ln_model((2, 3, 8), axis=3))


@pytest.mark.parametrize("shape,threads", [((16, 8, 33, 35), 2), ((2, 5, 7), 1), ((3, 4, 5, 6, 7), 2)])
def test_instance_normalization(shape, threads):
    """Per (image, channel) statistics, per-channel scale and shift (style transfer nets, GANs)."""
    rng = np.random.default_rng(7)
    c = shape[1]
    inits = {"s": rng.uniform(0.5, 1.5, c).astype(np.float32), "b": rng.uniform(-1, 1, c).astype(np.float32)}
    nodes = [helper.make_node("InstanceNormalization", ["X", "s", "b"], ["Y"], epsilon=1e-3)]
    model = make_model(nodes, {"X": shape}, ["Y"], inits, opset=13)
    g = check_model(model)
    assert op_kinds(g) == [OpKind.LAYER_NORM, OpKind.RESHAPE, OpKind.MUL, OpKind.RESHAPE, OpKind.ADD]
    # the scale and bias are viewed per channel, not copied: they keep their names (the training step trains them)
    assert [op.inputs[0] for op in g.ops() if op.kind is OpKind.RESHAPE] == ["s", "b"]
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    want = run_onnx(model, {"X": x})["Y"]
    got = convc.compile(model, threads=threads).run({"X": x})["Y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_instance_normalization_with_scale_and_bias_fed_at_run_time():
    nodes = [helper.make_node("InstanceNormalization", ["X", "s", "b"], ["Y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, 1, s) for n, s in
                                           (("X", (2, 3, 4, 5)), ("s", (3,)), ("b", (3,)))],
                              [helper.make_tensor_value_info("Y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    rng = np.random.default_rng(8)
    feeds = {"X": rng.standard_normal((2, 3, 4, 5)).astype(np.float32),
             "s": rng.standard_normal(3).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    got = convc.compile(model).run(feeds)["Y"]
    np.testing.assert_allclose(got, run_onnx(model, feeds)["Y"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset,per_group", [(18, True), (21, False)])
@pytest.mark.parametrize("shape,groups,threads", [((16, 32, 17, 19), 8, 2), ((2, 6, 7), 3, 1), ((4, 12, 5, 5), 1, 2)])
def test_group_normalization(opset, per_group, shape, groups, threads):
    """GN ResNets and diffusion UNets: statistics per (image, group of channels); onnxruntime is the oracle at
    opset 21, a float64 model of opset 18's per-group scale and bias before."""
    rng = np.random.default_rng(9)
    c = shape[1]
    k = groups if per_group else c
    inits = {"s": rng.uniform(0.5, 1.5, k).astype(np.float32), "b": rng.uniform(-1, 1, k).astype(np.float32)}
    nodes = [helper.make_node("GroupNormalization", ["X", "s", "b"], ["Y"], num_groups=groups, epsilon=1e-4)]
    model = make_model(nodes, {"X": shape}, ["Y"], inits, opset=opset)
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    if opset >= 21:
        want = run_onnx(model, {"X": x})["Y"]
    else:  # opset 18's per-group scale and bias, repeated to the channels (what convc and onnxruntime do)
        xg = x.astype(np.float64).reshape(shape[0], groups, -1)
        norm = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-4)).reshape(shape)
        per_channel = (c,) + (1,) * (len(shape) - 2)
        want = (norm * np.repeat(inits["s"], c // groups).reshape(per_channel)
                + np.repeat(inits["b"], c // groups).reshape(per_channel)).astype(np.float32)
    got = convc.compile(model, threads=threads).run({"X": x})["Y"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))


def test_group_normalization_refusals():
    nodes = [helper.make_node("GroupNormalization", ["X", "s", "b"], ["Y"], num_groups=4)]
    model = make_model(nodes, {"X": (2, 6, 3, 3)}, ["Y"], {"s": np.ones(6, np.float32), "b": np.zeros(6, np.float32)},
                       opset=21)
    with pytest.raises(convc.ModelImportError, match="num_groups=4 must divide the 6 channels"):
        convc.compile(model)


def test_group_normalization_scale_and_bias_of_different_forms_are_refused():
    """A per-channel scale with a per-group bias (or the reverse) matches neither opset's form."""
    nodes = [helper.make_node("GroupNormalization", ["X", "s", "b"], ["Y"], num_groups=3, name="gn/0")]
    model = make_model(nodes, {"X": (2, 6, 3, 3)}, ["Y"], {"s": np.ones(6, np.float32), "b": np.zeros(3, np.float32)},
                       opset=21)
    with pytest.raises(convc.ModelImportError, match=r"gn/0.*scale has shape \(6,\) and bias \(3,\)"):
        convc.compile(model)
