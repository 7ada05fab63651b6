"""Training artifacts (`convc compile --train`): the library's training step is convc.Trainer's,
driven through the C ABI from Python (convc.load) and from C (examples/c/train.c)."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from aot_helpers import EXAMPLE_C, python

import convc
from convc.compiler import build_training_library

BATCH = 8


@pytest.fixture(scope="module")
def train_lib(lenet_file, tmp_path_factory):
    from aot_helpers import write_model
    onnx_file = write_model(lenet_file.parent / "lenet_dyn.onnx", "lenet", batch=None)
    out = tmp_path_factory.mktemp("train") / "train.so"
    return onnx_file, build_training_library(str(onnx_file), out, batch=BATCH, optimizer="adam", lr=1e-3)


def batches(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((BATCH, 1, 28, 28)).astype(np.float32), rng.integers(0, 10, BATCH))
            for _ in range(n)]


@pytest.mark.slow
def test_library_steps_like_the_trainer(train_lib):
    onnx_file, res = train_lib
    lib = convc.load(res.output)
    from convc.load import LoadedTrainer
    assert isinstance(lib, LoadedTrainer)
    trainer = convc.Trainer(str(onnx_file), input_shape=(BATCH, 1, 28, 28), optimizer=convc.optim.Adam(1e-3), seed=0)
    for x, y in batches(4):
        np.testing.assert_allclose(lib.step(x, y), trainer.step(x, y), rtol=1e-5)
    assert lib.steps_done == trainer.steps_done == 4
    mine, theirs = lib.state_dict(), trainer.state_dict()
    assert set(mine) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-7, err_msg=name)
    x = np.random.default_rng(5).standard_normal((13, 1, 28, 28)).astype(np.float32)  # 2 chunks, padded
    np.testing.assert_allclose(lib.predict(x), trainer.predict(x), rtol=1e-5, atol=1e-7)
    lib.lr = 0.5
    assert lib.lr == 0.5
    with pytest.raises(convc.InputError, match=f"at most {BATCH} samples"):
        lib.step(np.zeros((BATCH + 1, 1, 28, 28), np.float32), np.zeros(BATCH + 1, np.int64))
    with pytest.raises(convc.InputError, match="out of range"):
        lib.step(np.zeros((BATCH, 1, 28, 28), np.float32), np.full(BATCH, 10))


def test_non_finite_step_changes_nothing(train_lib):
    lib = convc.load(train_lib[1].output)
    before = lib.state_dict()
    x = np.full((BATCH, 1, 28, 28), np.nan, np.float32)
    with pytest.raises(convc.TrainingError, match="not finite"):
        lib.step(x, np.zeros(BATCH, np.int64))
    assert lib.steps_done == 0
    for name, v in lib.state_dict().items():
        np.testing.assert_array_equal(v, before[name])


def test_state_round_trip_between_contexts(train_lib):
    a = convc.load(train_lib[1].output)
    b = convc.load(train_lib[1].output)  # its own context: fresh weights
    for x, y in batches(2, seed=1):
        a.step(x, y)
    b.load_state_dict(a.state_dict())
    x, y = batches(1, seed=2)[0]
    assert a.step(x, y) == b.step(x, y)


def test_training_library_without_llvmlite(train_lib):
    done = python(f"""
import sys
sys.modules["llvmlite"] = None
import numpy as np, convc
lib = convc.load({str(train_lib[1].output)!r})
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
y = rng.integers(0, 10, 8)
losses = [lib.step(x, y) for _ in range(5)]
assert losses[-1] < losses[0], losses
print("ok", losses)
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok")


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.slow
def test_c_training_example(train_lib, tmp_path):
    onnx_file, res = train_lib
    folder = res.output.parent
    exe = tmp_path / "train_demo"
    made = subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(exe),
                           str(EXAMPLE_C.with_name("train.c")), f"-I{folder}", str(res.output),
                           f"-Wl,-rpath,{folder}"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    ran = subprocess.run([str(exe), "6"], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    losses = [float(v) for v in ran.stdout.split()]
    # the same synthetic batch as train.c, through the Python Trainer
    k = np.arange(BATCH * 28 * 28)
    x = (((k * 7) % 13 - 6) / 6.0).astype(np.float32).reshape(BATCH, 1, 28, 28)
    y = np.arange(BATCH) % 10
    trainer = convc.Trainer(str(onnx_file), input_shape=(BATCH, 1, 28, 28), optimizer=convc.optim.Adam(1e-3), seed=0)
    np.testing.assert_allclose(losses, [trainer.step(x, y) for _ in range(6)], rtol=1e-5)
    assert "6 steps done" in ran.stderr


@pytest.mark.slow
def test_cli_train_flag(train_lib, tmp_path, capsys):
    from convc.cli import main
    out = tmp_path / "sgd.o"
    assert main(["compile", str(train_lib[0]), "-o", str(out), "--train", "--batch", "4", "--optimizer", "sgd",
                 "--lr", "0.1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "training: SGD (lr 0.1), cross_entropy loss, labels int64 [4]" in text
    assert "int convc_train_step(convc_ctx *ctx" in (tmp_path / "sgd.h").read_text()


def test_training_state_sizes_come_from_the_compiled_code(train_lib, tmp_path):
    """The numpy views of the training state were sized from the metadata JSON: a larger shape there
    read and wrote past the state the context allocated."""
    import json

    from aot_helpers import assert_refused, edit_library, load_in_child
    res = train_lib[1]
    spec = next(s for s in res.meta["training"]["state"] if len(s["shape"]) >= 2 and s["shape"][0] < 9)
    lying = dict(spec, shape=[9] + spec["shape"][1:])
    path = tmp_path / "train.so"
    shutil.copyfile(res.output, path)
    edit_library(path, json.dumps(spec, separators=(",", ":")).encode(),
                 json.dumps(lying, separators=(",", ":")).encode(), resign=True)
    assert_refused(load_in_child(path), "LoadError", f"the shape of training state {spec['name']!r} is "
                   f"{lying['shape']!r} but its compiled code says {spec['shape']!r}")
    done = load_in_child(res.output)
    assert done.returncode == 0 and done.stdout.startswith("RAN"), done.stderr


def test_training_library_exports_and_declares_the_training_abi(train_lib):
    import ctypes

    from test_aot_abi import declared

    from convc import abi
    _, res = train_lib
    lib = ctypes.CDLL(str(res.output))
    names = abi.LIBRARY_FUNCTIONS + abi.TRAINING_FUNCTIONS
    assert not [n for n in names if not hasattr(lib, n)]
    assert not sorted(set(names) - declared(res.header))


def test_library_without_a_targets_table_loads_as_one_output(train_lib):
    """A training library's metadata from before the per-output targets (only "labels" and "loss")
    loads through the one-output description and steps exactly as the current one; a library
    whose metadata JSON claims targets its compiled label table does not have is refused."""
    import dataclasses

    from convc.artifact import LoadError
    from convc.library import LoadedTrainer
    from convc.load import inspect_library
    lib, info = inspect_library(train_lib[1].output)
    training = {k: v for k, v in info.meta["training"].items() if k != "targets"}
    old = LoadedTrainer(lib, dataclasses.replace(info, meta={**info.meta, "training": training}))
    new = convc.load(train_lib[1].output)
    assert old.losses == new.losses == ["cross_entropy"] and old.labels == new.labels
    for x, y in batches(2, seed=3):
        assert old.step(x, y) == new.step(x, y)
    lying = dict(info.meta["training"], targets=info.meta["training"]["targets"] * 2)
    with pytest.raises(LoadError, match="the number of targets is 2 but its compiled code says 1"):
        LoadedTrainer(lib, dataclasses.replace(info, meta={**info.meta, "training": lying}))
