"""Libraries built from split modules (codegen/aot.py over codegen/split.py and llvm_pool.py): the
JIT's results, the kernel objects shared with libraries built before, and training bit for bit."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import convc
from convc.compiler import build_training_library

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "train"))
from test_gradient_api import batch, small_cnn  # noqa: E402

from tests.codegen.test_split import residual_net  # noqa: E402

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

BATCH = 16
LLVM_LINE = re.compile(r"LLVM: (\d+) modules? to compile(?: \((\d+) from the kernel cache\))?")


def llvm_counts(lines: list[str]) -> tuple[int, int]:
    """(modules compiled, modules from the kernel cache) of a build's progress lines."""
    for line in lines:
        if m := LLVM_LINE.match(line):
            return int(m.group(1)), int(m.group(2) or 0)
    raise AssertionError(f"no LLVM line in {lines}")


@pytest.fixture(scope="module")
def residual_libs(tmp_path_factory):
    """Two residual nets (2 and 3 identical blocks) built one after the other into one fresh cache
    (``built["cache"]``)."""
    d = tmp_path_factory.mktemp("split")
    mp = pytest.MonkeyPatch()
    mp.setenv("CONVC_CACHE_DIR", str(d / "cache"))
    mp.setenv("CONVC_NO_CACHE", "")
    built = {"cache": d / "cache"}
    try:
        for blocks in (2, 3):
            onnx.save(residual_net(blocks, batch=BATCH), d / f"res{blocks}.onnx")
            lines: list[str] = []
            res = convc.compile_library(str(d / f"res{blocks}.onnx"), d / f"res{blocks}.so", threads=2,
                                        progress=lines.append)
            built[blocks] = (d / f"res{blocks}.onnx", res, lines)
    finally:
        mp.undo()
    return built


@pytest.fixture(scope="module")
def residual_jit(residual_libs):
    return convc.compile(str(residual_libs[2][0]), threads=2, cache=False)


@pytest.mark.parametrize("threads", [1, 2])
def test_split_library_computes_what_the_jit_does(residual_libs, residual_jit, threads):
    _, res, lines = residual_libs[2]
    compiled, _ = llvm_counts(lines)
    assert compiled > 2  # the kernel groups, the entry module and the C ABI's wrapper
    x = np.random.default_rng(threads).standard_normal((BATCH, 3, 29, 23)).astype(np.float32)
    np.testing.assert_allclose(convc.load(res.output, threads=threads)(x), residual_jit(x), rtol=1e-5, atol=1e-6)


def test_second_library_reuses_the_kernel_objects(residual_libs):
    """res3's kernels are res2's (identical blocks): only its entry module and wrapper compile."""
    _, _, first = residual_libs[2]
    _, _, second = residual_libs[3]
    compiled, reused = llvm_counts(second)
    assert llvm_counts(first)[1] == 0
    assert (compiled, reused) == (2, llvm_counts(first)[0] - 2), second


@pytest.mark.skipif(shutil.which("nm") is None, reason="needs nm")
def test_split_kernels_stay_inside_the_library(residual_libs):
    """The kernels' content names link the objects together but are not exported (as the one
    module's internal kernels were not); the C ABI is."""
    out = residual_libs[2][1].output
    local = subprocess.run(["nm", str(out)], capture_output=True, text=True, check=True).stdout
    exported = subprocess.run(["nm", "-D", "--defined-only", str(out)], capture_output=True, text=True,
                              check=True).stdout
    assert re.search(r" t convc_k[0-9a-f]{24}\b", local)
    assert "convc_run_model" in exported and not re.search(r"convc_[kh][0-9a-f]{24}", exported)


@pytest.mark.skipif(shutil.which("objcopy") is None, reason="needs objcopy")
def test_object_output_is_one_relinked_object(residual_libs, tmp_path, monkeypatch):
    """``-o model.o``: the split objects (the .so's, from the kernel cache) as one relocatable
    object, kernels local; it links into a shared library with the same C ABI."""
    onnx_file, res, first = residual_libs[2]
    monkeypatch.setenv("CONVC_CACHE_DIR", str(residual_libs["cache"]))
    monkeypatch.setenv("CONVC_NO_CACHE", "")
    lines: list[str] = []
    obj = convc.compile_library(str(onnx_file), tmp_path / "res2.o", threads=2, progress=lines.append).output
    assert llvm_counts(lines) == (2, llvm_counts(first)[0] - 2)
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert not re.search(r" [TD] convc_[kh][0-9a-f]{24}\b", symbols) and " T convc_run_model" in symbols
    lib = tmp_path / "relinked.so"
    subprocess.run(["cc", "-shared", "-o", str(lib), str(obj), "-lm", "-lpthread"], check=True)
    x = np.random.default_rng(3).standard_normal((BATCH, 3, 29, 23)).astype(np.float32)
    signed = tmp_path / "signed.so"  # convc.load wants a library convc signed: link it the way convc does
    from convc.codegen.link import write_library
    from convc.codegen.target import resolve_target
    write_library(obj.read_bytes(), signed, resolve_target("native"), tmp_path)
    np.testing.assert_array_equal(convc.load(signed)(x), convc.load(res.output)(x))


@pytest.mark.slow
def test_split_training_library_trains_like_the_trainer(tmp_path):
    """Two steps of the library (split, linked) and of the JIT Trainer: the same losses and state, bit for bit."""
    onnx.save(small_cnn(True), tmp_path / "net.onnx")
    lines: list[str] = []
    res = build_training_library(str(tmp_path / "net.onnx"), tmp_path / "train.so", batch=BATCH,
                                 optimizer="momentum", lr=0.05, progress=lines.append)
    assert llvm_counts(lines)[0] > 5  # kernel groups of four entry points, their entries, the wrapper
    lib = convc.load(res.output)
    trainer = convc.Trainer(str(tmp_path / "net.onnx"), input_shape=(BATCH, 3, 32, 32),
                            optimizer=convc.optim.SGD(0.05, momentum=0.9), seed=0)
    for seed in range(2):
        x, y = batch(BATCH, seed)
        assert lib.step(x, y) == trainer.step(x, y)
    mine, theirs = lib.state_dict(), trainer.state_dict()
    assert set(mine) == set(theirs)
    for name in theirs:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
