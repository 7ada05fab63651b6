"""``convc check``: a flag that cannot apply is refused, not ignored (--seed when --input gives every input)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from convc.cli import main
from convc.models import lenet5


@pytest.fixture(scope="module")
def lenet_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "lenet.onnx"
    onnx.save(lenet5(batch=1), str(path))
    np.save(path.parent / "x.npy", np.zeros((1, 1, 28, 28), np.float32))
    return path


def test_seed_with_every_input_given_is_refused(lenet_file, capsys):
    x = str(lenet_file.parent / "x.npy")
    assert main(["check", str(lenet_file), "-q", "--input", x, "--seed", "3"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("convc: error: --seed") and "--input" in err and len(err.splitlines()) == 1
    assert main(["check", str(lenet_file), "-q", "--input", x]) == 0  # either alone works
