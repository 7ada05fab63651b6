"""The ``convc`` command line, in-process (``convc.cli.main``) and as ``python -m convc``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import convc
from convc.cli import COMMANDS, main
from convc.models import EXAMPLES, lenet5


def convc_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "convc", *args], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=300, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "lenet.onnx"
    onnx.save(lenet5(), str(path))
    return path


def assert_clean_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2
    assert stderr.startswith("convc: error: ") or "\nconvc: error: " in stderr, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in stderr


# --- help ------------------------------------------------------------------------------------

def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for cmd in COMMANDS:
        assert cmd.name in out and " ".join(cmd.help.split()) in out


@pytest.mark.parametrize("name, words", [
    ("run", ["compile", "native code", "--input", "--batch", "--repeat", "--threads", "--output-dir", "latency"]),
    ("info", ["inputs and outputs", "graph", "--dot"]),
    ("example", ["lenet", "cifar", "--output", "seeded random weights"]),
])
def test_subcommand_help_says_what_it_does(capsys, name, words):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for word in words:
        assert word in out, f"'convc {name} --help' does not mention {word!r}"


def test_command_names_are_unique():
    names = [c.name for c in COMMANDS]
    assert len(names) == len(set(names))


def test_no_command_prints_usage_and_fails(capsys):
    assert main([]) == 2
    assert "usage: convc" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"convc {convc.__version__}"


# --- example -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_writes_a_valid_model(tmp_path, capsys, name):
    path = tmp_path / "sub" / f"{name}-model.onnx"
    assert main(["example", name, "-o", str(path)]) == 0
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    out = capsys.readouterr().out
    assert f"wrote {path}" in out and f"convc run {path}" in out


def test_example_default_name_and_fixed_batch(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["example", "lenet", "--batch", "4", "-q"]) == 0
    model = onnx.load("lenet.onnx")
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4


# --- run ---------------------------------------------------------------------------------------

def test_run_on_random_inputs(lenet_file, capsys):
    assert main(["run", str(lenet_file), "--repeat", "3"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "input  'input': float32 (1, 1, 28, 28) random normal values (seed 0" in out
    assert "output 'output': float32 (1, 10)" in out
    assert "first values: [" in out and "argmax per row: [" in out
    assert "latency: median" in out and "over 3 run(s)" in out
    assert "convc: [" in captured.err  # progress lines go to stderr
    assert "LLVM" in captured.err


def test_run_quiet_has_no_progress(lenet_file, capsys):
    assert main(["run", str(lenet_file), "-q", "-r", "1"]) == 0
    assert capsys.readouterr().err == ""


def test_run_with_input_file_and_output_dir(lenet_file, tmp_path, capsys):
    x = np.random.default_rng(7).standard_normal((3, 1, 28, 28)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out_dir = tmp_path / "out"
    code = main(["run", str(lenet_file), "-q", "-r", "2", "--input", f"input={tmp_path / 'x.npy'}",
                 "--output-dir", str(out_dir)])
    assert code == 0
    out = capsys.readouterr().out
    assert "(3, 1, 28, 28) from file" in out and "output 'output': float32 (3, 10)" in out
    saved = np.load(out_dir / "output.npy")
    expected = convc.compile(str(lenet_file), batch=3)(x)
    np.testing.assert_allclose(saved, expected, rtol=1e-5, atol=1e-7)
    argmax = out.split("argmax per row: ")[1].splitlines()[0]
    assert argmax == str(expected.argmax(axis=1).tolist())


def test_run_plain_npy_for_single_input_and_batch(lenet_file, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 28, 28), np.float32))
    assert main(["run", str(lenet_file), "-q", "-r", "1", "-i", str(tmp_path / "x.npy")]) == 0
    assert "output 'output': float32 (2, 10)" in capsys.readouterr().out
    assert main(["run", str(lenet_file), "-q", "-r", "1", "--batch", "5"]) == 0
    assert "output 'output': float32 (5, 10)" in capsys.readouterr().out


def test_run_as_a_process(tmp_path):
    made = convc_process("example", "lenet", "-o", "lenet.onnx", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    ran = convc_process("run", "lenet.onnx", "--repeat", "2", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "output 'output': float32 (1, 10)" in ran.stdout
    assert "latency: median" in ran.stdout


# --- info --------------------------------------------------------------------------------------

def test_info_prints_signature_and_graph(lenet_file, tmp_path, capsys):
    dot = tmp_path / "lenet.dot"
    assert main(["info", str(lenet_file), "--dot", str(dot)]) == 0
    out = capsys.readouterr().out
    assert "input: float32 [N, 1, 28, 28]" in out and "output: float32 [N, 10]" in out
    assert "graph lenet5 (" in out and "Conv" in out and "Softmax" in out
    assert dot.read_text().startswith("digraph")


# --- errors ------------------------------------------------------------------------------------

def _bad_models(tmp_path: Path) -> dict[str, Path]:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \xff\xfe\x00\x01" * 10)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])
    unsupported = tmp_path / "unsupported.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Erf", ["x"], ["y"], name="my_erf")], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(unsupported))
    dangling = tmp_path / "dangling.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["nowhere"], ["y"], name="my_relu")], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(dangling))
    return {"garbage": garbage, "empty": empty, "unsupported": unsupported, "dangling": dangling}


@pytest.mark.parametrize("command", ["run", "info"])
def test_missing_file_is_a_clean_error(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope.onnx")]) == 2
    assert_clean_error(2, capsys.readouterr().err, "nope.onnx", "no such file")


@pytest.mark.parametrize("kind, needle", [("garbage", "not a readable ONNX model"), ("empty", "not an ONNX model"),
                                          ("unsupported", "my_erf"), ("dangling", "my_relu")])
@pytest.mark.parametrize("command", ["run", "info"])
def test_malformed_model_is_a_clean_error(tmp_path, capsys, command, kind, needle):
    path = _bad_models(tmp_path)[kind]
    code = main([command, str(path), "-q"])
    assert_clean_error(code, capsys.readouterr().err, needle)


@pytest.mark.parametrize("args, needle", [
    (["-i", "input=missing.npy"], "missing.npy: no such file"),
    (["-i", "other=x.npy"], "no input 'other'"),
    (["-i", "input=x64.npy"], "dtype float64, expected float32"),
    (["-i", "input=x.npy", "--batch", "2"], "shape (3, 1, 28, 28), expected (2, 1, 28, 28)"),
])
def test_bad_input_files_are_clean_errors(lenet_file, tmp_path, monkeypatch, capsys, args, needle):
    monkeypatch.chdir(tmp_path)
    np.save("x.npy", np.zeros((3, 1, 28, 28), np.float32))
    np.save("x64.npy", np.zeros((3, 1, 28, 28), np.float64))
    code = main(["run", str(lenet_file), "-q", "-r", "1", *args])
    assert_clean_error(code, capsys.readouterr().err, needle)


def test_errors_as_a_process(tmp_path):
    bad = _bad_models(tmp_path)
    for args, needle in [(["run", "nope.onnx"], "nope.onnx: no such file"),
                         (["run", str(bad["garbage"])], "not a readable ONNX model"),
                         (["info", str(bad["unsupported"])], "Erf")]:
        result = convc_process(*args, cwd=tmp_path)
        assert_clean_error(result.returncode, result.stderr, needle)
        if args[0] == "run":
            assert result.stdout == ""
