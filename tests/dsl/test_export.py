"""ONNX export: onnxruntime runs the written file with convc's outputs (1e-5), the batch dimension
is symbolic, attributes are explicit, and the file imports back into convc."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from dsl.checks import TOL, run_onnxruntime
from dsl.test_tracing import Inception, ResNetTiny, randomize_batch_norms
from helpers import assert_close

import convc
from convc import nn
from convc.frontend.onnx import import_onnx
from convc.frontend.onnx_export import EXPORTERS, ExportError, export_onnx
from convc.ir import Graph, TensorKind
from convc.ops import NoAttrs, OpKind, registered_kinds
from convc.ops.conv import ConvAttrs
from convc.ops.conv_transpose import ConvTransposeAttrs
from convc.ops.elementwise import ClipAttrs, EluAttrs, HardSigmoidAttrs, LeakyReluAttrs, SeluAttrs
from convc.ops.elementwise_grad import SliceAttrs
from convc.ops.reduce import ReduceAttrs
from convc.ops.epilogue import Epilogue
from convc.ops.gemm import GemmAttrs
from convc.ops.norm import LrnAttrs
from convc.ops.pool import GlobalPoolAttrs, LpPoolAttrs, PoolAttrs
from convc.ops.resize import ResizeAttrs
from convc.ops.shape import FlattenAttrs, PadAttrs, SplitAttrs, StridedSliceAttrs, TransposeAttrs
from convc.ops.softmax import SoftmaxAttrs
from convc.reference import run_reference


def every_layer_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding="same"), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 6, 3, groups=3, padding=(1, 0, 1, 2)), nn.LeakyReLU(0.05), nn.AvgPool2d(3, 1, padding=1),
        nn.Conv2d(6, 4, 2, dilation=2, padding="causal"), nn.GlobalAvgPool(), nn.Sigmoid(), nn.Flatten(),
        nn.Dropout(0.25), nn.Linear(4, 8), nn.Tanh(), nn.BatchNorm1d(8), nn.Linear(8, 3), nn.Softmax(1))


@pytest.mark.slow
def test_round_trip_through_a_file(tmp_path, rng):
    model = every_layer_model()
    randomize_batch_norms(model, rng)
    path = tmp_path / "model.onnx"
    returned = model.to_onnx(path, (1, 2, 11, 11))
    written = onnx.load(str(path))
    onnx.checker.check_model(written, full_check=True)
    assert written == returned
    assert [(o.domain, o.version) for o in written.opset_import] == [("", 13)]
    assert written.producer_name == "convc"
    assert [i.name for i in written.graph.input] == ["input"] and [o.name for o in written.graph.output] == ["output"]
    assert {t.name for t in written.graph.initializer} >= set(model.state_dict())
    x = rng.standard_normal((1, 2, 11, 11)).astype(np.float32)
    assert_close(convc.compile(model, input_shape=x.shape)(x), run_onnxruntime(written, x), TOL,
                 "convc vs onnxruntime")


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_batch_dimension_is_symbolic(rng, batch):
    model = ResNetTiny()
    randomize_batch_norms(model, rng)
    exported = model.to_onnx(None, (1, 3, 8, 8))
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 8, 8]
    assert exported.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    compiled = convc.compile(model, input_shape=(1, 3, 8, 8))  # other batch sizes compile on first use
    x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
    assert_close(compiled(x), run_onnxruntime(exported, x), TOL, f"batch {batch}")


def test_static_batch_when_asked(rng):
    exported = Inception(3).to_onnx(None, (2, 3, 5, 5), dynamic_batch=False)
    assert exported.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    assert_close(convc.compile(Inception(3).init_parameters(seed=0), input_shape=x.shape)(x),
                 run_onnxruntime(Inception(3).init_parameters(seed=0).to_onnx(None, x.shape), x), TOL, "inception")


class Viewer(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x).reshape(x.shape[0], 4, -1)  # (N, 4, H*W)
        return nn.softmax(y, dim=2).flatten(1)


def test_reshape_keeps_the_batch_symbolic(rng):
    model = Viewer()
    exported = model.to_onnx(None, (1, 2, 4, 5))
    shape_init = {t.name: onnx.numpy_helper.to_array(t) for t in exported.graph.initializer}["reshape.shape"]
    assert shape_init.tolist() == [0, 4, 20]  # 0: copy the (symbolic) batch dimension
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    assert_close(convc.compile(model, input_shape=(1, 2, 4, 5))(x), run_onnxruntime(exported, x), TOL, "batch 3")


def _attributes(model: onnx.ModelProto) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for n in model.graph.node:
        out.setdefault(n.op_type, set()).update(a.name for a in n.attribute)
    return out


def test_attributes_are_written_explicitly():
    attrs = _attributes(every_layer_model().to_onnx(None, (1, 2, 11, 11)))
    assert attrs["Conv"] == {"kernel_shape", "strides", "pads", "dilations", "group"}
    assert attrs["Gemm"] == {"alpha", "beta", "transA", "transB"}
    assert attrs["MaxPool"] == {"kernel_shape", "strides", "pads", "dilations", "ceil_mode"}
    assert attrs["AveragePool"] == {"kernel_shape", "strides", "pads", "ceil_mode", "count_include_pad"}
    assert attrs["BatchNormalization"] == {"epsilon", "momentum"}
    assert attrs["LeakyRelu"] == {"alpha"} and attrs["Softmax"] == {"axis"} and attrs["Flatten"] == {"axis"}
    gemm = next(n for n in every_layer_model().to_onnx(None, (1, 2, 11, 11)).graph.node if n.op_type == "Gemm")
    assert {a.name: a.i for a in gemm.attribute if a.name.startswith("trans")} == {"transA": 0, "transB": 1}


def test_pytorch_momentum_is_written_in_the_onnx_convention():
    exported = nn.Sequential(nn.BatchNorm2d(3, momentum=0.2)).to_onnx(None, (1, 3, 2, 2))
    (bn,) = exported.graph.node
    assert {a.name: round(a.f, 6) for a in bn.attribute} == {"epsilon": 1e-5, "momentum": 0.8}


@pytest.mark.slow
def test_exported_model_imports_back_into_convc(rng):
    model = ResNetTiny()
    randomize_batch_norms(model, rng)
    graph = import_onnx(model.to_onnx(None, (1, 3, 8, 8)), batch=2)
    assert graph.inputs == ["input"] and graph.outputs == ["output"]
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_close(convc.compile(graph)(x), convc.compile(model, input_shape=x.shape)(x), TOL, "re-imported")


def _graph_with_fused_epilogues(rng: np.random.Generator) -> Graph:
    """Conv with a fused residual Add and Relu, Gemm with a fused LeakyRelu: what passes produce."""
    g = Graph("fused")
    g.add_tensor("x", (2, 3, 5, 5), np.float32, TensorKind.INPUT)
    g.add_constant("w", rng.standard_normal((3, 3, 3, 3)).astype(np.float32))
    g.add_constant("b", rng.standard_normal(3).astype(np.float32))
    conv = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, Epilogue(residual=True, activation=OpKind.RELU,
                                                                        activation_attrs=NoAttrs()))
    y = g.add_op(OpKind.CONV, conv, ["x", "w", "b", "x"], name="conv").outputs[0]
    f = g.add_op(OpKind.FLATTEN, FlattenAttrs(1), [y]).outputs[0]
    g.add_constant("fw", rng.standard_normal((75, 4)).astype(np.float32))
    gemm = GemmAttrs(epilogue=Epilogue(activation=OpKind.LEAKY_RELU, activation_attrs=LeakyReluAttrs(0.1)))
    g.outputs = list(g.add_op(OpKind.GEMM, gemm, [f, "fw"], ["out"], name="fc").outputs)
    return g


def test_fused_epilogues_are_written_as_separate_nodes(rng):
    g = _graph_with_fused_epilogues(rng)
    exported = export_onnx(g)
    assert [n.op_type for n in exported.graph.node] == ["Conv", "Add", "Relu", "Flatten", "Gemm", "LeakyRelu"]
    x = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
    assert_close(run_onnxruntime(exported, x), run_reference(g, {"x": x})["out"], TOL, "fused epilogues")


def run_session(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def single_op(kind: OpKind, attrs, shapes: list[tuple[int, ...]], rng, constants: dict[int, np.ndarray] | None = None
              ) -> tuple[Graph, dict[str, np.ndarray]]:
    """A graph of one op: input i is a graph input of shapes[i], or the constant constants[i]."""
    constants = constants or {}
    g = Graph(kind.value)
    feeds, names = {}, []
    for i, shape in enumerate(shapes):
        name = f"c{i}" if i in constants else f"x{i}"
        if i in constants:
            g.add_constant(name, constants[i])
        else:
            g.add_tensor(name, shape, np.float32, TensorKind.INPUT)
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
        names.append(name)
    g.outputs = list(g.add_op(kind, attrs, names, name=kind.value.lower()).outputs)
    return g, feeds


def check_export(g: Graph, feeds: dict[str, np.ndarray], opset: int | None = None) -> onnx.ModelProto:
    """onnxruntime on the exported graph agrees with convc's numpy reference, output by output."""
    exported = export_onnx(g, opset=opset)
    expected = run_reference(g, feeds)
    outputs = run_session(exported, feeds)
    assert len(outputs) == len(g.outputs)
    for name, got in zip(g.outputs, outputs):
        assert_close(got, expected[name], TOL, f"{g.name} output {name}")
    return exported


S = (2, 3, 4, 5)
SINGLE_OPS = {
    "sum": (OpKind.SUM, NoAttrs(), [(2, 3, 4)] * 3, {}),
    "matmul": (OpKind.MATMUL, NoAttrs(), [(2, 4, 4)] * 2, {}),
    "global-max-pool": (OpKind.GLOBAL_MAX_POOL, GlobalPoolAttrs(), [S], {}),
    "identity": (OpKind.IDENTITY, NoAttrs(), [(2, 3)], {}),
    "sub": (OpKind.SUB, NoAttrs(), [S, (1, 3, 1, 1)], {}),
    "div": (OpKind.DIV, NoAttrs(), [S, (1, 3, 1, 1)], {1: np.full((1, 3, 1, 1), 2.5, np.float32)}),
    "max": (OpKind.MAX, NoAttrs(), [S] * 3, {}),
    "min": (OpKind.MIN, NoAttrs(), [S, (5,)], {}),
    "prelu": (OpKind.PRELU, NoAttrs(), [S, (3, 1, 1)], {1: np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)}),
    "relu6": (OpKind.CLIP, ClipAttrs(0.0, 6.0), [S], {}),
    "clip-lower-only": (OpKind.CLIP, ClipAttrs(-0.5), [S], {}),
    "elu": (OpKind.ELU, EluAttrs(0.7), [S], {}),
    "selu": (OpKind.SELU, SeluAttrs(), [S], {}),
    "hard-sigmoid": (OpKind.HARD_SIGMOID, HardSigmoidAttrs(0.3, 0.4), [S], {}),
    "hard-swish": (OpKind.HARD_SWISH, NoAttrs(), [S], {}),
    "softplus": (OpKind.SOFTPLUS, NoAttrs(), [S], {}),
    "softsign": (OpKind.SOFTSIGN, NoAttrs(), [S], {}),
    "log-softmax": (OpKind.LOG_SOFTMAX, SoftmaxAttrs(1), [S], {}),
    "transpose": (OpKind.TRANSPOSE, TransposeAttrs((0, 2, 3, 1)), [S], {}),
    "split": (OpKind.SPLIT, SplitAttrs(1, (1, 2)), [S], {}),
    "pad-constant": (OpKind.PAD, PadAttrs((0, 0, 1, 2, 0, 0, 2, 1), "constant", 0.5), [S], {}),
    "pad-reflect-crop": (OpKind.PAD, PadAttrs((0, 0, 2, -1, 0, 0, 1, 1), "reflect"), [S], {}),
    "pad-edge": (OpKind.PAD, PadAttrs((0, 1, 1, 1, 0, 0, 1, 0), "edge"), [S], {}),
    "strided-slice": (OpKind.STRIDED_SLICE, StridedSliceAttrs((0, 1, 0, 1), (1, 1, 2, 2), (2, 2, 2, 2)), [S], {}),
    "strided-slice-backwards": (OpKind.STRIDED_SLICE, StridedSliceAttrs((1, 2, 3, 4), (-1, -1, -1, -2),
                                                                        (2, 3, 4, 3)), [S], {}),
    "slice": (OpKind.SLICE, SliceAttrs(axis=1, start=1, stop=3), [(2, 4, 5)], {}),
    "reduce-sum": (OpKind.REDUCE_SUM, ReduceAttrs(axes=(0, 2), shape=(3,)), [(2, 3, 4)], {}),
    "reduce-sum-reshaped": (OpKind.REDUCE_SUM, ReduceAttrs(axes=(0,), shape=(1, 3, 4)), [(2, 3, 4)], {}),
    "lp-pool": (OpKind.LP_POOL, LpPoolAttrs((2, 2), (1, 2), (0, 1, 1, 0), (1, 1), p=3), [S], {}),
    "lrn": (OpKind.LRN, LrnAttrs(3, 2e-4, 0.7, 1.5), [S], {}),
    "resize-nearest-2x": (OpKind.RESIZE, ResizeAttrs((2, 3, 8, 10), (1.0, 1.0, 2.0, 2.0)), [S], {}),
    "resize-linear-align": (OpKind.RESIZE, ResizeAttrs((2, 3, 7, 9), (1.0, 1.0, 7 / 4, 9 / 5), "linear",
                                                       "align_corners"), [S], {}),
    "resize-cubic": (OpKind.RESIZE, ResizeAttrs((2, 3, 6, 7), (1.0, 1.0, 1.5, 1.4), "cubic"), [S], {}),
}


@pytest.mark.parametrize("case", SINGLE_OPS.keys())
def test_single_ops_export(rng, case):
    kind, attrs, shapes, constants = SINGLE_OPS[case]
    g, feeds = single_op(kind, attrs, shapes, rng, constants)
    check_export(g, feeds)


def test_hard_swish_is_native_from_opset_14(rng):
    g, feeds = single_op(OpKind.HARD_SWISH, NoAttrs(), [S], rng)
    assert [n.op_type for n in check_export(g, feeds).graph.node] == ["HardSigmoid", "Mul"]
    assert [n.op_type for n in check_export(g, feeds, opset=14).graph.node] == ["HardSwish"]


def test_conv_transpose_with_a_fused_relu6(rng):
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    attrs = ConvTransposeAttrs((3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 1, (1, 1),
                               Epilogue(activation=OpKind.CLIP, activation_attrs=ClipAttrs(0.0, 6.0)))
    g, feeds = single_op(OpKind.CONV_TRANSPOSE, attrs, [(1, 3, 4, 4), w.shape], rng, {1: w})
    exported = check_export(g, feeds)
    assert [n.op_type for n in exported.graph.node] == ["ConvTranspose", "Clip"]


def test_every_registered_onnx_op_has_an_exporter():
    """Adding an op with an ONNX counterpart means adding its exporter (frontend/onnx_export.py)."""
    missing = [k.value for k in registered_kinds() if onnx.defs.has(k.value) and k not in EXPORTERS]
    assert not missing
    assert OpKind.STRIDED_SLICE in EXPORTERS  # convc's name for a Slice with every axis resolved


def test_ops_without_an_onnx_counterpart_are_listed():
    """The optimized graph of a compiled grouped 3x3 conv holds the Im2Col op the lowering pass introduced
    (one image x 2 groups x 1 block of output rows is too few blocks for 2 threads to gather in the conv)."""
    optimized = convc.compile(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), input_shape=(1, 4, 5, 5), threads=2).graph
    assert OpKind.IM2COL in {op.kind for op in optimized.ops()}
    with pytest.raises(ExportError, match=r"node '.*': Im2Col is not an ONNX op \(passes or training introduce it"):
        export_onnx(optimized)


def test_channels_last_ops_are_not_exported_as_onnx_ops():
    """The layout pass's channels-last conv would read as an ONNX Conv on NCHW data: refused by name."""
    optimized = convc.compile(nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU()), input_shape=(1, 2, 5, 5)).graph
    with pytest.raises(ExportError, match=r"Conv runs channels last \(NHWC\)"):
        export_onnx(optimized)


def test_dilated_average_pool_needs_opset_19(rng):
    g, feeds = single_op(OpKind.AVERAGE_POOL, PoolAttrs((2, 2), (1, 1), (0, 0, 0, 0), (2, 2)), [(1, 2, 6, 6)], rng)
    with pytest.raises(ExportError) as info:
        export_onnx(g)
    assert str(info.value) == ("cannot export 1 node(s) of graph 'AveragePool' to ONNX:\n"
                               "  - node 'averagepool': AveragePool dilations=(2, 2) need opset 19 (asked for 13)")
    check_export(g, feeds, opset=19)


def test_opset_range():
    with pytest.raises(ExportError, match="opset 12 is not supported"):
        nn.Sequential(nn.ReLU()).to_onnx(None, (1, 2), opset=12)


def _node_attributes(model: onnx.ModelProto) -> dict[str, object]:
    (node,) = model.graph.node
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def test_pool_attributes_follow_the_opset_schema(rng):
    """The declared attributes an op type lacks at the opset are left out while they hold their
    neutral value (MaxPool has no count_include_pad, AveragePool no dilations before 19) and refused
    otherwise, with the opset that has them."""
    g, feeds = single_op(OpKind.MAX_POOL, PoolAttrs((3, 2), (2, 1), (1, 0, 1, 1), (1, 2), ceil_mode=True),
                         [(1, 2, 9, 8)], rng)
    assert _node_attributes(check_export(g, feeds)) == {"kernel_shape": [3, 2], "strides": [2, 1],
                                                        "pads": [1, 0, 1, 1], "dilations": [1, 2], "ceil_mode": 1}
    g, _ = single_op(OpKind.MAX_POOL, PoolAttrs((2, 2), (2, 2), (0,) * 4, (1, 1), count_include_pad=True), [S], rng)
    assert "count_include_pad" not in _node_attributes(export_onnx(g))  # AveragePool's, meaningless for a max
    g, feeds = single_op(OpKind.AVERAGE_POOL, PoolAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), count_include_pad=True),
                         [(1, 2, 6, 6)], rng)
    assert "dilations" not in _node_attributes(check_export(g, feeds))
    assert _node_attributes(check_export(g, feeds, opset=19))["dilations"] == [1, 1]
    g, feeds = single_op(OpKind.LP_POOL, LpPoolAttrs((2, 2), (2, 2), (0, 0, 0, 0), (1, 1), ceil_mode=True, p=1),
                         [(1, 2, 7, 7)], rng)
    with pytest.raises(ExportError, match=r"LpPool ceil_mode=1 need opset 18 \(asked for 13\)"):
        export_onnx(g)
    assert _node_attributes(check_export(g, feeds, opset=18))["ceil_mode"] == 1


def test_resize_attributes_follow_the_opset_schema(rng):
    a = ResizeAttrs((1, 2, 12, 9), (1.0, 1.0, 2.0, 1.5), "linear", antialias=True)
    g, _ = single_op(OpKind.RESIZE, a, [(1, 2, 6, 6)], rng)
    with pytest.raises(ExportError, match=r"Resize antialias=1 need opset 18 \(asked for 13\)"):
        export_onnx(g)
    assert _node_attributes(export_onnx(g, opset=18))["antialias"] == 1
    g, _ = single_op(OpKind.RESIZE, ResizeAttrs((1, 2, 12, 9), (1.0, 1.0, 2.0, 1.5), "cubic"), [(1, 2, 6, 6)], rng)
    written = _node_attributes(export_onnx(g))
    assert "antialias" not in written and written["mode"] == b"cubic" and written["cubic_coeff_a"] == -0.75
