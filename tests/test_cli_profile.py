"""``convc profile`` on a terminal of 80 and 100 columns, run as a command: the rich tables (the
inference one and the training one) fit without a word broken; piped, the plain table is unchanged."""
from __future__ import annotations

import re
import sys

import onnx
import pytest

from convc.cli import main
from convc.models import lenet5

pytest.importorskip("rich")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "lenet.onnx"
    onnx.save(lenet5(batch=1), str(path))
    return path


def on_terminal(monkeypatch, capsys, columns: int, *args: str) -> str:
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    assert main(["profile", *args, "-q"]) == 0
    return ANSI.sub("", capsys.readouterr().out)


@pytest.mark.parametrize("train", [False, True])
def test_profile_fits_the_terminal(lenet_file, monkeypatch, capsys, train):
    for columns in (80, 100):  # both in the quick run too
        out = on_terminal(monkeypatch, capsys, columns, str(lenet_file), *(["--train"] if train else []))
        lines = out.splitlines()
        assert all(len(line) <= columns for line in lines), max(lines, key=len)
        table = [line for line in lines if line.startswith(("┃", "│"))]
        assert table, "the rich table"
        cells = {c.strip() for line in table for c in re.split(r"[┃│]", line)}
        for word in ("conv1", "conv2", "fc1", "softmax" if not train else "relu1"):
            assert word in cells  # whole names, not "con" / "v1"
        assert ("240.00 K" in cells) and ("Conv+Relu" in cells if not train else "Conv" in cells)
        assert ("Memory of the training step" if train else "planned arena peak") in out


@pytest.mark.slow
def test_piped_training_profile_is_the_plain_table(lenet_file, capsys):
    assert main(["profile", str(lenet_file), "--train", "-q"]) == 0
    out = capsys.readouterr().out
    assert "┃" not in out and "fwd MACs  bwd MACs" in out


@pytest.mark.parametrize("train", [False, True])
def test_profile_by_op_fits_the_terminal(lenet_file, monkeypatch, capsys, train):
    for columns in (80, 100):
        out = on_terminal(monkeypatch, capsys, columns, str(lenet_file), "--by-op", *(["--train"] if train else []))
        lines = out.splitlines()
        assert all(len(line) <= columns for line in lines), max(lines, key=len)
        cells = {c.strip() for line in lines if line.startswith(("┃", "│")) for c in re.split(r"[┃│]", line)}
        assert {"Conv", "Gemm", "MaxPool"} <= cells and "By op type" in out
        assert ("Relu" in cells) == train, "training does not fuse: its Relus are rows of their own"


def test_training_measure_reports_its_phases(lenet_file, capsys):
    """convc profile --train --measure said nothing while it built, compiled and timed the step."""
    assert main(["profile", str(lenet_file), "--train", "--measure", "--repeat", "2", "--format", "json"]) == 0
    err = capsys.readouterr().err
    for phase in ("building the training step", "compiling the training step", "timing 2 steps"):
        assert phase in err, err
