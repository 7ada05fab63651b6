"""Embedding a compiled model in an application: concurrent calls from Python threads, the GIL
released during a call, and pickling to worker processes (multiprocessing, spawn)."""
from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from aot_helpers import forbid_compiling, inputs_for, run_model, run_pickled_in

import convc


@pytest.fixture(scope="module")
def cifar_jit(cifar_file):
    return convc.compile(cifar_file, threads=2, cache=False)


@pytest.mark.parametrize("source", ["jit", "library"])
@pytest.mark.slow
def test_concurrent_calls_from_threads(source, cifar_jit, cifar_file, tmp_path_factory):
    if source == "jit":
        model = cifar_jit
    else:
        from convc.compiler import build
        model = convc.load(build(str(cifar_file), tmp_path_factory.mktemp("cifar") / "cifar.so", threads=2).output)
    xs = [inputs_for(model, seed=s)[0] for s in range(16)]
    want = [cifar_jit(x) for x in xs]  # one at a time

    def call(i: int) -> tuple[int, np.ndarray]:
        return i, model(xs[i % 16])
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, range(96)))
    for i, y in results:
        np.testing.assert_allclose(y, want[i % 16], rtol=1e-5, atol=1e-6)
    # each concurrent caller got its own context (arena); they are kept for reuse afterwards
    assert len(model._runner._free) >= 2


def _longest_stall_during(call) -> tuple[float, float]:
    """(longest time a busy Python thread made no progress while ``call()`` ran, seconds the call
    took). A call that keeps the GIL stalls that thread for the whole call; one that releases it
    stalls it at most for an operating-system time slice, however loaded the machine is."""
    stamps: list[float] = []
    stop = threading.Event()

    def counter() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())
    th = threading.Thread(target=counter)
    th.start()
    try:
        time.sleep(0.02)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
    finally:
        stop.set()
        th.join()
    inside = [t0] + [t for t in stamps if t0 < t < t1] + [t1]
    return max(b - a for a, b in zip(inside, inside[1:])), t1 - t0


@pytest.mark.slow
def test_the_gil_is_released_while_the_model_runs(cifar_file):
    import ctypes

    from aot_helpers import write_model
    big = convc.compile(write_model(cifar_file.parent / "cifar_b256.onnx", "cifar", batch=256), threads=1, cache=False)
    x, = inputs_for(big)
    big(x)  # warm up
    def three_calls() -> None:  # long enough to outlast a time slice many times over
        for _ in range(3):
            big(x)
    stall, t_released = _longest_stall_during(three_calls)
    # control: the same native entry called through a prototype that keeps the GIL
    runner = big._runner
    fn = runner._fn
    runner._fn = ctypes.PYFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)(
        ctypes.cast(fn, ctypes.c_void_p).value)
    try:
        held_stall, t_held = _longest_stall_during(lambda: big(x))
    finally:
        runner._fn = fn
    print(f"\nduring {t_released * 1e3:.0f} ms of calls another Python thread stalls at most "
          f"{stall * 1e3:.1f} ms (a call holding the GIL: {held_stall * 1e3:.0f} of {t_held * 1e3:.0f} ms)")
    assert t_released > 0.1
    assert held_stall > 0.6 * t_held  # the control: the measure sees a held GIL (Python work around the call excepted)
    assert stall < 0.3 * t_released


def test_pickle_round_trip_in_process(cifar_jit):
    x, = inputs_for(cifar_jit, seed=11)
    again = pickle.loads(pickle.dumps(cifar_jit))
    np.testing.assert_array_equal(again(x), cifar_jit(x))
    assert again.threads == cifar_jit.threads
    assert again.graph.name == cifar_jit.graph.name


def test_unpicklable_model_says_so():
    from convc.session import CompiledModel
    fake = CompiledModel.__new__(CompiledModel)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(fake)


@pytest.mark.parametrize("source", ["jit", "library"])
@pytest.mark.slow
def test_pickled_models_run_in_a_spawned_pool(source, cifar_jit, cifar_file, tmp_path_factory):
    if source == "jit":
        model = cifar_jit
    else:
        from convc.compiler import build
        model = convc.load(build(str(cifar_file), tmp_path_factory.mktemp("cifar_p") / "cifar.so", threads=2).output)
    xs = [inputs_for(model, seed=s)[0] for s in range(6)]
    ctx = multiprocessing.get_context("spawn")
    # the workers refuse to generate code: unpickling must load the compiled code as it is
    with ctx.Pool(2, initializer=forbid_compiling) as pool:
        results = pool.map(run_pickled_in, [(model, x) for x in xs])
        # the model as an initializer-free argument of starmap too
        more = pool.starmap(run_model, [(model, xs[0])])
    pids = {pid for pid, _ in results}
    assert pids and multiprocessing.current_process().pid not in pids
    for (_, y), x in zip(results, xs):
        np.testing.assert_allclose(y, cifar_jit(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(more[0][1], cifar_jit(xs[0]), rtol=1e-5, atol=1e-6)
