"""The ``convc`` command line, in-process (``convc.cli.main``) and as ``python -m convc``."""
from __future__ import annotations

import os
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
    path.parent.mkdir()  # an output's directory must exist: convc does not create it
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


@pytest.mark.slow
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


@pytest.mark.slow
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
    graph = onnx.helper.make_graph([onnx.helper.make_node("Hardmax", ["x"], ["y"], name="my_hardmax")], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(unsupported))
    dangling = tmp_path / "dangling.onnx"
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["nowhere"], ["y"], name="my_relu")], "g", [x], [y])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)]), str(dangling))
    return {"garbage": garbage, "empty": empty, "unsupported": unsupported, "dangling": dangling}


@pytest.mark.parametrize("command", ["run", "info"])
def test_missing_file_is_a_clean_error(tmp_path, capsys, command):
    assert main([command, str(tmp_path / "nope.onnx")]) == 2
    assert_clean_error(2, capsys.readouterr().err, "nope.onnx", "no such file")


@pytest.mark.parametrize("kind, needle", [("garbage", "is not an ONNX model (not a readable protobuf"),
                                          ("empty", "not an ONNX model"),
                                          ("unsupported", "my_hardmax"), ("dangling", "my_relu")])
@pytest.mark.parametrize("command", ["run", "info"])
def test_malformed_model_is_a_clean_error(tmp_path, capsys, command, kind, needle):
    path = _bad_models(tmp_path)[kind]
    code = main([command, str(path), "-q"])
    assert_clean_error(code, capsys.readouterr().err, needle)


@pytest.mark.parametrize("kind", ["garbage", "empty", "missing"])
@pytest.mark.parametrize("command", ["run", "info", "profile", "check", "compile"])
def test_every_command_reports_an_unreadable_model_cleanly(tmp_path, capsys, command, kind):
    """protobuf's DecodeError and FileNotFoundError escaped from convc.compile for such files."""
    path = _bad_models(tmp_path)[kind] if kind != "missing" else tmp_path / "missing.onnx"
    extra = ["-o", str(tmp_path / "m.so")] if command == "compile" else []
    code = main([command, str(path), "-q", *extra])
    err = capsys.readouterr().err
    assert_clean_error(code, err, path.name, "no such file" if kind == "missing" else "not an ONNX model")
    assert err.count("\n") == 1  # one line


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


@pytest.mark.slow
def test_errors_as_a_process(tmp_path):
    bad = _bad_models(tmp_path)
    for args, needle in [(["run", "nope.onnx"], "nope.onnx: no such file"),
                         (["run", str(bad["garbage"])], "is not an ONNX model (not a readable protobuf"),
                         (["info", str(bad["unsupported"])], "Hardmax")]:
        result = convc_process(*args, cwd=tmp_path)
        assert_clean_error(result.returncode, result.stderr, needle)
        if args[0] == "run":
            assert result.stdout == ""


# --- output paths ------------------------------------------------------------------------------

def _outputs_model(path: Path, names: list[str]) -> None:
    """One input x (1, 4); output i is Relu(x * (i + 1)), named names[i]."""
    h = onnx.helper
    nodes, inits = [], []
    for i, name in enumerate(names):
        inits.append(onnx.numpy_helper.from_array(np.full((1, 4), i + 1, np.float32), f"scale{i}"))
        nodes += [h.make_node("Mul", ["x", f"scale{i}"], [f"m{i}"]), h.make_node("Relu", [f"m{i}"], [name])]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
                         [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 4]) for n in names], inits)
    onnx.save(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]), str(path))


def test_output_dir_gives_every_output_its_own_file(tmp_path, capsys):
    """'p/q' and 'p_q' both became p_q.npy, the second overwriting the first."""
    names = ["p/q", "p_q", "P_Q", "../up", "p_q_2", "a b", ""]
    model = tmp_path / "m.onnx"
    _outputs_model(model, names[:-1])
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out"
    assert main(["run", str(model), "-q", "-r", "1", "-i", str(tmp_path / "x.npy"), "--output-dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["p_q_3.npy", "p_q.npy", "P_Q_4.npy", ".._up.npy", "p_q_2.npy", "a_b.npy"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out", "x.npy"]  # nothing escaped out/
    expected = {"p_q.npy": 2, "p_q_2.npy": 5, "p_q_3.npy": 1, "P_Q_4.npy": 3, ".._up.npy": 4, "a_b.npy": 6}
    for file, scale in expected.items():
        np.testing.assert_array_equal(np.load(out / file), x * scale, err_msg=file)
    assert f"saved output 'p/q' as {out / 'p_q_3.npy'}" in stdout and f"saved {out / 'p_q.npy'}" in stdout


def test_output_filenames_are_deterministic_and_distinct():
    from convc.cli.run import output_filenames
    names = ["y", "Y", "y/1", "y_1", "y?1", "", "x" * 300]
    files = output_filenames(names)
    assert files == output_filenames(list(names))
    assert len({f.casefold() for f in files.values()}) == len(names)
    assert files["y"] == "y.npy" and files["y_1"] == "y_1.npy"  # safe names keep theirs
    assert all("/" not in f and len(f) < 200 for f in files.values())


def _path_cases(tmp_path: Path, model: Path) -> dict[str, tuple[list[str], str]]:
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "a_dir").mkdir()
    missing = tmp_path / "missing" / "dir"
    return {
        "compile -o under a file": (["compile", str(model), "-o", str(a_file / "m.so")], "a_file is not a directory"),
        "compile -o in a missing dir": (["compile", str(model), "-o", str(missing / "m.so")],
                                        f"directory {missing} does not exist"),
        "compile -o a directory": (["compile", str(model), "-o", str(tmp_path / "a_dir")], "a_dir: is a directory"),
        "compile --header in a missing dir": (["compile", str(model), "-o", str(tmp_path / "m.so"), "--header",
                                               str(missing / "m.h")], f"--header {missing / 'm.h'}: directory"),
        "run --output-dir under a file": (["run", str(model), "--output-dir", str(a_file / "out")],
                                          "a_file is not a directory"),
        "run --output-dir is a file": (["run", str(model), "--output-dir", str(a_file)], "a_file is not a directory"),
        "run --output-dir in a missing dir": (["run", str(model), "--output-dir", str(missing / "out")],
                                              f"directory {missing} does not exist"),
        "info --dot": (["info", str(model), "--dot", str(missing / "g.dot")], f"--dot {missing / 'g.dot'}: directory"),
        "profile --plot": (["profile", str(model), "--plot", str(missing / "p.png")], "--plot"),
        "example -o": (["example", "lenet", "-o", str(a_file / "l.onnx")], "a_file is not a directory"),
    }


CASES = ["compile -o under a file", "compile -o in a missing dir", "compile -o a directory",
         "compile --header in a missing dir", "run --output-dir under a file", "run --output-dir is a file",
         "run --output-dir in a missing dir", "info --dot", "profile --plot", "example -o"]


@pytest.mark.parametrize("case", CASES)
def test_output_paths_are_checked_before_any_work(lenet_file, tmp_path, capsys, case):
    """`-o ro_file/m.so` compiled everything, then failed with 'File exists'; `-o /nonexistent/dir/m.so`
    silently created the directories."""
    args, needle = _path_cases(tmp_path, lenet_file)[case]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert_clean_error(2, err, needle)
    assert err.count("convc: error:") == 1 and "import" not in err and "LLVM" not in err  # nothing compiled
    assert not (tmp_path / "missing").exists()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_output_directory_is_refused(lenet_file, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main(["compile", str(lenet_file), "-o", str(ro / "m.so")]) == 2
        assert_clean_error(2, capsys.readouterr().err, f"directory {ro} is not writable")
    finally:
        ro.chmod(0o700)


def test_output_dir_is_created_when_its_parent_exists(lenet_file, tmp_path):
    assert main(["run", str(lenet_file), "-q", "-r", "1", "--output-dir", str(tmp_path / "new")]) == 0
    assert (tmp_path / "new" / "output.npy").exists()
