"""``convc profile``: every combination of its flags either does what each flag says or is refused
with one ``convc: error:`` line (exit 2) before any work; no flag is silently ignored."""
from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import onnx
import pytest

import convc
from convc.cli import main
from convc.models import lenet5

LENET_LAYERS = 9      # the inference profile's layers (convs and gemms with their fused Relus, pools, ...)
LENET_OPS = 5         # Conv, Gemm, MaxPool, Softmax, Flatten
LENET_TRAIN_LAYERS = 12
LENET_TRAIN_OPS = 5   # Conv, Relu, MaxPool, Flatten, Gemm: training does not fuse

FORMATS = ("table", "json", "csv")
_PROFILES: dict = {}  # (train, measure, loss, optimizer) -> the profile, shared by the tests of this module


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "lenet.onnx"
    onnx.save(lenet5(batch=1), str(path))
    return path


@pytest.fixture
def cli(monkeypatch, tmp_path, lenet_file, capsys):
    """Runs ``convc profile lenet.onnx ARGS``: one real profile per (train, measure), reused (this test
    is about the flags, not the numbers); the plot is recorded, not drawn (test_profile.py draws it)."""
    import convc.cli.profile as cli_profile
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    real = convc.profile

    def profile(model, batch=None, *, measure=False, train=False, **kw):
        key = (train, measure, kw.get("loss"), repr(kw.get("optimizer")))
        if key not in _PROFILES:
            _PROFILES[key] = real(model, batch, measure=measure, train=train, **{**kw, "repeats": 2})
        return _PROFILES[key]

    plots: list[str] = []

    def fake_plot(result, path):
        plots.append(str(path))
        Path(path).write_bytes(b"plot")

    monkeypatch.setattr(convc, "profile", profile)
    monkeypatch.setattr(cli_profile, "plot", fake_plot)
    monkeypatch.setattr(cli_profile, "plot_train", fake_plot)
    monkeypatch.setattr(cli_profile, "check_plot_path", lambda path: Path(path))

    def run(*args: str) -> tuple[int, str, str, list[str]]:
        plots.clear()
        code = main(["profile", str(lenet_file), "-q", *args])
        out, err = capsys.readouterr()
        return code, out, err, list(plots)
    return run


def table_rows(out: str) -> list[str]:
    """The data rows of the plain layer / op table: lines between the header's rule and the next rule or blank."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("-") and "  " in line) + 1
    rows = []
    for line in lines[start:]:
        if not line.strip() or line.startswith(("-", "(")):
            break
        rows.append(line)
    return rows


COMBOS = list(itertools.product(FORMATS, (None, 2), (False, True), (False, True), (False, True), (False, True)))


@pytest.mark.parametrize("fmt, top, by_op, train, plot, measure", COMBOS,
                         ids=["-".join(str(v) for v in c) for c in COMBOS])
def test_every_combination_works_or_is_refused(cli, tmp_path, fmt, top, by_op, train, plot, measure):
    args = ["--format", fmt]
    args += ["--top", str(top)] if top else []
    args += ["--by-op"] if by_op else []
    args += ["--train"] if train else []
    args += ["--plot", str(tmp_path / "p.png")] if plot else []
    args += ["--measure"] if measure else []
    code, out, err, plots = cli(*args)
    assert code == 0, err
    assert plots == ([str(tmp_path / "p.png")] if plot else [])
    if train:
        n_all = LENET_TRAIN_OPS if by_op else LENET_TRAIN_LAYERS
    else:
        n_all = LENET_OPS if by_op else LENET_LAYERS
    expected = min(top, n_all) if top else n_all
    if fmt == "json":
        d = json.loads(out)
        rows = d["by_op"] if by_op else d["layers"]
        assert ("layers" in d) == (not by_op)
        if by_op:
            assert {r["op"] for r in rows} <= {"Conv", "Gemm", "MaxPool", "Softmax", "Flatten", "Relu"}
            assert all("+" not in r["op"] and (train or r["fused"]) for r in rows)
            if train:
                assert all("forward_macs" in r and "backward_macs" in r for r in rows)
                assert d["totals"]["total_macs"] == 1131960, "totals stay whole-step"
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        total = rows.pop() if not train else None
        if total is not None:
            assert "TOTAL" in (total.get("name"), total.get("op"))
        if by_op:
            assert "op" in rows[0] and "name" not in rows[0]
    else:
        rows = table_rows(out)
        if by_op:
            assert "By op type" in out
    assert len(rows) == expected, out
    if measure and not by_op and fmt == "json":
        assert all("seconds" in r for r in rows)


@pytest.mark.parametrize("args, needle", [
    (["--repeat", "3"], "--repeat only applies when timing: add --measure"),
    (["--threads", "2"], "--threads only applies when timing: add --measure"),
    (["--loss", "mse"], "--loss applies to the training step: add --train"),
    (["--optimizer", "adam"], "--optimizer applies to the training step: add --train"),
    (["--train", "--measure", "--threads", "2"], "--threads is not available with --train"),
])
def test_flags_out_of_their_mode_are_refused(cli, args, needle):
    code, out, err, _ = cli(*args)
    assert code == 2 and err == f"convc: error: {needle}" + err[len("convc: error: ") + len(needle):]
    assert needle in err and out == ""


@pytest.mark.slow
def test_training_flags_apply(cli):
    code, out, err, _ = cli("--train", "--loss", "mse", "--optimizer", "adam", "--format", "json")
    assert code == 0, err
    d = json.loads(out)
    assert d["loss"] == "mse" and d["optimizer"].startswith("Adam")
