"""``--no-winograd`` on ``convc run``, ``convc compile`` and ``convc profile``: documented in --help,
passed to the compile as ``winograd=False`` (default True), refused with --train (training never runs
Winograd convs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import convc
import convc.compiler
from convc.cli import main
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm as A
from convc.options import active_options


@pytest.fixture(scope="module")
def conv_file(tmp_path_factory) -> Path:
    """One 3x3 conv, 16 -> 16 channels at 24 px: a conv kernel selection runs as Winograd."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((16, 16, 3, 3)) * 0.1).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1] * 4)],
                              "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 24, 24])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("models") / "conv.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("command", ["run", "compile", "profile"])
def test_help_documents_the_flag(capsys, command):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--no-winograd" in capsys.readouterr().out


@pytest.mark.parametrize("flag, want", [([], True), (["--no-winograd"], False)])
def test_run_passes_the_option(conv_file, monkeypatch, capsys, flag, want):
    seen = {}
    real = convc.compile

    def spy(*args, **kwargs):
        seen.update(kwargs)
        model = real(*args, **{**kwargs, "cache": False})
        seen["algorithms"] = {op.attrs.algorithm for op in model.graph.ops() if op.kind is OpKind.CONV}
        return model
    monkeypatch.setattr(convc, "compile", spy)
    assert main(["run", str(conv_file), "--repeat", "1", "--quiet", *flag]) == 0
    assert seen["winograd"] is want
    assert seen["algorithms"] == {A.WINOGRAD_4X4 if want else A.IMPLICIT_GEMM_NHWC}


@pytest.mark.parametrize("flag, want", [([], True), (["--no-winograd"], False)])
@pytest.mark.slow
def test_compile_passes_the_option(conv_file, tmp_path, monkeypatch, flag, want):
    seen = {}
    real = convc.compiler.build

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(convc.compiler, "build", spy)
    assert main(["compile", str(conv_file), "-o", str(tmp_path / "conv.so"), "--quiet", *flag]) == 0
    assert seen["winograd"] is want
    lib = convc.load(str(tmp_path / "conv.so"))
    x = np.random.default_rng(1).standard_normal((1, 16, 24, 24)).astype(np.float32)
    direct = convc.compile(str(conv_file), winograd=False).run({"x": x})["y"]
    assert np.abs(lib.run({"x": x})["y"] - direct).max() / np.abs(direct).max() < 1e-4


@pytest.mark.parametrize("flag, want", [([], True), (["--no-winograd"], False)])
def test_profile_passes_the_option(conv_file, monkeypatch, capsys, flag, want):
    seen = {}
    real = convc.profile

    def spy(*args, **kwargs):
        seen["winograd"] = active_options().winograd  # what the pipeline inside sees
        return real(*args, **kwargs)
    monkeypatch.setattr(convc, "profile", spy)
    assert main(["profile", str(conv_file), "--quiet", *flag]) == 0
    assert seen["winograd"] is want


@pytest.mark.parametrize("command", [["compile", "-o", "x.so"], ["profile"]])
def test_refused_with_train(conv_file, tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    assert main([command[0], str(conv_file), *command[1:], "--train", "--no-winograd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convc: error: --no-winograd is not available with --train")
