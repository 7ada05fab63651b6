"""Whole networks: ONNX in, convc-compiled native code out, compared with onnxruntime.

Models: LeNet-5 and the CIFAR CNN from ``convc.models`` (seeded random weights), and the onnx
wheel's ``light_squeezenet`` and ``light_vgg19`` (opset 9, IR 3; their weights come from
ConstantOfShape nodes that fill every weight with 0.02, which makes every class score equal). So
that the comparison sees distinct numbers, the light models also run with those ConstantOfShape
nodes replaced by seeded random initializers of the same shapes (VGG-19 only that way: it is slow).

Error measure: max |convc - onnxruntime| / max |onnxruntime| over the whole output.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.models import cifar_cnn, lenet5

ort = pytest.importorskip("onnxruntime")

RTOL = 1e-4
LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, f"shape {got.shape}, onnxruntime {ref.shape}"
    assert got.dtype == ref.dtype, f"dtype {got.dtype}, onnxruntime {ref.dtype}"
    assert np.isfinite(ref).all()
    return float(np.max(np.abs(got.astype(np.float64) - ref)) / max(float(np.max(np.abs(ref))), 1e-30))


def ort_session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3  # no warnings about unused initializers
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def data_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def random_feeds(model: onnx.ModelProto, batch: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in data_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def load_light(name: str) -> onnx.ModelProto:
    path = os.path.join(LIGHT, f"{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"this onnx wheel does not ship {path}")
    return onnx.load(path)


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace each ConstantOfShape that fills a weight by a seeded random initializer (He scale)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    rng = np.random.default_rng(seed)
    kept, weights = [], []
    for node in m.graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in inits:
            shape = tuple(int(d) for d in inits[node.input[0]])
            if len(shape) == 1:
                w = rng.uniform(-0.1, 0.1, shape)
            else:  # conv OIHW or Gemm (out, in) with transB=1: fan-in is everything but dim 0
                w = rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))
            weights.append(numpy_helper.from_array(w.astype(np.float32), node.output[0]))
        else:
            kept.append(node)
    assert weights, "no ConstantOfShape weights found"
    del m.graph.node[:]
    m.graph.node.extend(kept)
    m.graph.initializer.extend(weights)
    # IR 3 lists every initializer among the graph inputs too
    m.graph.input.extend(helper.make_tensor_value_info(w.name, TensorProto.FLOAT, list(w.dims)) for w in weights)
    return m


def compare(model: onnx.ModelProto, batch: int = 1, seed: int = 0, **compile_args) -> float:
    feeds = random_feeds(model, batch, seed)
    expected = ort_session(model).run(None, feeds)
    compiled = convc.compile(model, **compile_args)
    got = compiled.run(feeds)
    assert list(got) == [o.name for o in model.graph.output]
    errors = {name: rel_error(g, e) for (name, g), e in zip(got.items(), expected)}
    for name, err in errors.items():
        assert err < RTOL, f"{model.graph.name} output {name!r}: relative error {err:.3g} >= {RTOL}"
    return max(errors.values())


# --- built-in models -------------------------------------------------------------------------

@pytest.mark.parametrize("build", [lenet5, cifar_cnn], ids=["lenet5", "cifar_cnn"])
@pytest.mark.parametrize("batch", [None, 3])
def test_builtin_model_matches_onnxruntime(build, batch):
    compare(build(batch=batch), batch=batch or 1)


@pytest.mark.slow
def test_symbolic_batch_recompiles_per_batch_size():
    model = lenet5()  # batch dimension "N"
    session = ort_session(model)
    compiled = convc.compile(model)
    assert compiled.inputs[0].shape == (1, 1, 28, 28)  # compiled for batch 1 up front
    for batch, seed in [(1, 0), (4, 1), (1, 2), (4, 3), (2, 4)]:
        feeds = random_feeds(model, batch, seed)
        (expected,) = session.run(None, feeds)
        got = compiled(feeds["input"])
        assert got.shape == (batch, 10)
        assert rel_error(got, expected) < RTOL, f"batch {batch}"
    # each row depends only on its own image: batch 4 row 0 equals batch 1 of that image
    x = random_feeds(model, 4, 9)["input"]
    np.testing.assert_allclose(compiled(x)[:1], compiled(x[:1]), rtol=1e-5, atol=1e-7)


def test_fixed_batch_compiles_once():
    compiled = convc.compile(lenet5(), batch=4)
    assert compiled.inputs[0].shape == (4, 1, 28, 28)
    with pytest.raises(convc.InputError, match=r"\(4, 1, 28, 28\)"):
        compiled(np.zeros((2, 1, 28, 28), np.float32))


def test_inference_session_is_a_drop_in_for_onnxruntime(tmp_path):
    model = cifar_cnn()
    path = tmp_path / "cifar.onnx"
    onnx.save(model, str(path))
    ours = convc.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in ours.get_inputs()] == [i.name for i in theirs.get_inputs()]
    assert [o.name for o in ours.get_outputs()] == [o.name for o in theirs.get_outputs()]
    assert ours.get_inputs()[0].type == theirs.get_inputs()[0].type == "tensor(float)"
    feeds = random_feeds(model, 1, 5)
    expected = theirs.run(None, feeds)
    got = ours.run(None, feeds)
    assert isinstance(got, list) and len(got) == len(expected) == 1
    assert rel_error(got[0], expected[0]) < RTOL
    (named,) = ours.run(["output"], feeds)
    np.testing.assert_array_equal(named, got[0])
    with pytest.raises(convc.InputError, match="nope"):
        ours.run(["nope"], feeds)


@pytest.mark.slow
def test_compile_accepts_path_bytes_and_proto(tmp_path):
    model = lenet5(batch=2)
    path = tmp_path / "lenet.onnx"
    onnx.save(model, str(path))
    x = random_feeds(model, 2, 6)["input"]
    results = [convc.compile(src)(x) for src in (str(path), path, model.SerializeToString(), model)]
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# --- the onnx wheel's light models -----------------------------------------------------------

@pytest.mark.slow
def test_light_squeezenet_as_shipped():
    compare(load_light("light_squeezenet"))


@pytest.mark.slow
def test_light_squeezenet_random_weights():
    compare(with_random_weights(load_light("light_squeezenet"), seed=1))


@pytest.mark.slow
def test_light_vgg19_random_weights():
    """VGG-19 at 224x224 (about 20 GFLOP) runs once: compiling and running it takes ~20 s here.
    Only the random-weight variant: the shipped 0.02 weights give a uniform softmax, which the
    squeezenet test above already covers together with ConstantOfShape folding."""
    start = time.perf_counter()
    compare(with_random_weights(load_light("light_vgg19"), seed=2))
    print(f"light_vgg19: compile + one run + onnxruntime: {time.perf_counter() - start:.1f} s")


# --- examples/ -------------------------------------------------------------------------------

@pytest.mark.slow
def test_python_api_example_runs(tmp_path):
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "python_api.py")
    result = subprocess.run([sys.executable, script], check=False, capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "InferenceSession agrees: True" in result.stdout
