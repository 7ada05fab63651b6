"""The light models shipped with the onnx wheel: weights come from ConstantOfShape nodes that must fold."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from onnx_import_helpers import assert_close, run_onnx

from convc.frontend.onnx import import_onnx
from convc.ops import OpKind
from convc.reference import run_reference

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def light(name: str) -> Path:
    return LIGHT / f"light_{name}.onnx"


def backend_test_input(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The input onnx's backend runner feeds light models (runner.generate_dummy_data with random=False)."""
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            n = int(np.prod(shape))
            feeds[vi.name] = (np.arange(n).reshape(shape) / n).astype(np.float32)
    return feeds


# op counts after import; every ConstantOfShape folded into a weight
EXPECTED_OPS = {
    "squeezenet": {OpKind.CONV: 26, OpKind.RELU: 26, OpKind.CONCAT: 8, OpKind.MAX_POOL: 3, OpKind.DROPOUT: 1,
                   OpKind.GLOBAL_AVERAGE_POOL: 1, OpKind.SOFTMAX: 1},
    "vgg19": {OpKind.CONV: 16, OpKind.RELU: 18, OpKind.MAX_POOL: 5, OpKind.GEMM: 3, OpKind.DROPOUT: 2,
              OpKind.RESHAPE: 1, OpKind.SOFTMAX: 1},
    "resnet50": {OpKind.CONV: 53, OpKind.BATCH_NORM: 53, OpKind.RELU: 49, OpKind.SUM: 16, OpKind.MAX_POOL: 1,
                 OpKind.AVERAGE_POOL: 1, OpKind.RESHAPE: 1, OpKind.GEMM: 1, OpKind.SOFTMAX: 1},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_OPS))
def test_light_model_imports(name):
    model = onnx.load(light(name))
    n_constant_of_shape = sum(n.op_type == "ConstantOfShape" for n in model.graph.node)
    graph = import_onnx(light(name))
    graph.verify()
    assert dict(collections.Counter(op.kind for op in graph.ops())) == EXPECTED_OPS[name]
    # each ConstantOfShape became a float constant read by a compiled op
    weights = [t for t in graph.constants() if t.dtype == np.float32]
    assert len(weights) >= n_constant_of_shape
    assert not any(t.dtype == np.int64 for t in graph.tensors()), "the __SHAPE inputs must fold away"
    assert graph.inputs == [vi.name for vi in model.graph.input
                            if vi.name not in {t.name for t in model.graph.initializer}]
    assert graph.outputs == [o.name for o in model.graph.output]
    assert graph.name == model.graph.name
    assert set(graph.metadata["overridable"]) <= {vi.name for vi in model.graph.input}
    assert all(graph.has_tensor(n) for n in graph.metadata["overridable"])


def test_squeezenet_matches_shipped_output():
    model = onnx.load(light("squeezenet"))
    graph = import_onnx(model)
    feeds = backend_test_input(model)
    ours = run_reference(graph, feeds)["softmaxout_1"]
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / "light_squeezenet_output_0.pb")))
    assert_close(ours, expected)


def test_squeezenet_with_random_weights_matches_onnxruntime():
    # the shipped weights are all 0.02, which makes every class equally likely: swap in random ones
    model = onnx.load(light("squeezenet"))
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    keep = []
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape":
            shape = tuple(shapes[node.input[0]])
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            w = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
            model.graph.initializer.append(numpy_helper.from_array(w, node.output[0]))
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    graph = import_onnx(model)
    feeds = {"data_0": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}
    ours = run_reference(graph, feeds)["softmaxout_1"]
    expected = run_onnx(model, feeds)["softmaxout_1"]
    assert np.ptp(expected) > 1e-3, "random weights should give a non-uniform distribution"
    assert_close(ours, expected)
