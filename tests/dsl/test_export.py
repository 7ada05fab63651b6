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
from convc.ops.elementwise import LeakyReluAttrs
from convc.ops.elementwise_grad import ReduceSumAttrs, SliceAttrs
from convc.ops.epilogue import Epilogue
from convc.ops.gemm import GemmAttrs
from convc.ops.pool import PoolAttrs
from convc.ops.shape import FlattenAttrs
from convc.reference import run_reference


def every_layer_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding="same"), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(6, 6, 3, groups=3, padding=(1, 0, 1, 2)), nn.LeakyReLU(0.05), nn.AvgPool2d(3, 1, padding=1),
        nn.Conv2d(6, 4, 2, dilation=2, padding="causal"), nn.GlobalAvgPool(), nn.Sigmoid(), nn.Flatten(),
        nn.Dropout(0.25), nn.Linear(4, 8), nn.Tanh(), nn.BatchNorm1d(8), nn.Linear(8, 3), nn.Softmax(1))


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


def run_session(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _graph_of(kind: OpKind, attrs, n_inputs: int, shape: tuple[int, ...], rng) -> tuple[Graph, list[np.ndarray]]:
    g = Graph(kind.value)
    xs = []
    for i in range(n_inputs):
        g.add_tensor(f"x{i}", shape, np.float32, TensorKind.INPUT)
        xs.append(rng.standard_normal(shape).astype(np.float32))
    g.outputs = list(g.add_op(kind, attrs, [f"x{i}" for i in range(n_inputs)], ["y"]).outputs)
    return g, xs


@pytest.mark.parametrize("kind,attrs,n_inputs,shape", [
    (OpKind.SUM, NoAttrs(), 3, (2, 3, 4)),
    (OpKind.MATMUL, NoAttrs(), 2, (2, 4, 4)),
    (OpKind.GLOBAL_MAX_POOL, NoAttrs(), 1, (2, 3, 4, 5)),
    (OpKind.IDENTITY, NoAttrs(), 1, (2, 3)),
    (OpKind.REDUCE_SUM, ReduceSumAttrs(axes=(0, 2), shape=(3,)), 1, (2, 3, 4)),
    (OpKind.REDUCE_SUM, ReduceSumAttrs(axes=(0,), shape=(1, 3, 4)), 1, (2, 3, 4)),
    (OpKind.SLICE, SliceAttrs(axis=1, start=1, stop=3), 1, (2, 4, 5)),
], ids=["sum", "matmul", "global-max-pool", "identity", "reduce-sum", "reduce-sum-reshaped", "slice"])
def test_ops_the_dsl_does_not_emit_export_too(rng, kind, attrs, n_inputs, shape):
    g, xs = _graph_of(kind, attrs, n_inputs, shape, rng)
    got = run_session(export_onnx(g), {f"x{i}": x for i, x in enumerate(xs)})
    assert_close(got, run_reference(g, {f"x{i}": x for i, x in enumerate(xs)})["y"], TOL, kind.value)


def test_every_registered_onnx_op_has_an_exporter():
    """Adding an op with an ONNX counterpart means adding its exporter (frontend/onnx_export.py)."""
    missing = [k.value for k in registered_kinds() if onnx.defs.has(k.value) and k not in EXPORTERS]
    assert not missing


def test_ops_without_an_onnx_counterpart_are_listed():
    """The optimized graph of a compiled 3x3 conv holds the Im2Col op the lowering pass introduced."""
    optimized = convc.compile(nn.Sequential(nn.Conv2d(2, 2, 3)), input_shape=(1, 2, 5, 5)).graph
    assert OpKind.IM2COL in {op.kind for op in optimized.ops()}
    with pytest.raises(ExportError, match=r"node '.*': Im2Col is not an ONNX op \(passes or training introduce it"):
        export_onnx(optimized)


def test_dilated_average_pool_needs_opset_19(rng):
    g, xs = _graph_of(OpKind.AVERAGE_POOL, PoolAttrs((2, 2), (1, 1), (0, 0, 0, 0), (2, 2)), 1, (1, 2, 6, 6), rng)
    with pytest.raises(ExportError) as info:
        export_onnx(g)
    assert str(info.value) == ("cannot export 1 node(s) of graph 'AveragePool' to ONNX:\n"
                               "  - node 'averagepool': AveragePool dilations=(2, 2) need opset 19 (asked for 13)")
    got = run_session(export_onnx(g, opset=19), {"x0": xs[0]})
    assert_close(got, run_reference(g, {"x0": xs[0]})["y"], TOL, "dilated AveragePool")


def test_opset_range():
    with pytest.raises(ExportError, match="opset 12 is not supported"):
        nn.Sequential(nn.ReLU()).to_onnx(None, (1, 2), opset=12)
