"""Every ```python block of README.md runs as written.

The blocks run in order in one namespace, in a temporary directory holding ``lenet.onnx`` (what the
Quick start's ``convc example lenet -o lenet.onnx`` writes), as a reader pasting them into one session
would: the Training block uses the ``Net`` of the block before it. A block that imports torch is
skipped when torch is not installed."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import onnx
import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block."""
    text = README.read_text()
    return [(text[:m.start()].count("\n") + 2, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.DOTALL)]


BLOCKS = python_blocks()


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """The namespace the blocks share, and the directory they run in."""
    from convc.models import lenet5
    here = tmp_path_factory.mktemp("readme")
    onnx.save(lenet5(), str(here / "lenet.onnx"))
    return {"dir": here, "namespace": {"__name__": "__readme__"}, "failed": []}


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("line, code", BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(session, line, code, monkeypatch):
    if re.search(r"^\s*(import|from) torch\b", code, re.MULTILINE) and importlib.util.find_spec("torch") is None:
        pytest.skip("needs torch")
    if session["failed"]:
        pytest.skip(f"an earlier block failed (README.md:{session['failed'][0]})")
    monkeypatch.chdir(session["dir"])
    try:
        exec(compile(code, f"README.md:{line}", "exec"), session["namespace"])  # noqa: S102  (the point of the test)
    except BaseException:
        session["failed"].append(line)
        raise


def test_readme_exit_statuses_are_the_cli_s():
    """The command table's exit statuses are the ones convc returns (convc check once exited 1 for
    nodes it cannot compile while the table said errors exit 2)."""
    from convc.cli.check import EXIT_DIFFERS
    from convc.cli.common import EXIT_ERROR, EXIT_OK
    text = README.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `convc check"))
    assert f"cannot compile (exit {EXIT_ERROR}" in row and f"(exit {EXIT_DIFFERS}; {EXIT_OK} when all match)" in row
    assert f"exit with status {EXIT_ERROR}" in " ".join(text.split())
