"""A model compiled with a free batch runs any batch after unpickling, where nothing compiles:
the pickle carries its batch variants and the runtime chunks (and pads) over them (convc/model.py)."""
from __future__ import annotations

import multiprocessing
import pickle

import numpy as np
import pytest

import convc
import convc.models
from convc.model import chunk_plan


def _forbid_compiling() -> None:
    """Any code generation in this process raises: an unpickled model must run without it."""
    import convc.codegen.jit as jit
    import convc.codegen.module as module

    def refuse(*args, **kwargs):
        raise AssertionError("compiled after unpickling")
    jit.machine_code = refuse
    jit.JitEngine = refuse
    module.emit_module = refuse


def _run_in_worker(args):
    blob, x = args
    _forbid_compiling()
    return pickle.loads(blob)(x)


@pytest.fixture(scope="module")
def compiled():
    """LeNet-5 with a free batch: (the model, its pickle with batch-1 code only, its pickle after
    compile_batches(16))."""
    model = convc.compile(convc.models.lenet5(batch=None), threads=1)
    batch_1 = pickle.dumps(model)
    return model.compile_batches(16), batch_1, pickle.dumps(model)


@pytest.fixture(scope="module")
def lenet(compiled):
    return compiled[0]


@pytest.fixture(scope="module")
def fixed_4():
    return convc.compile(convc.models.lenet5(batch=4), threads=1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).standard_normal((500, 1, 28, 28)).astype(np.float32)


def test_chunk_plan_takes_the_largest_compiled_batch_that_fits_and_pads_the_rest():
    # 37 = 16 + 16 + 4 * 1
    assert chunk_plan(37, [1, 16]) == [(0, 16, 16), (16, 16, 16)] + [(32 + i, 1, 1) for i in range(5)]
    # no batch-1 code (a library compiled at 8): 19 = 8 + 8 + 3 padded to 8
    assert chunk_plan(19, [8]) == [(0, 8, 8), (8, 8, 8), (16, 3, 8)]
    assert chunk_plan(3, [8, 4]) == [(0, 3, 4)]


def test_batch_500_on_a_batch_1_compile_after_pickling_equals_one_process(compiled, images):
    lenet, batch_1, _ = compiled
    again = pickle.loads(batch_1)
    assert again.batch == 1 and sorted(again._batch_variants()) == [1]
    out = again(images)
    assert out.shape == (500, 10)
    # the process that compiled it, on its batch-16 code (then batch 1 for the last 4)
    here = np.concatenate([lenet(images[i:i + 16]) for i in range(0, 496, 16)] + [lenet(images[496:])])
    np.testing.assert_array_equal(out, here)
    assert not again._variants  # chunked over its batch-1 code, nothing compiled


def test_the_pickle_carries_the_batch_variants(compiled, images):
    lenet, batch_1, blob = compiled
    again = pickle.loads(blob)
    assert len(blob) > 1.8 * len(batch_1)  # the batch-16 code and its own copy of the weights
    assert sorted(again._batch_variants()) == [1, 16]
    for n in (1, 16):  # exact variants
        np.testing.assert_array_equal(again(images[:n]), lenet(images[:n]))
    # 37 = 16 + 16 + 5 * 1
    np.testing.assert_array_equal(again(images[:37]), np.concatenate([lenet(images[:16]), lenet(images[16:32])] + [
        lenet(images[i:i + 1]) for i in range(32, 37)]))
    with pytest.raises(convc.InputError, match=r"has shape \(500, 1, 28, 27\)"):
        again(images[:, :, :, :27])


@pytest.mark.slow  # a spawned interpreter imports convc
def test_a_worker_process_runs_any_batch_without_compiling(lenet, images):
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        out = pool.map(_run_in_worker, [(pickle.dumps(lenet), images[:123])])[0]
    np.testing.assert_array_equal(out[:112], np.concatenate([lenet(images[i:i + 16]) for i in range(0, 112, 16)]))
    np.testing.assert_array_equal(out[112:], np.concatenate([lenet(images[i:i + 1]) for i in range(112, 123)]))


def test_a_fixed_batch_still_means_that_batch_after_pickling(fixed_4, images):
    again = pickle.loads(pickle.dumps(fixed_4))
    with pytest.raises(convc.InputError, match=r"expected \(4, 1, 28, 28\)"):
        again(images[:5])


def test_compile_batches_needs_a_free_batch_and_a_compiler(lenet, fixed_4):
    with pytest.raises(convc.InputError, match="batch"):
        fixed_4.compile_batches(8)
    with pytest.raises(convc.InputError, match="before pickling"):
        pickle.loads(pickle.dumps(lenet)).compile_batches(8)


@pytest.mark.slow
def test_a_library_of_a_free_batch_runs_any_batch_loaded_and_unpickled(tmp_path, images):
    convc.compile_library(convc.models.lenet5(batch=None), tmp_path / "lenet.so")
    lib = convc.load(tmp_path / "lenet.so")
    want = convc.compile(convc.models.lenet5(batch=None), threads=1)(images[:41])
    np.testing.assert_array_equal(lib(images[:41]), want)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(lib))(images[:41]), want)
    convc.compile_library(convc.models.lenet5(batch=2), tmp_path / "fixed.so")
    with pytest.raises(convc.InputError, match=r"expected \(2, 1, 28, 28\)"):
        convc.load(tmp_path / "fixed.so")(images[:3])
