"""The Python API as the README shows it: lazy submodules, printable profiles, onnxruntime's symbolic
shapes, writing a library from Python; ``convc info --optimized`` and its short attribute lines."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import convc
from convc.cli import main
from convc.models import lenet5


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "lenet.onnx"
    onnx.save(lenet5(), str(path))  # a symbolic batch 'N'
    return path


@pytest.mark.slow
def test_submodules_load_on_first_use():
    code = "import convc; m = convc.models.cifar_cnn(); print(type(m).__name__, 'models' in dir(convc))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ModelProto", "True"]
    with pytest.raises(AttributeError, match="no attribute 'modles'"):
        convc.modles  # noqa: B018


def test_print_profile_shows_the_table(lenet_file):
    text = str(convc.profile(lenet_file))
    assert "TOTAL" in text and "planned arena peak" in text and "Profile(" not in text


@pytest.mark.slow
def test_inference_session_keeps_symbolic_dimensions(lenet_file):
    sess = convc.InferenceSession(str(lenet_file))
    assert sess.get_inputs()[0].shape == ["N", 1, 28, 28] and sess.get_outputs()[0].shape == ["N", 10]
    assert sess.get_inputs()[0].name == "input" and sess.get_inputs()[0].type == "tensor(float)"
    assert convc.InferenceSession(str(lenet_file), batch=4).get_inputs()[0].shape == (4, 1, 28, 28)
    (y,) = sess.run(None, {"input": np.zeros((3, 1, 28, 28), np.float32)})
    assert y.shape == (3, 10)


@pytest.mark.slow
def test_compile_library_writes_what_convc_compile_writes(lenet_file, tmp_path):
    result = convc.compile_library(lenet_file, tmp_path / "lenet.so", batch=2, threads=1)
    assert Path(result.output) == tmp_path / "lenet.so" and (tmp_path / "lenet.h").exists()
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(convc.load(tmp_path / "lenet.so")(x), convc.compile(lenet_file, batch=2)(x),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="calling thread"):
        convc.compile_library(lenet_file, tmp_path / "t.so", train=True, threads=2)


def test_info_optimized_shows_the_compiled_graph_in_short_lines(lenet_file, capsys):
    assert main(["info", str(lenet_file), "-q"]) == 0
    imported = capsys.readouterr().out
    assert main(["info", str(lenet_file), "-q", "--optimized"]) == 0
    optimized = capsys.readouterr().out
    assert "optimized graph" in optimized and "Relu(" in imported and "Relu(" not in optimized  # fused
    assert "epilogue=Epilogue{activation=Relu" in optimized and "_nhwc" in optimized
    for line in (imported + optimized).splitlines():
        attrs = line.partition("{")[2].rpartition("}")[0]
        assert len(attrs) <= 121, line
    assert "<" not in optimized and "dilations=(1,1)" in optimized  # enums by value, compact tuples


@pytest.mark.slow
def test_training_profile_uses_the_units_of_the_inference_profile(lenet_file):
    text = str(convc.profile(lenet_file, train=True))
    assert " KiB" in text and " kB" not in text and " MB" not in text
    assert "forward 416.52 K," in text
