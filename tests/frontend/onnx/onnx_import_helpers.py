"""Shared helpers for the ONNX importer tests: build one-graph models, run them both ways, compare."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from convc.frontend.onnx import import_onnx
from convc.ir import Graph
from convc.ops import OpKind
from convc.reference import run_reference

FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def make_model(nodes: Sequence[onnx.NodeProto], inputs: dict[str, Sequence[int | str | None] | None],
               outputs: dict[str, int] | Sequence[str], initializers: dict[str, np.ndarray] | None = None,
               opset: int = 17, input_type: int = FLOAT, name: str = "test") -> onnx.ModelProto:
    """A model with the given nodes; ``outputs`` maps names to element types (a list means all float)."""
    if not isinstance(outputs, dict):
        outputs = {o: FLOAT for o in outputs}
    graph = helper.make_graph(
        list(nodes), name,
        [helper.make_tensor_value_info(k, input_type, shape) for k, shape in inputs.items()],
        [helper.make_tensor_value_info(k, t, None) for k, t in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()])
    opsets = [helper.make_opsetid("", opset)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))


def random_inputs(model: onnx.ModelProto, seed: int = 0, batch: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def run_onnx(model: onnx.ModelProto, feeds: dict[str, np.ndarray], oracle: str = "ort") -> dict[str, np.ndarray]:
    names = [o.name for o in model.graph.output]
    if oracle == "ort":
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        results = session.run(names, feeds)
    else:
        results = ReferenceEvaluator(model).run(names, feeds)
    return dict(zip(names, (np.asarray(r) for r in results)))


def assert_close(actual: np.ndarray, expected: np.ndarray, rtol: float = 1e-4, name: str = "") -> None:
    """Shape and dtype first, then values (absolute slack scaled by the output's magnitude)."""
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != expected {expected.dtype}"
    scale = float(np.max(np.abs(expected))) if expected.size and expected.dtype.kind == "f" else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-6 * max(scale, 1.0), err_msg=name)


def check_model(model: onnx.ModelProto, oracle: str = "ort", batch: int | None = None,
                feeds: dict[str, np.ndarray] | None = None) -> Graph:
    """Import ``model``, run it with the numpy references and compare every output with ``oracle``."""
    graph = import_onnx(model, batch=batch)
    graph.verify()
    feeds = feeds if feeds is not None else random_inputs(model, batch=batch or 1)
    ours = run_reference(graph, feeds)
    theirs = run_onnx(model, feeds, oracle)
    assert graph.outputs == list(theirs)
    for k in theirs:
        assert_close(ours[k], theirs[k], name=k)
    return graph


def op_kinds(graph: Graph) -> list[OpKind]:
    return [op.kind for op in graph.ops()]


def count(graph: Graph, kind: OpKind) -> int:
    return sum(op.kind is kind for op in graph.ops())
