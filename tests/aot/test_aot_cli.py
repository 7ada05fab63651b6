"""`convc compile` (library + header), `convc cache`, and compile progress on stderr."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

import convc
from convc.cli import main


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_compile_writes_library_and_header(lenet_file, tmp_path, capsys, lenet_jit):
    out = tmp_path / "build" / "lenet.so"
    out.parent.mkdir()  # the output's directory must exist: convc does not create it
    assert main(["compile", str(lenet_file), "-o", str(out), "--threads", "2"]) == 0
    captured = capsys.readouterr()
    assert out.exists() and (tmp_path / "build" / "lenet.h").exists()
    assert f"wrote {out}" in captured.out and "'input': float32 [2, 1, 28, 28]" in captured.out
    assert "requires CPU features" in captured.out and "convc.load(" in captured.out
    # progress: passes, per-layer code generation, LLVM, linking
    for stage in ("constant folding", "codegen [", "LLVM optimization", "LLVM machine code", "linking lenet.so"):
        assert stage in captured.err, stage
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(convc.load(out)(x), lenet_jit(x), rtol=1e-5, atol=1e-7)


def test_compile_object_only_and_default_name(lenet_file, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", str(lenet_file), "-o", "m.o", "-q", "--target", "x86-64-v3"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "m.o").exists() and (tmp_path / "m.h").exists()
    assert "object file" in out and "cc -shared -o m.so m.o -lm -lpthread" in out
    assert "x86-64-v3" in (tmp_path / "m.h").read_text()


def test_compile_errors_are_clean(lenet_file, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["compile", str(lenet_file), "--target", "pentium2"])
    assert e.value.code == 2 and "unknown target 'pentium2'" in capsys.readouterr().err
    assert main(["compile", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "x.so")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_run_uses_the_cache_and_cache_command(cache, lenet_file, capsys):
    assert main(["run", str(lenet_file), "--repeat", "1"]) == 0
    first = capsys.readouterr()
    assert "compile cache miss" in first.err and "LLVM: " in first.err
    assert main(["run", str(lenet_file), "--repeat", "1"]) == 0
    second = capsys.readouterr()
    assert "compile cache hit" in second.err and "LLVM" not in second.err
    assert first.out.split("latency")[0] == second.out.split("latency")[0]  # same outputs printed
    assert main(["cache"]) == 0
    assert "1 compiled model(s)" in capsys.readouterr().out
    assert main(["cache", "--clear"]) == 0
    assert "removed" in capsys.readouterr().out
    assert main(["cache"]) == 0
    assert "0 compiled model(s)" in capsys.readouterr().out
