"""Threads: the same numbers whatever the thread count, concurrent callers stay correct, and a
single-threaded model starts no worker."""
from __future__ import annotations

import gc
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import convc
from convc import models


@pytest.fixture(scope="module")
def cifar():
    return models.cifar_cnn(batch=4)


@pytest.mark.slow
def test_results_identical_across_thread_counts(cifar):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    outs = [convc.compile(cifar, threads=t)(x) for t in (1, 2, 3)]
    # every thread computes whole output tiles the same way: bitwise equal, not just close
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])


def test_two_python_threads_share_one_compiled_model(cifar):
    model = convc.compile(cifar, threads=2)
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal((4, 3, 32, 32)).astype(np.float32) for _ in range(6)]
    want = [model(x) for x in xs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(5):
            got = list(pool.map(model, xs))
            for g, w in zip(got, want):
                assert np.array_equal(g, w)


def native_threads() -> int:
    """Threads of this process, once the garbage of earlier tests (models in reference cycles, whose
    pools stop when they are collected) is gone: otherwise a collection in the middle of a test
    changes the count."""
    gc.collect()
    return len(os.listdir(f"/proc/{os.getpid()}/task"))


@pytest.mark.slow
def test_native_pool_threads_exist_only_when_asked(cifar):
    before = native_threads()
    single = convc.compile(cifar, threads=1)
    single(np.zeros((4, 3, 32, 32), np.float32))
    assert native_threads() == before  # threads=1 spawns nothing
    multi = convc.compile(cifar, threads=3)
    multi(np.zeros((4, 3, 32, 32), np.float32))
    assert native_threads() >= before + 2  # a persistent pool: 2 workers beside the caller
    n = native_threads()
    for _ in range(20):
        multi(np.zeros((4, 3, 32, 32), np.float32))
    assert native_threads() == n  # created once, not per call


def cpu_seconds(tids: set[str]) -> float:
    """Processor time used so far by these threads of this process."""
    ticks = 0
    for tid in tids:
        try:
            with open(f"/proc/{os.getpid()}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # a thread that ended meanwhile
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_an_idle_pool_leaves_the_cores_to_others(cifar):
    # between calls the workers block instead of polling, so numpy's BLAS (or anything else) in the
    # same process gets the cores; a pool polling with 50 us sleeps used 13% of a core here
    a = np.random.default_rng(0).standard_normal((256, 256))
    a = a @ a.T / 256  # numpy's BLAS threads start now, before the pool's
    gc.collect()
    others = set(os.listdir(f"/proc/{os.getpid()}/task"))
    model = convc.compile(cifar, threads=3)
    x = np.zeros((4, 3, 32, 32), np.float32)
    want = model(x)
    workers = set(os.listdir(f"/proc/{os.getpid()}/task")) - others
    assert len(workers) >= 2
    time.sleep(0.1)  # past the spinning phase
    before = cpu_seconds(workers)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        a = a @ a.T / 256  # numpy's BLAS, between two calls of the model
        time.sleep(0.01)
    used = cpu_seconds(workers) - before
    assert used < 0.03, f"idle pool workers used {used:.3f} s of processor time in 1 s"
    assert np.array_equal(model(x), want)  # and wake up for the next call


@pytest.mark.slow
def test_models_in_garbage_cycles_are_freed_without_crashing():
    # a garbage cycle finalizes the compiled code and the contexts in no fixed order; the worker
    # pool must be stopped before its code goes (this segfaulted before the code was pinned)
    import subprocess
    import sys
    script = """
import gc, numpy as np, convc
from convc import models
m = models.lenet5(batch=2)
x = np.zeros((2, 1, 28, 28), np.float32)
for i in range(6):  # each is a fresh compile (no cache): 6 finalization orders, half the time of 12
    c = convc.compile(m, threads=2, batch=2)
    c(x)
    cycle = {"model": c}
    cycle["self"] = cycle
    del c, cycle
    gc.collect()
print("ok")
"""
    env = dict(os.environ, CONVC_NO_CACHE="1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])
