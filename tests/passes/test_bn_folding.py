"""BatchNormalization folding into Conv/Gemm, the scale-and-shift fallback, and its notes."""
from __future__ import annotations

import numpy as np
import pytest
from convc.frontend.onnx.importer import import_onnx
from convc.passes.bn_folding import fold_batch_norm
from convc.passes.dce import eliminate_dead_code
from convc.passes.fusion import fuse_epilogues
from helpers import assert_close
from onnx import TensorProto, helper, numpy_helper
from pass_helpers import add_input, bn_params, check_pass, conv_attrs, kinds, random_feeds, weight

from convc.ir import Graph
from convc.ops import NoAttrs, OpKind
from convc.ops.gemm import GemmAttrs
from convc.ops.norm import BatchNormAttrs
from convc.reference import run_reference


def fold(g: Graph) -> Graph:
    return eliminate_dead_code(fold_batch_norm(g))


def add_bn(g: Graph, rng, x: str, c: int, name: str, out: str | None = None) -> str:
    names = []
    for role, value in zip(("scale", "B", "mean", "var"), bn_params(rng, c)):
        names.append(g.add_constant(f"{name}.{role}", value).name)
    return g.add_op(OpKind.BATCH_NORM, BatchNormAttrs(1e-3), [x] + names, [out] if out else None, name=name).outputs[0]


@pytest.mark.parametrize("rank,group,bias", [(2, 1, True), (2, 2, False), (2, 4, True), (1, 1, True)])
def test_conv_bn_folds_into_the_conv(rng, rank, group, bias):
    g = Graph("conv_bn")
    x = add_input(g, "x", (2, 4) + (7,) * rank)
    g.add_constant("w", weight(rng, 8, 4 // group, *(3,) * rank))
    inputs = [x, "w"]
    if bias:
        inputs.append(g.add_constant("b", weight(rng, 8, scale=0.1)).name)
    c = g.add_op(OpKind.CONV, conv_attrs(3, pad=1, group=group, rank=rank), inputs, name="conv").outputs[0]
    add_bn(g, rng, c, 8, "bn", "y")
    g.outputs = ["y"]
    out = check_pass(g, fold, rng, gone=[OpKind.BATCH_NORM])
    assert kinds(out) == [OpKind.CONV]
    conv = out.op("conv")
    assert conv.outputs == ("y",), "the folded conv writes the BN's output tensor"
    assert len(conv.inputs) == 3, "the folded conv always has a bias"
    assert out.metadata["absorbed"] == {"conv": ("bn",)}


@pytest.mark.parametrize("trans_b,with_c", [(False, True), (True, True), (True, False)])
def test_gemm_bn_folds_along_n(rng, trans_b, with_c):
    g = Graph("gemm_bn")
    x = add_input(g, "x", (3, 5))
    g.add_constant("w", weight(rng, *((6, 5) if trans_b else (5, 6))))
    inputs = [x, "w"] + ([g.add_constant("c", weight(rng, 6, scale=0.2)).name] if with_c else [])
    y = g.add_op(OpKind.GEMM, GemmAttrs(alpha=0.5, beta=2.0, trans_b=trans_b), inputs, name="fc").outputs[0]
    add_bn(g, rng, y, 6, "bn", "y")  # BN of a rank-2 tensor normalizes axis 1, the N of Gemm's (M, N)
    g.outputs = ["y"]
    out = check_pass(g, fold, rng, gone=[OpKind.BATCH_NORM])
    assert kinds(out) == [OpKind.GEMM] and out.op("fc").attrs.beta == 1.0


def test_bn_after_relu_becomes_scale_and_shift_and_says_why(rng):
    g = Graph("relu_bn")
    x = add_input(g, "x", (2, 3, 4, 4))
    r = g.add_op(OpKind.RELU, NoAttrs(), [x], name="relu").outputs[0]
    add_bn(g, rng, r, 3, "bn", "y")
    g.outputs = ["y"]
    out = check_pass(g, fold, rng, gone=[OpKind.BATCH_NORM])
    assert kinds(out) == [OpKind.RELU, OpKind.MUL, OpKind.ADD]
    mul = next(op for op in out.ops() if op.kind is OpKind.MUL)
    assert out.tensor(mul.inputs[1]).shape == (3, 1, 1), "a per-channel (C, 1, 1) constant"
    (op, why), = out.metadata["pass_notes"]
    assert op == "bn" and "Relu 'relu'" in why and "not a conv" in why
    assert out.metadata["origin"] == {"bn_mul": "bn", "bn_add": "bn"}


def test_conv_read_twice_does_not_fold(rng):
    g = Graph("shared")
    x = add_input(g, "x", (1, 2, 5, 5))
    g.add_constant("w", weight(rng, 3, 2, 1, 1))
    c = g.add_op(OpKind.CONV, conv_attrs(1), [x, "w"], name="conv").outputs[0]
    add_bn(g, rng, c, 3, "bn", "y")
    g.add_op(OpKind.SIGMOID, NoAttrs(), [c], ["z"], name="other_reader")
    g.outputs = ["y", "z"]
    out = check_pass(g, fold, rng, gone=[OpKind.BATCH_NORM])
    assert OpKind.MUL in kinds(out)
    (op, why), = out.metadata["pass_notes"]
    assert op == "bn" and "also read elsewhere" in why


def test_bn_with_runtime_statistics_stays(rng):
    g = Graph("runtime_stats")
    x = add_input(g, "x", (2, 3, 4))
    stats = [add_input(g, n, (3,)) for n in ("scale", "B", "mean")]
    g.add_constant("var", np.ones(3, np.float32))
    g.add_op(OpKind.BATCH_NORM, BatchNormAttrs(), [x] + stats + ["var"], ["y"], name="bn")
    g.outputs = ["y"]
    feeds = random_feeds(g, rng)
    feeds["scale"] = np.abs(feeds["scale"])
    out = fold(g.copy())
    assert kinds(out) == [OpKind.BATCH_NORM]
    assert "not constants" in out.metadata["pass_notes"][0][1]
    assert_close(run_reference(out, feeds)["y"], run_reference(g, feeds)["y"], 1e-6, "unchanged graph")


def test_per_channel_mul_and_add_fold_into_the_conv(rng):
    """Caffe's BatchNorm+Scale: BN, then Mul and Add by per-channel constants; all three fold."""
    g = Graph("caffe_bn_scale")
    x = add_input(g, "x", (1, 3, 6, 6))
    g.add_constant("w", weight(rng, 4, 3, 3, 3))
    c = g.add_op(OpKind.CONV, conv_attrs(3, pad=1), [x, "w"], name="conv").outputs[0]
    b = add_bn(g, rng, c, 4, "bn")
    g.add_constant("gamma", rng.uniform(0.5, 2, (4, 1, 1)).astype(np.float32))
    g.add_constant("beta", rng.uniform(-1, 1, (1, 4, 1, 1)).astype(np.float32))
    m = g.add_op(OpKind.MUL, NoAttrs(), ["gamma", b], name="scale").outputs[0]
    g.add_op(OpKind.ADD, NoAttrs(), [m, "beta"], ["y"], name="shift")
    g.outputs = ["y"]
    out = check_pass(g, fold, rng, gone=[OpKind.BATCH_NORM, OpKind.MUL, OpKind.ADD])
    assert out.metadata["absorbed"]["conv"] == ("bn", "scale", "shift")


def test_broadcasting_mul_is_not_a_channel_scale(rng):
    g = Graph("spatial_mul")
    x = add_input(g, "x", (1, 2, 3, 3))
    g.add_constant("w", weight(rng, 2, 2, 1, 1))
    c = g.add_op(OpKind.CONV, conv_attrs(1), [x, "w"], name="conv").outputs[0]
    g.add_constant("m", rng.standard_normal((1, 1, 3, 3)).astype(np.float32))  # varies over space
    g.add_op(OpKind.MUL, NoAttrs(), [c, "m"], ["y"], name="mul")
    g.outputs = ["y"]
    out = check_pass(g, fold, rng)
    assert kinds(out) == [OpKind.CONV, OpKind.MUL]


# --- a ResNet-style graph through BN folding and fusion ----------------------------------------

def resnet_block_model(rng, c: int = 8, hw: int = 10):
    """conv-bn-relu -> conv-bn, plus the block input (residual), -> relu; then a projection block
    whose shortcut is conv-bn too; exported the way PyTorch does it (onnx.helper, opset 13)."""
    inits, nodes = [], []

    def init(name, value):
        inits.append(numpy_helper.from_array(value, name))
        return name

    def conv_bn(x, name, cin, cout, k, stride=1):
        w = init(f"{name}.w", weight(rng, cout, cin, k, k))
        y = f"{name}.conv"
        nodes.append(helper.make_node("Conv", [x, w], [y], name=f"{name}_conv", kernel_shape=[k, k],
                                      pads=[k // 2] * 4, strides=[stride, stride]))
        s, b, m, v = (init(f"{name}.{r}", a) for r, a in zip(("s", "b", "m", "v"), bn_params(rng, cout)))
        nodes.append(helper.make_node("BatchNormalization", [y, s, b, m, v], [f"{name}.bn"], name=f"{name}_bn",
                                      epsilon=1e-5))
        return f"{name}.bn"

    def relu(x, name):
        nodes.append(helper.make_node("Relu", [x], [f"{name}.relu"], name=f"{name}_relu"))
        return f"{name}.relu"

    a = relu(conv_bn("x", "b1a", c, c, 3), "b1a")
    b = conv_bn(a, "b1b", c, c, 3)
    nodes.append(helper.make_node("Add", [b, "x"], ["b1.add"], name="b1_add"))
    h = relu("b1.add", "b1")
    a = relu(conv_bn(h, "b2a", c, 2 * c, 3, stride=2), "b2a")
    b = conv_bn(a, "b2b", 2 * c, 2 * c, 3)
    sc = conv_bn(h, "b2s", c, 2 * c, 1, stride=2)
    nodes.append(helper.make_node("Add", [sc, b], ["b2.add"], name="b2_add"))
    relu("b2.add", "b2")
    graph = helper.make_graph(nodes, "resnet_style",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, c, hw, hw])],
                              [helper.make_tensor_value_info("b2.relu", TensorProto.FLOAT, None)], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_resnet_style_graph_is_unchanged_by_bn_folding_and_fusion(rng):
    model = resnet_block_model(rng)
    g = import_onnx(model)

    def fold_and_fuse(graph: Graph) -> Graph:
        graph = fold(graph)
        graph.verify()
        return eliminate_dead_code(fuse_epilogues(graph))

    out = check_pass(g, fold_and_fuse, rng, gone=[OpKind.BATCH_NORM, OpKind.RELU, OpKind.ADD], rtol=1e-4)
    assert kinds(out) == [OpKind.CONV] * 5
    labels = {op.name: [op.kind.value] + [g.op(m).kind.value for m in out.metadata["absorbed"].get(op.name, ())]
              for op in out.ops()}
    assert labels["b1a_conv"] == ["Conv", "BatchNormalization", "Relu"]
    assert labels["b1b_conv"] == ["Conv", "BatchNormalization", "Add", "Relu"]
    # the projection block: the later of the two convs feeding the Add takes the residual
    assert ["Add", "Relu"] == labels["b2s_conv"][-2:] or ["Add", "Relu"] == labels["b2b_conv"][-2:]

    import onnxruntime as ort
    feeds = random_feeds(g, rng)
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert_close(run_reference(out, feeds)["b2.relu"], expected, 1e-4, "folded+fused graph vs onnxruntime")


@pytest.mark.parametrize("group,bias", [(1, True), (2, False)])
def test_conv_transpose_bn_relu_fold_and_fuse(rng, group, bias):
    """The DCGAN generator block: ConvTranspose + BN + Relu ends as one ConvTranspose."""
    from convc.ops.conv_transpose import ConvTransposeAttrs
    g = Graph("deconv_bn")
    x = add_input(g, "x", (2, 4, 3, 3))
    g.add_constant("w", weight(rng, 4, 6 // group, 4, 4))  # (C_in, M/group, kh, kw)
    inputs = [x, "w"] + ([g.add_constant("b", weight(rng, 6, scale=0.1)).name] if bias else [])
    a = ConvTransposeAttrs((4, 4), (2, 2), (1, 1, 1, 1), (1, 1), group)
    y = g.add_op(OpKind.CONV_TRANSPOSE, a, inputs, name="deconv").outputs[0]
    b = add_bn(g, rng, y, 6, "bn")
    g.add_op(OpKind.RELU, NoAttrs(), [b], ["y"], name="relu")
    g.outputs = ["y"]
    out = check_pass(g, lambda gr: eliminate_dead_code(fuse_epilogues(fold(gr))), rng,
                     gone=[OpKind.BATCH_NORM, OpKind.RELU])
    assert kinds(out) == [OpKind.CONV_TRANSPOSE]
    assert out.metadata["absorbed"]["deconv"] == ("bn", "relu")


@pytest.mark.parametrize("shape,scale_shape", [
    ((33, 17, 3, 3), (33, 1, 1, 1)), ((2, 3, 5, 4, 1, 1), (2, 1, 5, 1, 1, 1)), ((31, 7), (1, 7)), ((7, 31), (7, 1)),
    # above PARALLEL_MIN_ELEMENTS: two halves on two threads, the scale sliced along with w or broadcast
    ((513, 256, 3, 3), (513, 1, 1, 1)), ((1001, 2049), (1, 2049)), ((2049, 1001), (2049, 1)),
    ((9, 128, 64, 3, 3), (9, 1, 64, 1, 1))])
def test_folded_weights_are_the_float64_product_rounded_once(shape, scale_shape):
    """The folded weights are (w in float64 * s) rounded to w's dtype, bit for bit, as the plain
    astype formulation computes them (the pass avoids its full-size temporaries, and scales large
    weights in two halves side by side)."""
    from convc.passes.bn_folding import _scaled
    rng = np.random.default_rng(len(shape))
    for dtype in (np.float32, np.float16, np.float64):
        w = rng.standard_normal(shape).astype(dtype)
        s = rng.standard_normal(scale_shape) * 3.7 + 1e-3  # float64, not representable in float32
        want = (w.astype(np.float64) * s).astype(dtype)
        got = _scaled(w, s)
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
