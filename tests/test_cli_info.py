"""``convc info``: the graph fits a terminal; a long op line keeps its attributes whole on the lines
below it instead of running to 200+ columns or cutting them off."""
from __future__ import annotations

import onnx
import pytest

from convc.cli import main
from convc.models import cifar_cnn


@pytest.fixture(scope="module")
def cifar_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "cifar.onnx"
    onnx.save(cifar_cnn(), str(path))
    return path


@pytest.mark.parametrize("optimized", [False, True])
def test_graph_lines_fit_100_columns(cifar_file, capsys, monkeypatch, optimized):
    monkeypatch.chdir(cifar_file.parent)
    assert main(["info", cifar_file.name, "-q"] + (["--optimized"] if optimized else [])) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(line) <= 100 for line in lines), max(lines, key=len)
    if optimized:
        conv = next(i for i, line in enumerate(lines) if line.endswith("# conv2"))
        assert "= Conv(%" in lines[conv]  # the op line keeps its inputs and name
        attrs = " ".join(line.strip() for line in lines[conv + 1:conv + 4] if line.startswith("      "))
        assert attrs.startswith("{kernel_shape=(3,3)") and "epilogue=Epilogue{activation=Relu}" in attrs
        assert "algorithm=" in attrs and "…" not in attrs, "every attribute, none cut off"
        assert "NoAttrs" not in out  # a record without fields says nothing
