"""The direct channels-last conv for 1-4 input channels (codegen/kernels/conv_direct.py,
DIRECT_FEW_CHANNELS): against the numpy reference and the implicit GEMM at real sizes (every border
column, output channels that leave vector remainders or loop over chunks, strides, pads, dilation,
the epilogues in registers and per row), 1 and 2 threads; kernel selection's rule on the plan;
LeNet-5 and stems end to end against onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import nhwc_conv_graph
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.ir import Graph
from convc.models import lenet5
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, ConvAttrs
from convc.ops.epilogue import Epilogue
from convc.passes import kernel_selection
from convc.reference import run_reference

A = ConvAlgorithm
EPILOGUES = {
    "none": Epilogue(),
    "relu": Epilogue(False, OpKind.RELU),          # in registers
    "tanh": Epilogue(False, OpKind.TANH),          # over each finished row
    "residual": Epilogue(True),
    "residual+relu": Epilogue(True, OpKind.RELU),
    "residual+sigmoid": Epilogue(True, OpKind.SIGMOID),
}


def conv_graph(x_shape, m, attrs: ConvAttrs, bias: bool, seed: int) -> Graph:
    """One channels-last conv x [N, H, W, C] -> y [N, OH, OW, m] (+ residual input r)."""
    return nhwc_conv_graph(x_shape, m, attrs, bias, np.random.default_rng(seed))


def compile_with(g: Graph, threads: int, direct: bool, monkeypatch: pytest.MonkeyPatch):
    """``g`` compiled with the direct kernel forced on or off (kernel selection's rule replaced)."""
    with monkeypatch.context() as mp:
        mp.setattr(kernel_selection, "direct_few_channels", lambda g, op: direct)
        model = convc.compile(g, threads=threads, cache=False)
    (conv,) = [op for op in model.graph.ops() if op.kind is OpKind.CONV]
    assert conv.attrs.algorithm is (A.DIRECT_FEW_CHANNELS if direct else A.IMPLICIT_GEMM_NHWC)
    return model


# (N, H, W, C), M, kernel, stride, pads, dilation, epilogue, bias
CASES = [
    ((16, 28, 28, 1), 6, 5, 1, (2, 2, 2, 2), 1, "tanh", True),        # LeNet's first conv
    ((1, 28, 28, 1), 6, 5, 1, (2, 2, 2, 2), 1, "relu", True),
    ((16, 32, 32, 3), 32, 3, 1, (1, 1, 1, 1), 1, "relu", True),       # CIFAR stem: 2 chunks of 2 vectors
    ((1, 224, 224, 3), 64, 7, 2, (3, 3, 3, 3), 1, "relu", True),      # ResNet stem: 4 chunks, odd output
    ((1, 224, 224, 3), 32, 3, 2, (0, 0, 1, 1), 1, "none", True),      # MobileNet stem (TF-style pads)
    ((2, 33, 37, 2), 13, 3, 1, (1, 1, 1, 1), 1, "residual+relu", True),   # 13 = 8 + 5 masked lanes
    ((2, 31, 29, 4), 20, 5, 2, (2, 1, 0, 2), 1, "residual", False),   # 3 vectors: a chunk of 2 + 1 of 4 lanes
    ((3, 45, 41, 3), 7, 3, 1, (2, 2, 2, 2), 2, "residual+sigmoid", True),  # dilation 2, 7 lanes
    ((2, 29, 30, 1), 64, 7, 1, (0, 0, 0, 0), 1, "tanh", True),         # no padding: no border columns
    ((1, 9, 6, 2), 9, 7, 1, (3, 3, 3, 3), 1, "relu", True),            # narrower than the kernel: all border
    # fewer than 8 channels: whole-vector stores spill into the next pixels, never past the row's
    # end (another thread's row, the tensor's end), which lies in the interior (no padding) or a border
    ((3, 29, 30, 1), 5, 3, 1, (0, 0, 0, 0), 1, "residual+relu", True),
    ((2, 30, 27, 4), 1, 5, 2, (2, 2, 2, 2), 1, "residual+sigmoid", False),   # a store spans 8 pixels
    ((2, 29, 31, 2), 3, 3, 1, (0, 0, 0, 0), 1, "relu", True),
]


@pytest.mark.parametrize("x_shape,m,k,stride,pads,dilation,epi,bias", CASES)
def test_direct_conv_matches_reference_and_implicit_gemm(x_shape, m, k, stride, pads, dilation, epi, bias,
                                                        monkeypatch):
    attrs = ConvAttrs((k, k), (stride, stride), pads, (dilation, dilation), 1, EPILOGUES[epi], "NHWC")
    g = conv_graph(x_shape, m, attrs, bias, seed=sum(x_shape) * 31 + m)
    rng = np.random.default_rng(7)
    feeds = {n: rng.standard_normal(g.tensor(n).shape).astype(np.float32) for n in g.inputs}
    want = run_reference(g, feeds)["y"]
    gemm = compile_with(g, 1, False, monkeypatch).run(feeds)["y"]
    scale = max(1.0, np.abs(want).max())
    for threads in (1, 2):
        got = compile_with(g, threads, True, monkeypatch).run(feeds)["y"]
        assert got.shape == want.shape
        assert np.abs(got - want).max() / scale < 1e-5, threads
        assert np.abs(got - gemm).max() / scale < 1e-5, threads


def _algorithm(x_shape, m, k, stride, pad, threads=1, **compile_args) -> ConvAlgorithm:
    attrs = ConvAttrs((k, k), (stride, stride), (pad,) * 4, (1, 1), 1, EPILOGUES["relu"], "NHWC")
    model = convc.compile(conv_graph(x_shape, m, attrs, True, seed=0), threads=threads, cache=False,
                          **compile_args)
    (conv,) = [op for op in model.graph.ops() if op.kind is OpKind.CONV]
    return conv.attrs.algorithm


@pytest.mark.parametrize("x_shape,m,k,stride,pad,want", [
    ((16, 28, 28, 1), 6, 5, 1, 2, A.DIRECT_FEW_CHANNELS),     # LeNet: fewer than 8 output channels
    ((1, 224, 224, 3), 16, 3, 2, 1, A.DIRECT_FEW_CHANNELS),   # strided stems up to 32 channels
    ((1, 224, 224, 3), 32, 3, 2, 1, A.DIRECT_FEW_CHANNELS),
    ((1, 224, 224, 3), 64, 7, 2, 3, A.IMPLICIT_GEMM_NHWC),    # ResNet's 7x7 stem: measured slower
    ((16, 32, 32, 3), 64, 3, 1, 1, A.IMPLICIT_GEMM_NHWC),     # 16+ channels at stride 1: the GEMM
    ((16, 28, 28, 1), 16, 5, 1, 2, A.IMPLICIT_GEMM_NHWC),
    ((16, 28, 28, 1), 32, 5, 2, 2, A.IMPLICIT_GEMM_NHWC),     # strided, but 5x5: measured slower
    ((16, 28, 28, 5), 6, 3, 1, 1, A.IMPLICIT_GEMM_NHWC),      # 5 input channels: not this kernel
])
def test_selection_rule_on_the_plan(x_shape, m, k, stride, pad, want):
    assert _algorithm(x_shape, m, k, stride, pad) is want


def test_training_plans_keep_their_algorithms():
    attrs = ConvAttrs((5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 1, Epilogue(), "NHWC")
    g = conv_graph((16, 28, 28, 1), 6, attrs, True, seed=0)
    kernel_selection.select_training_kernels(g)
    (conv,) = [op for op in g.ops() if op.kind is OpKind.CONV]
    assert conv.attrs.algorithm is not A.DIRECT_FEW_CHANNELS
    kernel_selection.select_kernels(g)
    assert conv.attrs.algorithm is A.DIRECT_FEW_CHANNELS


def _check_against_onnxruntime(proto: onnx.ModelProto, x: np.ndarray, threads: int, direct_convs: int):
    model = convc.compile(proto, threads=threads, cache=False)
    algorithms = [op.attrs.algorithm for op in model.graph.ops() if op.kind is OpKind.CONV]
    assert algorithms.count(A.DIRECT_FEW_CHANNELS) == direct_convs, algorithms
    name = proto.graph.input[0].name
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {name: x})
    got = model.run({name: x})
    for out, w in zip(proto.graph.output, want):
        assert np.abs(got[out.name] - w).max() <= 1e-4 * max(1.0, np.abs(w).max()), out.name


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("threads", [1, 2])
def test_lenet5_against_onnxruntime(batch, threads):
    x = np.random.default_rng(batch).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    _check_against_onnxruntime(lenet5(batch=batch), x, threads, direct_convs=1)


def stem_model(batch: int, cout: int, k: int, stride: int, seed: int = 0) -> onnx.ModelProto:
    """Conv (3 -> cout, k x k, stride, pad k//2, bias) + BatchNormalization + Relu + MaxPool 3x3/2,
    and a second 6-channel 3x3 conv of the input (Tanh) concatenated with the first's output
    (a direct conv writing its slice of a Concat, when the planner places it there)."""
    rng = np.random.default_rng(seed)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32), name)
    inits = [init("w", rng.standard_normal((cout, 3, k, k)) * 0.2), init("b", rng.uniform(-0.1, 0.1, cout)),
             init("scale", rng.uniform(0.5, 1.5, cout)), init("shift", rng.uniform(-0.2, 0.2, cout)),
             init("mean", rng.uniform(-0.1, 0.1, cout)), init("var", rng.uniform(0.5, 1.5, cout)),
             init("w2", rng.standard_normal((6, 3, 3, 3)) * 0.3), init("b2", rng.uniform(-0.1, 0.1, 6))]
    p = k // 2
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[k, k], strides=[stride] * 2, pads=[p] * 4),
        helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Conv", ["x", "w2", "b2"], ["c2"], kernel_shape=[3, 3], strides=[stride] * 2,
                         pads=[1] * 4),
        helper.make_node("Tanh", ["c2"], ["t2"]),
        helper.make_node("Concat", ["r", "t2"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["y"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 224, 224])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.slow
def test_stems_against_onnxruntime(threads, monkeypatch):
    x = np.random.default_rng(3).standard_normal((1, 3, 224, 224)).astype(np.float32)
    # MobileNet-style 3x3/2 stem of 32 channels and the 6-channel branch: both chosen direct
    _check_against_onnxruntime(stem_model(1, 32, 3, 2), x, threads, direct_convs=2)
    # ResNet's 7x7/2 stem of 64 channels: the implicit GEMM by default, and forced direct
    _check_against_onnxruntime(stem_model(1, 64, 7, 2), x, threads, direct_convs=1)
    monkeypatch.setattr(kernel_selection, "direct_few_channels", lambda g, op: op.attrs.channels_last)
    _check_against_onnxruntime(stem_model(1, 64, 7, 2), x, threads, direct_convs=2)


@pytest.mark.slow
def test_stem_at_batch_16_against_onnxruntime():
    x = np.random.default_rng(4).standard_normal((16, 3, 224, 224)).astype(np.float32)
    _check_against_onnxruntime(stem_model(16, 24, 3, 2, seed=1), x, 2, direct_convs=2)
