"""Flags of ``convc compile`` that only apply in one mode are refused outside it (one ``convc: error:``
line, exit 2, before any work) instead of being silently ignored. ``convc profile``'s combinations
are in tests/test_profile_flags.py."""
from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from convc.cli import main
from convc.models import lenet5


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "lenet.onnx"
    onnx.save(lenet5(batch=1), str(path))
    return path


@pytest.mark.parametrize("args, needle", [
    (["--optimizer", "sgd"], "--optimizer applies to a training library: add --train"),
    (["--lr", "0.1"], "--lr applies to a training library: add --train"),
    (["--loss", "mse"], "--loss applies to a training library: add --train"),
    (["--seed", "3"], "--seed applies to a training library: add --train"),
    (["--train", "--threads", "2"], "--threads is not available with --train"),
])
def test_compile_refuses_flags_out_of_their_mode(lenet_file, tmp_path, capsys, args, needle):
    out = tmp_path / "m.so"
    assert main(["compile", str(lenet_file), "-o", str(out), *args]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"convc: error: {needle}") and len(captured.err.splitlines()) == 1
    assert not out.exists() and captured.out == ""
