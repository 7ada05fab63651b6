"""Symbolic input dimensions beyond the batch (issue 18): ``input_shapes=`` / ``--input-shape`` fix
them, a model compiled without them compiles each new input shape on first use (the batch's
mechanism and bound), and ``InferenceSession.get_inputs()`` shows the symbols by name as
onnxruntime does. Compared with onnxruntime on models with symbolic N, H and W."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
from convc.cli import main
from convc.errors import InputError, ModelImportError

ort = pytest.importorskip("onnxruntime")

SIZES = [(1, 3, 32, 32), (2, 3, 57, 43), (16, 3, 64, 96)]


def _model(nodes, inits, inputs, outputs, name) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
                              initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def pooled_net() -> onnx.ModelProto:
    """x [N, 3, H, W] -> conv 3x3 + relu -> conv 3x3 stride 2 + relu -> global average pool -> flatten -> gemm: [N, 10]."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
             "b1": rng.standard_normal(8).astype(np.float32) * 0.1,
             "w2": rng.standard_normal((16, 8, 3, 3)).astype(np.float32) * 0.2,
             "fc": rng.standard_normal((16, 10)).astype(np.float32) * 0.3,
             "fb": rng.standard_normal(10).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["logits"])]
    return _model(nodes, inits, [("x", ["N", 3, "H", "W"])], [("logits", ["N", 10])], "pooled")


def fully_convolutional() -> onnx.ModelProto:
    """x [N, 3, H, W] -> conv 3x3 + relu -> conv 3x3 stride 2 + relu -> conv 1x1: [N, 4, Ho, Wo]."""
    rng = np.random.default_rng(1)
    inits = {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3,
             "w2": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2,
             "w3": rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3,
             "b3": rng.standard_normal(4).astype(np.float32) * 0.1}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], kernel_shape=[3, 3], strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], kernel_shape=[1, 1])]
    return _model(nodes, inits, [("x", ["N", 3, "H", "W"])], [("y", ["N", 4, "Ho", "Wo"])], "fcn")


def two_inputs(a=("N", 2, "H", "W"), b=("N", 2, "H", "W")) -> onnx.ModelProto:
    """a + b, then relu: compiles in a blink, for the error cases and the variant bound."""
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    return _model(nodes, {}, [("a", list(a)), ("b", list(b))], [("y", None)], "add")


def oracle(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def feed(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- first-use specialization ------------------------------------------------------------------

@pytest.mark.parametrize("build", [pooled_net, fully_convolutional])
@pytest.mark.slow
def test_symbolic_height_and_width_compile_per_shape_and_match_onnxruntime(build):
    model = build()
    compiled = convc.compile(model, threads=1)
    assert not compiled.compiled  # no default height or width: nothing compiles before the first run
    assert compiled.inputs[0].shape == ("N", 3, "H", "W")
    for i, shape in enumerate(SIZES):
        x = feed(shape, i)
        (want,) = oracle(model, {"x": x})
        got = compiled(x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * max(1.0, np.abs(want).max()))
    assert len(compiled._variants) == len(SIZES)
    x = feed(SIZES[0], 0)
    np.testing.assert_array_equal(compiled(x), compiled(x))  # a shape seen before runs its variant again
    assert len(compiled._variants) == len(SIZES)


def test_output_shape_follows_height_and_width():
    compiled = convc.compile(fully_convolutional(), threads=1)
    assert compiled(feed((1, 3, 32, 32))).shape == (1, 4, 15, 15)
    assert compiled(feed((2, 3, 57, 43))).shape == (2, 4, 28, 21)


def test_input_shapes_fix_every_dimension():
    model = pooled_net()
    compiled = convc.compile(model, input_shapes={"x": (2, 3, 40, 24)}, threads=1)
    assert compiled.compiled and compiled.inputs[0].shape == (2, 3, 40, 24)
    x = feed((2, 3, 40, 24))
    np.testing.assert_allclose(compiled(x), oracle(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match=r"input 'x' has shape \(2, 3, 40, 40\), expected \(2, 3, 40, 24\)"):
        compiled(feed((2, 3, 40, 40)))


def test_input_shapes_accept_numpy_integers_and_lists():
    compiled = convc.compile(two_inputs(), input_shapes={"a": [np.int64(1), 2, 3, 4], "b": np.array([1, 2, 3, 4])})
    assert [s.shape for s in compiled.inputs] == [(1, 2, 3, 4), (1, 2, 3, 4)]


def test_a_symbol_fixed_for_one_input_is_fixed_for_the_others():
    compiled = convc.compile(two_inputs(), input_shapes={"a": (2, 2, 3, 5)})
    assert compiled.compiled and [s.shape for s in compiled.inputs] == [(2, 2, 3, 5), (2, 2, 3, 5)]


def test_batch_with_symbolic_height_and_width():
    compiled = convc.compile(fully_convolutional(), batch=2, threads=1)
    assert compiled.inputs[0].shape == (2, 3, "H", "W")
    assert compiled(feed((2, 3, 20, 18))).shape == (2, 4, 9, 8)
    with pytest.raises(InputError, match=r"input 'x' has shape \(3, 3, 20, 18\), expected \[2, 3, H, W\]"):
        compiled(feed((3, 3, 20, 18)))


def test_batch_only_symbolic_still_compiles_batch_one_first():
    model = two_inputs(("N", 2, 3, 3), ("N", 2, 3, 3))
    compiled = convc.compile(model)
    assert compiled.compiled and compiled.batch == 1
    a, b = feed((5, 2, 3, 3), 1), feed((5, 2, 3, 3), 2)
    np.testing.assert_array_equal(compiled.run({"a": a, "b": b})["y"], np.maximum(a + b, 0))


# --- errors at run time ------------------------------------------------------------------------

def test_a_shape_too_small_for_the_kernels_is_an_input_error():
    compiled = convc.compile(fully_convolutional(), threads=1)
    with pytest.raises(InputError, match=r"input 'x' has shape \(1, 3, 2, 2\); the model cannot be built for it: "
                                         r".*Conv.*empty"):
        compiled(feed((1, 3, 2, 2)))


def test_zero_height_is_refused_before_compiling():
    compiled = convc.compile(fully_convolutional())
    with pytest.raises(InputError, match=r"input 'x' has shape \(1, 3, 0, 8\): dimension 2 \(H\) is 0; it must be "
                                         r"at least 1"):
        compiled(np.zeros((1, 3, 0, 8), np.float32))
    assert not compiled._variants


def test_wrong_rank_dtype_and_missing_inputs_before_the_first_compile():
    compiled = convc.compile(two_inputs())
    with pytest.raises(InputError, match=r"input 'a' has shape \(2, 3, 4\), expected \[N, 2, H, W\]"):
        compiled.run({"a": np.zeros((2, 3, 4), np.float32), "b": np.zeros((2, 3, 4), np.float32)})
    with pytest.raises(InputError, match=r"input 'a' has dtype float64, expected float32"):
        compiled.run({"a": np.zeros((1, 2, 3, 4)), "b": np.zeros((1, 2, 3, 4), np.float32)})
    with pytest.raises(InputError, match=r"missing input\(s\) \['b'\]; the model takes \['a', 'b'\]"):
        compiled.run({"a": np.zeros((1, 2, 3, 4), np.float32)})
    assert not compiled._variants


def test_inputs_sharing_a_symbol_must_agree():
    compiled = convc.compile(two_inputs())
    with pytest.raises(InputError, match=r"inputs 'a' and 'b' share dimension 'H', but are fed 3 and 4"):
        compiled.run({"a": np.zeros((1, 2, 3, 4), np.float32), "b": np.zeros((1, 2, 4, 4), np.float32)})


def test_the_variant_bound_applies_to_spatial_and_batch_variants(monkeypatch):
    monkeypatch.setenv("CONVC_MAX_VARIANTS", "2")
    spatial = convc.compile(two_inputs())
    for h in (3, 4):
        x = np.ones((1, 2, h, 5), np.float32)
        assert spatial.run({"a": x, "b": x})["y"].shape == (1, 2, h, 5)
    x = np.ones((1, 2, 6, 5), np.float32)
    with pytest.raises(InputError, match=r"input 'a' has shape \(1, 2, 6, 5\); input 'b' has shape \(1, 2, 6, 5\): "
                                         r"the model already compiled 2 variants for other input shapes, the most it "
                                         r"keeps \(CONVC_MAX_VARIANTS=2\); fix the shape when compiling"):
        spatial.run({"a": x, "b": x})
    x = np.ones((1, 2, 3, 5), np.float32)
    spatial.run({"a": x, "b": x})  # shapes compiled before still run

    batched = convc.compile(two_inputs(("N", 2, 3, 3), ("N", 2, 3, 3)))  # batch 1, then 2 and 3 on first use
    for n in (2, 3):
        x = np.ones((n, 2, 3, 3), np.float32)
        batched.run({"a": x, "b": x})
    x = np.ones((4, 2, 3, 3), np.float32)
    with pytest.raises(InputError, match=r"input 'a' has batch 4: the model already compiled 2 variants"):
        batched.run({"a": x, "b": x})


# --- errors in input_shapes --------------------------------------------------------------------

@pytest.mark.parametrize("shapes,batch,message", [
    ({"z": (1, 3, 8, 8)}, None, r"input shape for 'z': the model has no input 'z'; its inputs are \['x'\]"),
    ({"x": (1, 3, 8)}, None, r"input 'x' is declared \[N, 3, H, W\] \(4 dimensions\); the shape given for it, "
                             r"\(1, 3, 8\), has 3"),
    ({"x": (1, 4, 8, 8)}, None, r"input 'x' is declared \[N, 3, H, W\]: dimension 1 is fixed to 3, but the shape "
                                r"given for it, \(1, 4, 8, 8\), makes it 4"),
    ({"x": (1, 3, 0, 8)}, None, r"input 'x': the shape given for it, \(1, 3, 0, 8\), has dimension 2 = 0; every "
                                r"dimension must be a positive integer"),
    ({"x": (1, 3, -2, 8)}, None, r"has dimension 2 = -2; every dimension must be a positive integer"),
    ({"x": (1, 3, 8.0, 8)}, None, r"input 'x': the shape given for it, \(1, 3, 8.0, 8\), is not a sequence of "
                                  r"integers"),
    ({"x": "1,3,8,8"}, None, r"is not a sequence of integers"),
    ({"x": (2, 3, 8, 8)}, 4, r"input 'x' is declared \[N, 3, H, W\]: the shape given for it, \(2, 3, 8, 8\), has "
                             r"batch 2, but batch=4 was requested"),
    ([("x", (1, 3, 8, 8))], None, r"input_shapes=.* must map input names to shapes"),
])
def test_input_shapes_errors_name_the_input_and_dimensions(shapes, batch, message):
    with pytest.raises(InputError, match=message):
        convc.compile(fully_convolutional(), input_shapes=shapes, batch=batch)


def test_shapes_giving_one_symbol_two_sizes_are_refused():
    with pytest.raises(InputError, match=r"dimension 'H' is 3 in the shape given for input 'a' but 4 in the one "
                                         r"given for input 'b'"):
        convc.compile(two_inputs(), input_shapes={"a": (1, 2, 3, 4), "b": (1, 2, 4, 4)})


def test_a_fixed_batch_matching_input_shapes_is_fine():
    compiled = convc.compile(two_inputs(), input_shapes={"a": (2, 2, 3, 4)}, batch=2)
    assert compiled.inputs[0].shape == (2, 2, 3, 4)


def test_input_shapes_are_for_onnx_models():
    from convc.compiler import load_graph
    graph = load_graph(two_inputs(), input_shapes={"a": (1, 2, 3, 4)})
    assert graph.tensor("b").shape == (1, 2, 3, 4)
    with pytest.raises(InputError, match=r"input_shapes= fixes the symbolic dimensions of an ONNX model's inputs"):
        convc.compile(graph, input_shapes={"a": (1, 2, 3, 4)})


def test_ahead_of_time_builds_need_the_shape(tmp_path):
    from convc.compiler import build
    with pytest.raises(ModelImportError, match=r"graph input 'x' has symbolic dimensions 2 \('H'\), 3 \('W'\) "
                                               r"\(declared \[N, 3, H, W\]\); give its shape with input_shapes="
                                               r"\{'x': \(1, 3, 224, 224\)\} \(on the command line: --input-shape "
                                               r"x=1,3,224,224\)"):
        build(fully_convolutional(), tmp_path / "fcn.o")


# --- InferenceSession ------------------------------------------------------------------------

def test_get_inputs_shows_symbols_by_name_as_onnxruntime():
    model = fully_convolutional()
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ours = convc.InferenceSession(model.SerializeToString())
    assert ours.get_inputs()[0].shape == theirs.get_inputs()[0].shape == ["N", 3, "H", "W"]
    assert ours.get_outputs()[0].shape == theirs.get_outputs()[0].shape == ["N", 4, "Ho", "Wo"]
    x = feed((2, 3, 57, 43))
    np.testing.assert_allclose(ours.run(None, {"x": x})[0], theirs.run(None, {"x": x})[0], rtol=1e-4, atol=1e-4)
    assert ours.get_inputs()[0].shape == ["N", 3, "H", "W"]  # still symbolic once a shape compiled


def test_get_inputs_shows_fixed_dimensions_as_sizes():
    data = pooled_net().SerializeToString()
    sess = convc.InferenceSession(data, batch=4)
    assert sess.get_inputs()[0].shape == [4, 3, "H", "W"]
    assert sess.get_outputs()[0].shape == (4, 10)
    sess = convc.InferenceSession(data, input_shapes={"x": (2, 3, 33, 31)})
    assert sess.get_inputs()[0].shape == (2, 3, 33, 31)
    x = feed((2, 3, 33, 31))
    np.testing.assert_allclose(sess.run(["logits"], {"x": x})[0], oracle(pooled_net(), {"x": x})[0],
                               rtol=1e-4, atol=1e-4)


# --- the command line --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fcn_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "fcn.onnx"
    onnx.save(fully_convolutional(), str(path))
    return path


def test_run_with_input_shape(fcn_file, capsys):
    assert main(["run", str(fcn_file), "-q", "-r", "1", "--input-shape", "x=2,3,20,24", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"][0]["shape"] == [2, 3, 20, 24]
    assert report["outputs"][0]["shape"] == [2, 4, 9, 11]


def test_run_feeds_a_file_of_any_shape(fcn_file, tmp_path, capsys):
    x = feed((1, 3, 25, 19))
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(fcn_file), "-q", "-r", "1", "--input", f"x={tmp_path / 'x.npy'}", "-o",
                 str(tmp_path / "out")]) == 0
    (want,) = oracle(fully_convolutional(), {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args,message", [
    ([], r"convc: error: input 'x' has symbolic dimensions \[N, 3, H, W\]: give its shape with --input-shape "
         r"x=d0,d1,..."),
    (["--input-shape", "y=1,3,8,8"], r"convc: error: input shape for 'y': the model has no input 'y'; its inputs "
                                     r"are \['x'\]"),
    (["--input-shape", "x=1,4,8,8"], r"convc: error: input 'x' is declared \[N, 3, H, W\]: dimension 1 is fixed to 3"),
    (["--input-shape", "x=1,3,8"], r"convc: error: input 'x' is declared \[N, 3, H, W\] \(4 dimensions\)"),
    (["--input-shape", "x=2,3,8,8", "--batch", "3"], r"convc: error: input 'x' is declared \[N, 3, H, W\]: the shape "
                                                     r"given for it, \(2, 3, 8, 8\), has batch 2, but batch=3"),
    (["--input-shape", "x=1,3,8,8", "--input-shape", "x=1,3,9,9"],
     r"convc: error: --input-shape gives input 'x' two shapes: \(1, 3, 8, 8\) and \(1, 3, 9, 9\)"),
    (["--input-shape", "x=1,3,2,2"], r"convc: error: input 'x' has shape \(1, 3, 2, 2\); the model cannot be built "
                                     r"for it"),
])
def test_run_errors(fcn_file, capsys, args, message):
    assert main(["run", str(fcn_file), "-q", "-r", "1", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    import re
    assert re.search(message, err), err


@pytest.mark.parametrize("spec,message", [
    ("x=1,3,0,8", r"'x=1,3,0,8': dimension 2 of input 'x' is 0; every dimension must be a positive integer"),
    ("x=1,3,a,8", r"the dimensions of input 'x' must be integers separated by commas"),
    ("1,3,8,8", r"expected NAME=d0,d1,... such as x=1,3,224,224"),
])
def test_bad_input_shape_flags_are_usage_errors(fcn_file, capsys, spec, message):
    with pytest.raises(SystemExit) as info:
        main(["run", str(fcn_file), "--input-shape", spec])
    assert info.value.code == 2
    import re
    assert re.search(message, capsys.readouterr().err)


def test_compile_with_input_shape(fcn_file, tmp_path, capsys):
    out = tmp_path / "fcn.o"
    assert main(["compile", str(fcn_file), "-q", "-o", str(out), "--input-shape", "x=1,3,32,32"]) == 0
    text = capsys.readouterr().out
    assert "input  'x': float32 [1, 3, 32, 32]" in text and "output 'y': float32 [1, 4, 15, 15]" in text
    assert main(["compile", str(fcn_file), "-q", "-o", str(out)]) == 2
    assert "graph input 'x' has symbolic dimensions 2 ('H'), 3 ('W')" in capsys.readouterr().err
    assert main(["compile", str(fcn_file), "-q", "-o", str(out), "--train", "--input-shape", "x=1,3,8,8"]) == 2
    assert "--input-shape is not available with --train" in capsys.readouterr().err


@pytest.mark.slow
def test_check_with_input_shape(fcn_file, capsys):
    assert main(["check", str(fcn_file), "-q", "--input-shape", "x=2,3,19,23"]) == 0
    assert "graph output 'y': error" in capsys.readouterr().out
    assert main(["check", str(fcn_file), "-q", "--input-shape", "x=2,3,19"]) == 2
    assert "convc: error: input 'x' is declared [N, 3, H, W] (4 dimensions)" in capsys.readouterr().err


def test_the_compile_cache_keeps_input_shapes_apart(tmp_path, monkeypatch):
    """A cached entry compiled for one input shape must not come back for another."""
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    model = two_inputs()
    first = convc.compile(model, input_shapes={"a": (1, 2, 3, 4)})
    again = convc.compile(model, input_shapes={"a": (1, 2, 3, 4)})
    other = convc.compile(model, input_shapes={"a": (1, 2, 5, 4)})
    assert first.inputs[0].shape == again.inputs[0].shape == (1, 2, 3, 4)
    assert other.inputs[0].shape == (1, 2, 5, 4)
    x = np.ones((1, 2, 5, 4), np.float32)
    np.testing.assert_array_equal(other.run({"a": x, "b": x})["y"], 2 * x)


def test_info_with_input_shape(fcn_file, capsys):
    assert main(["info", str(fcn_file), "--input-shape", "x=1,3,16,16"]) == 0
    assert "%x: float32[1,3,16,16]" in capsys.readouterr().out
    assert main(["info", str(fcn_file)]) == 2
    assert "--input-shape x=1,3,224,224" in capsys.readouterr().err


def test_a_model_not_compiled_yet_shows_its_declared_outputs():
    compiled = convc.compile(fully_convolutional(), batch=2)
    assert [(s.name, s.shape) for s in compiled.outputs] == [("y", (2, 4, "Ho", "Wo"))]
    assert repr(compiled) == "<convc.CompiledModel (x: float32[2, 3, 'H', 'W']) -> (y: float32[2, 4, 'Ho', 'Wo'])>"


def test_profile_with_input_shape(fcn_file, capsys):
    assert main(["profile", str(fcn_file), "-q", "--input-shape", "x=2,3,32,32", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch"] == 2
    assert main(["profile", str(fcn_file), "-q", "--train", "--input-shape", "x=1,3,8,8"]) == 2
    assert "--input-shape is not available with --train" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"input_shapes= is not available with train=True"):
        convc.profile(fully_convolutional(), train=True, input_shapes={"x": (1, 3, 8, 8)})


def test_a_model_without_code_says_so_when_pickled():
    import pickle
    with pytest.raises(TypeError, match=r"it has no code yet .* compile it with input_shapes= to pickle it"):
        pickle.dumps(convc.compile(two_inputs()))


# --- sizes of symbols by name ({"H": 224}, --input-shape H=224) --------------------------------

def test_symbol_sizes_by_name_fix_every_input_declaring_them():
    compiled = convc.compile(two_inputs(), input_shapes={"N": 2, "H": 3, "W": 5}, threads=1)
    assert [i.shape for i in compiled.inputs] == [(2, 2, 3, 5), (2, 2, 3, 5)]
    a, b = feed((2, 2, 3, 5), 1), feed((2, 2, 3, 5), 2)
    np.testing.assert_array_equal(compiled.run({"a": a, "b": b})["y"], np.maximum(a + b, 0))


def test_symbol_sizes_with_a_free_batch_specialize_the_batch_only():
    """H and W fixed by name, N left free: each batch compiles on first use and matches onnxruntime, another
    height is refused, and get_inputs shows the free symbol by name with the sizes given."""
    model = fully_convolutional()
    compiled = convc.compile(model, input_shapes={"H": 20, "W": 23}, threads=2)
    for n in (2, 3):
        x = feed((n, 3, 20, 23), n)
        np.testing.assert_allclose(compiled.run({"x": x})["y"], oracle(model, {"x": x})[0], rtol=1e-4, atol=1e-4)
    # the declared dimensions, not the batch-2 variant compiled first
    with pytest.raises(InputError, match=r"input 'x' has shape \(2, 3, 21, 23\), expected \[N, 3, 20, 23\]$"):
        compiled.run({"x": feed((2, 3, 21, 23))})
    assert convc.InferenceSession(model, input_shapes={"H": 20, "W": 23}).get_inputs()[0].shape == ["N", 3, 20, 23]


@pytest.mark.parametrize("shapes,batch,message", [
    ({"Q": 3}, None, r"input_shapes: 'Q' is neither an input of the model \(\['x'\]\) nor a symbolic dimension of "
                     r"its inputs \(\['H', 'N', 'W'\]\)"),
    ({"x": 3}, None, r"input 'x': the shape given for it, 3, is one integer; give a sequence"),
    ({"H": 0}, None, r"the size given for dimension 'H', 0, must be a positive integer"),
    ({"H": 40, "x": (1, 3, 41, 37)}, None, r"dimension 'H' is 40 by name in input_shapes but 41 in the one given "
                                           r"for input 'x'"),
    ({"N": 3}, 2, r"dimension 'N' is the batch of input 'x' \(declared \[N, 3, H, W\]\); input_shapes gives it 3, "
                  r"but batch=2 was requested"),
])
def test_symbol_size_errors_name_the_symbol(shapes, batch, message):
    with pytest.raises(InputError, match=message):
        convc.compile(fully_convolutional(), input_shapes=shapes, batch=batch)


def test_run_with_symbol_sizes_on_the_command_line(fcn_file, capsys):
    assert main(["run", str(fcn_file), "-q", "-r", "1", "--input-shape", "H=20", "--input-shape", "W=24",
                 "--input-shape", "N=2", "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"][0]["shape"] == [2, 3, 20, 24]
    assert report["outputs"][0]["shape"] == [2, 4, 9, 11]


def test_check_with_symbol_sizes():
    from convc.check import check_model
    report = check_model(fully_convolutional(), input_shapes={"N": 2, "H": 20, "W": 21})
    assert report.outputs[0].shape == (2, 4, 9, 10) and report.first_bad is None
