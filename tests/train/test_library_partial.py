"""Training libraries (``convc compile --train``) step batches smaller than the compiled one without
another library: convc_train_step_n / convc_compute_gradients_n take the sample count n <= the
compiled batch and train as ``convc.Trainer`` trains a smaller last batch (the loss is the mean over
the n samples, BatchNorm's batch statistics and running statistics count them alone). Driven from
Python (convc.load) and from C; an n out of range is refused (InputError; the C ABI returns 4)."""
from __future__ import annotations

import ctypes
import shutil
import subprocess

import numpy as np
import onnx
import pytest

import convc
from train import nets

BATCH, HW, CLASSES = 32, 6, 5
SIZES = [BATCH, 17, 1, 17, BATCH]  # full, a last partial batch, a single sample, and back
LR = 1e-2


def bn_net(seed: int = 0) -> onnx.ModelProto:
    """conv3x3 -> BN -> ReLU -> global average pool -> linear (5 classes): BatchNorm's batch
    statistics are what a padded batch would get wrong."""
    n = nets.Net(seed)
    x = n.node("Relu", [n.bn(n.conv("input", "conv", 3, 8), "bn", 8)])
    x = n.node("Flatten", [n.node("GlobalAveragePool", [x])], axis=1)
    n.gemm(x, "fc", 8, CLASSES)
    return n.model(["N", 3, HW, HW], "output", ["N", CLASSES], "bn_net")


def batch(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, HW, HW)).astype(np.float32), rng.integers(0, CLASSES, n)


def trainer(onnx_file) -> convc.Trainer:
    return convc.Trainer(str(onnx_file), input_shape=(BATCH, 3, HW, HW), optimizer=convc.optim.Adam(LR),
                         seed=0)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """(the ONNX file, the training library at batch 32), built once for the module."""
    folder = tmp_path_factory.mktemp("partial")
    onnx_file = folder / "bn_net.onnx"
    onnx.save(bn_net(), str(onnx_file))
    return onnx_file, convc.compile_library(str(onnx_file), folder / "train.so", batch=BATCH, train=True,
                                            optimizer="adam", lr=LR)


def assert_same_state(mine: dict, theirs: dict) -> None:
    assert set(mine) == set(theirs)
    for name in theirs:
        np.testing.assert_allclose(mine[name], theirs[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.slow  # the library's build: about 6 s
def test_partial_batches_step_like_the_trainer(library):
    """Batches of 32, 17, 1, 17, 32 samples on the batch-32 library: every loss and, after them,
    every weight, BN running statistic and Adam moment equal the Trainer's on the same batches
    (which pads them itself); the running statistics moved by the samples alone (a zero-padded
    batch of 17 counted as 32 gives another running mean)."""
    onnx_file, res = library
    lib, t = convc.load(res.output), trainer(onnx_file)
    assert lib.batch == BATCH
    for seed, n in enumerate(SIZES):
        x, y = batch(seed, n)
        np.testing.assert_allclose(lib.step(x, y), t.step(x, y), rtol=1e-5, err_msg=f"batch of {n}")
    assert lib.steps_done == t.steps_done == len(SIZES)
    assert_same_state(lib.state_dict(), t.state_dict())
    # the same two first steps, the batch of 17 padded with 15 zero samples by the caller: another step
    first, (x, y) = batch(0, BATCH), batch(1, 17)
    pad = lambda a: np.concatenate([a, np.zeros((BATCH - 17,) + a.shape[1:], a.dtype)])  # noqa: E731
    fresh, padded = convc.load(res.output), convc.load(res.output)
    for lib_, xy in ((fresh, (x, y)), (padded, (pad(x), pad(y)))):
        lib_.step(*first)
        lib_.step(*xy)
    mean = next(n for n in t.state_dict() if n.endswith("running_mean"))
    assert not np.allclose(fresh.state_dict()[mean], padded.state_dict()[mean], rtol=1e-3)


@pytest.mark.slow  # the library's build: about 6 s
def test_two_call_step_takes_a_partial_batch(library):
    """compute_gradients on 17 samples, accumulated with 1 sample, then apply_gradients: the
    Trainer's two-call step on the same batches gives the same losses and state."""
    onnx_file, res = library
    lib, t = convc.load(res.output), trainer(onnx_file)
    for accumulate, (seed, n) in enumerate([(3, 17), (4, 1)]):
        x, y = batch(seed, n)
        np.testing.assert_allclose(lib.compute_gradients(x, y, accumulate=bool(accumulate)),
                                   t.compute_gradients(x, y, accumulate=bool(accumulate)), rtol=1e-5)
    lib.apply_gradients()
    t.apply_gradients()
    assert lib.steps_done == t.steps_done == 1
    assert_same_state(lib.state_dict(), t.state_dict())
    with pytest.raises(convc.TrainingError, match="nothing was applied"):
        lib.apply_gradients()


@pytest.mark.slow  # the library's build: about 6 s
def test_batch_out_of_range_is_refused(library):
    """Python: more samples than the compiled batch is an InputError naming both; C: n = 0, n =
    33 and n = -1 return 4 and change nothing, NULL arrays return 1."""
    lib = convc.load(library[1].output)
    x, y = batch(0, BATCH + 1)
    with pytest.raises(convc.InputError, match=f"a batch of {BATCH + 1}; this library trains on at most {BATCH}"):
        lib.step(x, y)
    with pytest.raises(convc.InputError, match="at most 32"):
        lib.compute_gradients(x, y)
    with pytest.raises(convc.InputError, match=r"labels have shape \(33,\), expected \(5,\)"):
        lib.step(x[:5], y)
    so = lib._lib
    x, y = batch(0, BATCH)
    ins, labels = (ctypes.c_void_p * 1)(x.ctypes.data), (ctypes.c_void_p * 1)(np.ascontiguousarray(y).ctypes.data)
    before = lib.state_dict()
    for n in (0, BATCH + 1, -1):
        assert so.convc_train_step_n(lib._ctx, ins, labels, ctypes.c_int64(n), None) == 4
        assert so.convc_compute_gradients_n(lib._ctx, ins, labels, ctypes.c_int64(n), None, 0) == 4
    assert so.convc_train_step_n(lib._ctx, None, labels, ctypes.c_int64(3), None) == 1
    assert lib.steps_done == 0
    for name, v in lib.state_dict().items():
        np.testing.assert_array_equal(v, before[name], err_msg=name)
    header = library[1].header.read_text()
    assert f"#define CONVC_TRAIN_BATCH {BATCH}" in header
    assert "int convc_train_step_n(convc_ctx *ctx, const float *const *inputs, const void *const *labels, " \
           "int64_t n,\n                       float *loss);" in header


C_PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "train.h"

static void fill(float *v, int64_t n, int step) {
    for (int64_t k = 0; k < n; k++) v[k] = (float)((((k * 7 + step * 3) % 13) - 6) / 6.0);
}

int main(void) {
    static const int64_t sizes[] = {CONVC_TRAIN_BATCH, 17, 1};
    if (convc_abi_version() != CONVC_ABI_VERSION || convc_check_cpu() != 0) return 2;
    convc_ctx *ctx = convc_create(0);
    if (!ctx) return 4;
    static float x[CONVC_INPUT0_SIZE];
    static int64_t classes[CONVC_LABEL0_SIZE];
    const float *inputs[1] = {x};
    const void *labels[1] = {classes};
    for (int s = 0; s < 3; s++) {
        int64_t n = sizes[s];
        fill(x, CONVC_INPUT0_SIZE / CONVC_TRAIN_BATCH * n, s);
        for (int64_t k = 0; k < n; k++) classes[k] = (k + s) % 5;
        float loss;
        if (convc_train_step_n(ctx, inputs, labels, n, &loss) != 0) return 5;
        printf("%.9g\n", loss);
    }
    if (convc_train_step_n(ctx, inputs, labels, CONVC_TRAIN_BATCH + 1, NULL) != 4) return 6;
    fprintf(stderr, "%lld steps done\n", (long long)convc_steps_done(ctx));
    convc_destroy(ctx);
    return 0;
}
"""


def c_batch(step: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch the C program feeds at ``step``."""
    k = np.arange(n * 3 * HW * HW)
    x = ((((k * 7 + step * 3) % 13) - 6) / 6.0).astype(np.float32).reshape(n, 3, HW, HW)
    return x, (np.arange(n) + step) % CLASSES


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
@pytest.mark.slow
def test_c_program_steps_partial_batches(library, tmp_path):
    """A C program steps batches of 32, 17 and 1 samples with convc_train_step_n: its losses are
    the Trainer's on the same batches, and n = 33 returns 4."""
    onnx_file, res = library
    source, exe, folder = tmp_path / "partial.c", tmp_path / "partial", res.output.parent
    source.write_text(C_PROGRAM)
    made = subprocess.run(["cc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(exe), str(source), f"-I{folder}",
                           str(res.output), f"-Wl,-rpath,{folder}"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, (ran.returncode, ran.stderr)
    t = trainer(onnx_file)
    want = [t.step(*c_batch(s, n)) for s, n in enumerate([BATCH, 17, 1])]
    np.testing.assert_allclose([float(v) for v in ran.stdout.split()], want, rtol=1e-5)
    assert "3 steps done" in ran.stderr


def _raw_step(lib, x: np.ndarray, y: np.ndarray) -> tuple[int, int]:
    """(convc_train_step_n's, convc_compute_gradients_n's) return codes on labels exactly as given."""
    y = np.ascontiguousarray(y, dtype=np.int64)
    ins, labels = (ctypes.c_void_p * 1)(x.ctypes.data), (ctypes.c_void_p * 1)(y.ctypes.data)
    n = ctypes.c_int64(len(y))
    return (lib._lib.convc_train_step_n(lib._ctx, ins, labels, n, None),
            lib._lib.convc_compute_gradients_n(lib._ctx, ins, labels, n, None, 0))


@pytest.mark.slow  # the library's build: about 6 s
def test_c_labels_out_of_range_are_refused(library):
    """A class index outside [0, classes) (the loss kernel would skip it as if ignored: a wrong label
    would silently not train) returns 6 from the C step, full or partial batch, and changes nothing."""
    lib = convc.load(library[1].output)
    before = lib.state_dict()
    for n, bad in ((BATCH, CLASSES), (17, -1), (1, 1 << 40)):
        x, y = batch(n, n)
        y[n // 2] = bad
        assert _raw_step(lib, x, y) == (6, 6), (n, bad)
    assert lib.steps_done == 0
    for name, v in lib.state_dict().items():
        np.testing.assert_array_equal(v, before[name], err_msg=name)


@pytest.mark.slow  # another library's build: about 6 s
def test_c_ignore_index_that_is_a_class(tmp_path):
    """A library built with ignore_index=2 (one of the classes) skips the samples labelled 2 when a C
    caller passes them as they are, at the full batch and a partial one, as the Trainer does; labels
    outside the classes that are not 2 still return 6."""
    onnx_file = tmp_path / "bn_net.onnx"
    onnx.save(bn_net(), str(onnx_file))
    loss = convc.Loss("cross_entropy", ignore_index=2)
    res = convc.compile_library(str(onnx_file), tmp_path / "train.so", batch=BATCH, train=True, optimizer="adam",
                                lr=LR, loss=loss)
    lib = convc.load(res.output)
    t = convc.Trainer(str(onnx_file), input_shape=(BATCH, 3, HW, HW), optimizer=convc.optim.Adam(LR), seed=0,
                      loss=loss)
    for seed, n in enumerate((BATCH, 17)):
        x, y = batch(seed, n)
        assert (y == 2).any()
        assert _raw_step(lib, x, y)[0] == 0
        t.step(x, y)
    assert_same_state(lib.state_dict(), t.state_dict())
    x, y = batch(5, 4)
    y[0] = -100
    assert _raw_step(lib, x, y) == (6, 6)
