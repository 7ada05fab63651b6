"""The Winograd conv kernel (codegen/kernels/winograd.py): its transform matrices against the
direct conv in float64, then the compiled kernel at real sizes against the numpy reference and the
direct channels-last conv: batch 1 and 16, 7..56 px with odd sizes that leave partial tiles, 3..256
channels including ones that are not a multiple of the vector width, pads 0 and 1, bias with ReLU,
a residual, an activation without a vector form, 1 and 2 threads (identical results)."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm as A
from convc.ops.conv import ConvAttrs
from convc.ops.epilogue import Epilogue
from convc.passes import kernel_selection
from convc.reference import run_reference

from convc.codegen.kernels.winograd import TRANSFORMS, reference, transform_weights

EPILOGUES = {
    "none": Epilogue(),
    "relu": Epilogue(False, OpKind.RELU),
    "residual+relu": Epilogue(True, OpKind.RELU),
    "tanh": Epilogue(False, OpKind.TANH),  # no vector form: applied lane by lane in the output transform
}


def direct_nhwc(x: np.ndarray, w: np.ndarray, pads) -> np.ndarray:
    """3x3 stride-1 conv in float64, NHWC; pads (top, left, bottom, right)."""
    pt, pl, pb, pr = pads
    xp = np.pad(x.astype(np.float64), [(0, 0), (pt, pb), (pl, pr), (0, 0)])
    oh, ow = xp.shape[1] - 2, xp.shape[2] - 2
    return sum(np.einsum("nhwc,mc->nhwm", xp[:, i:i + oh, j:j + ow], w[:, :, i, j].astype(np.float64))
               for i in range(3) for j in range(3))


@pytest.mark.parametrize("m", sorted(TRANSFORMS))
@pytest.mark.parametrize("shape,pads", [((2, 9, 11, 5), (1, 1, 1, 1)), ((1, 8, 8, 3), (0, 0, 0, 0)),
                                        ((1, 7, 6, 4), (1, 0, 0, 1))])
def test_transforms_compute_the_convolution(m, shape, pads):
    """A^T [(G g G^T) * (B^T d B)] A is the 3x3 conv: the matrices (and the partial-tile padding of
    the numpy model of the kernel) are right to float32 rounding of U."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((6, shape[3], 3, 3)).astype(np.float32)
    want = direct_nhwc(x, w, pads)
    got = reference(x, w, pads, m)
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() < 2e-6


def test_weight_transform_is_float64_rounded_once():
    """U = G g G^T computed in float64 and rounded to float32 once (not accumulated in float32)."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    g = TRANSFORMS[4][1].astype(np.float64)
    exact = np.einsum("ai,mcij,bj->abcm", g, w.astype(np.float64), g).reshape(36, 3, 4)
    # the float64 sums run in another order (one GEMM): at most one float32 ulp apart
    np.testing.assert_array_max_ulp(transform_weights(w, 4), exact.astype(np.float32), maxulp=1)
    in_float32 = np.einsum("ai,mcij,bj->abcm", g.astype(np.float32), w, g.astype(np.float32)).reshape(36, 3, 4)
    assert np.abs(transform_weights(w, 4) - exact).max() <= np.abs(in_float32 - exact).max()


def nhwc_conv(x_shape, m: int, pads, epi: str, bias: bool, seed: int) -> tuple[Graph, dict]:
    rng = np.random.default_rng(seed)
    c = x_shape[3]
    g = Graph("winograd_conv")
    g.add_tensor("x", x_shape, np.float32, TensorKind.INPUT)
    g.add_constant("w", (rng.standard_normal((m, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32))
    inputs = ["x", "w"]
    if bias:
        inputs.append(g.add_constant("b", rng.uniform(-0.5, 0.5, m).astype(np.float32)).name)
    attrs = ConvAttrs((3, 3), (1, 1), pads, (1, 1), 1, EPILOGUES[epi], "NHWC")
    if attrs.epilogue.residual:
        out = (x_shape[0], x_shape[1] + pads[0] + pads[2] - 2, x_shape[2] + pads[1] + pads[3] - 2, m)
        g.add_tensor("r", out, np.float32, TensorKind.INPUT)
        inputs.append("r")
    g.add_op(OpKind.CONV, attrs, inputs, ["y"], name="conv")
    g.outputs = ["y"]
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    return g, feeds


def compile_as(monkeypatch, g: Graph, algorithm: A | None, threads: int):
    """Compile ``g`` with kernel selection forced to ``algorithm`` for its Winograd candidates (None:
    a direct kernel, the implicit GEMM or, for 1-4 input channels, the direct few-channel conv), and
    check the plan says so."""
    monkeypatch.setattr(kernel_selection, "winograd_algorithm", lambda graph, op: algorithm)
    model = convc.compile(g, threads=threads, cache=False)
    (conv,) = [op for op in model.graph.ops() if op.kind is OpKind.CONV]
    assert conv.attrs.algorithm in ({algorithm} if algorithm else {A.IMPLICIT_GEMM_NHWC, A.DIRECT_FEW_CHANNELS})
    return model


CASES = [  # (x shape NHWC, output channels, pads, epilogue, bias)
    ((1, 56, 56, 64), 64, (1, 1, 1, 1), "relu", True),          # ResNet-18 layer1
    ((1, 14, 14, 256), 256, (1, 1, 1, 1), "residual+relu", True),  # layer3, 14 = 3 tiles of 4 + a half one
    ((16, 7, 7, 19), 37, (1, 1, 1, 1), "relu", True),           # batch 16, 7 px, odd channels
    ((16, 9, 9, 24), 20, (0, 0, 0, 0), "residual+relu", False),  # unpadded, 7x7 out
    ((2, 29, 31, 3), 5, (1, 1, 1, 1), "none", True),            # 3 input channels, odd sizes
    ((1, 23, 17, 40), 24, (1, 0, 0, 1), "tanh", True),          # asymmetric pads, scalar activation
]


@pytest.mark.parametrize("algorithm", [A.WINOGRAD_4X4, A.WINOGRAD_2X2])
@pytest.mark.parametrize("x_shape,m,pads,epi,bias", CASES)
def test_kernel_matches_reference_and_direct_conv(monkeypatch, algorithm, x_shape, m, pads, epi, bias):
    g, feeds = nhwc_conv(x_shape, m, pads, epi, bias, seed=sum(x_shape) + m)
    want = run_reference(g, feeds)["y"]
    scale = np.abs(want).max()
    direct = compile_as(monkeypatch, g, None, 2).run(feeds)["y"]
    results = [compile_as(monkeypatch, g, algorithm, t).run(feeds)["y"] for t in (1, 2)]
    bound = 1e-4 if algorithm is A.WINOGRAD_4X4 else 1e-5  # measured: F(4x4) up to ~1.5e-5, F(2x2) ~1e-6
    for got in results:
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() / scale < bound
        assert np.abs(got - direct).max() / scale < bound
    assert np.array_equal(results[0], results[1]), "the split between threads changed the sums"


def test_a_wrong_kernel_would_fail(monkeypatch):
    """The comparison above is sharp enough to catch a transform error: zeroing one transformed
    weight position (what a wrong row of G would do) is far outside the bound."""
    from convc.codegen.kernels import winograd
    g, feeds = nhwc_conv((1, 12, 12, 16), 16, (1, 1, 1, 1), "none", True, seed=3)
    want = run_reference(g, feeds)["y"]
    real = winograd._transformed  # [t*t, C, M] in float64, what the emitter packs

    def broken(w, m):
        u = real(w, m)
        u[7] = 0
        return u
    monkeypatch.setattr(winograd, "_transformed", broken)
    got = compile_as(monkeypatch, g, A.WINOGRAD_4X4, 1).run(feeds)["y"]
    assert np.abs(got - want).max() / np.abs(want).max() > 1e-2


def test_layers_of_other_sizes_share_the_transforms(monkeypatch):
    """The input and output transforms read the layer's sizes at run time: two F(4x4) convs of other
    channel counts and image sizes call one input and one output transform function (compiled once,
    and cached for every model), and both still match the reference."""
    from convc.codegen.module import emit_module
    from convc.passes.pipeline import pipeline
    rng = np.random.default_rng(7)
    g = Graph("two_sizes")
    g.add_tensor("x", (1, 16, 16, 8), np.float32, TensorKind.INPUT)
    g.add_constant("w1", (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32))
    g.add_constant("w2", (rng.standard_normal((24, 16, 3, 3)) * 0.2).astype(np.float32))
    relu = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, EPILOGUES["relu"], "NHWC")
    g.add_op(OpKind.CONV, relu, ["x", "w1"], ["h"], name="conv1")
    g.add_tensor("h2", (1, 8, 8, 16), np.float32, TensorKind.INPUT)
    g.add_op(OpKind.CONV, relu, ["h2", "w2"], ["y2"], name="conv2")
    g.outputs = ["h", "y2"]
    monkeypatch.setattr(kernel_selection, "winograd_algorithm", lambda graph, op: A.WINOGRAD_4X4)
    text = str(emit_module(pipeline(g)).ir_module)
    assert text.count('define internal void @"winograd_in4') == 1
    assert text.count('define internal void @"winograd_out4') == 1
    feeds = {"x": rng.standard_normal((1, 16, 16, 8)).astype(np.float32),
             "h2": rng.standard_normal((1, 8, 8, 16)).astype(np.float32)}
    want = run_reference(g, feeds)
    got = convc.compile(g, threads=2, cache=False).run(feeds)
    for name in ("h", "y2"):
        assert np.abs(got[name] - want[name]).max() / np.abs(want[name]).max() < 1e-4


@pytest.mark.slow
def test_batch_16_resnet_block_threads(monkeypatch):
    """Batch 16 at 28 px, 128 channels (layer2): 1 and 2 threads agree bit for bit and with numpy."""
    g, feeds = nhwc_conv((16, 28, 28, 128), 128, (1, 1, 1, 1), "residual+relu", True, seed=11)
    want = run_reference(g, feeds)["y"]
    got = [compile_as(monkeypatch, g, A.WINOGRAD_4X4, t).run(feeds)["y"] for t in (1, 2)]
    assert np.abs(got[0] - want).max() / np.abs(want).max() < 1e-4
    assert np.array_equal(got[0], got[1])


@pytest.mark.slow
def test_block_partition_covers_every_tile(monkeypatch):
    """More tiles than one block holds (blocks of a multiple of the micro-kernel's rows, the last
    one partial) and fewer: every output pixel is written exactly once."""
    from convc.codegen.kernels import winograd
    monkeypatch.setattr(winograd, "TILE_BYTES", 40_000)  # a few tiles per block
    tiles = 3 * 5 * 5  # 17 x 19 output in 4x4 tiles, 3 images
    for threads in (1, 2):
        block = winograd.block_tiles(6, tiles, 6, 8, 12, threads)
        assert block < tiles // threads and tiles % block, block  # several blocks, the last one partial
    g, feeds = nhwc_conv((3, 17, 19, 8), 12, (1, 1, 1, 1), "none", True, seed=5)
    want = run_reference(g, feeds)["y"]
    for t in (1, 2):
        got = compile_as(monkeypatch, g, A.WINOGRAD_4X4, t).run(feeds)["y"]
        assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def resnet18_onnx(batch: int, size: int, seed: int = 0):
    """ResNet-18's layer shapes (torchvision: conv, BN, ReLU; basic blocks with residual adds)."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def const(a: np.ndarray) -> str:
        name = f"c{len(inits)}"
        inits.append(numpy_helper.from_array(a.astype(np.float32), name))
        return name

    def node(op: str, inputs: list[str], **attrs) -> str:
        out = f"{op.lower()}{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv_bn(x: str, cin: int, cout: int, k: int, stride: int, relu: bool = True) -> str:
        w = const(rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)))
        y = node("Conv", [x, w], kernel_shape=[k, k], strides=[stride] * 2, pads=[k // 2] * 4)
        bn = [const(rng.uniform(0.5, 1.5, cout)), const(rng.uniform(-0.1, 0.1, cout)),
              const(rng.uniform(-0.1, 0.1, cout)), const(rng.uniform(0.5, 1.5, cout))]
        y = node("BatchNormalization", [y] + bn, epsilon=1e-5)
        return node("Relu", [y]) if relu else y

    y = conv_bn("x", 3, 64, 7, 2)
    y = node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            s = stride if block == 0 else 1
            h = conv_bn(conv_bn(y, cin, cout, 3, s), cout, cout, 3, 1, relu=False)
            short = y if s == 1 and cin == cout else conv_bn(y, cin, cout, 1, s, relu=False)
            y = node("Relu", [node("Add", [h, short])])
            cin = cout
    y = node("Flatten", [node("GlobalAveragePool", [y])])
    logits = node("Gemm", [y, const(rng.standard_normal((1000, 512)) / np.sqrt(512)),
                           const(rng.uniform(-0.1, 0.1, 1000))], transB=1)
    graph = helper.make_graph(nodes, "resnet18", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                (batch, 3, size, size))],
                              [helper.make_tensor_value_info(logits, TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.slow
def test_resnet18_end_to_end_matches_onnxruntime():
    """ResNet-18 at 224 px, batch 2, two threads: its stride-1 3x3 convs run as Winograd, and the
    logits stay within 1e-4 of onnxruntime's (measured: ~1e-6 at batch 1 and 16)."""
    ort = pytest.importorskip("onnxruntime")
    model = resnet18_onnx(2, 224)
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    compiled = convc.compile(model, threads=2, cache=False)
    algos = [op.attrs.algorithm for op in compiled.graph.ops() if op.kind is OpKind.CONV]
    assert algos.count(A.WINOGRAD_4X4) == 13  # layer1 4, layers 2-4 3 each (the stride-2 ones: direct)
    assert algos.count(A.IMPLICIT_GEMM_NHWC) == 7  # stem, 3 downsamples, 3 stride-2 3x3s
    got = list(compiled.run({"x": x}).values())[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4
    assert np.array_equal(got.argmax(1), want.argmax(1))
