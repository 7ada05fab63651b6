"""A cold JIT compile starts LLVM's worker process before building and optimizing the graph, so the
worker is up when the first kernel is written (codegen/llvm_pool.py prestart); a warm compile starts
nothing."""
from __future__ import annotations

import os

import pytest

import convc
from convc.codegen import llvm_pool


@pytest.fixture
def no_idle_workers(monkeypatch):
    """An empty idle pool for the test; the workers it starts are stopped after it."""
    saved = list(llvm_pool._idle)
    llvm_pool._idle.clear()
    yield
    started = [w for w in llvm_pool._idle if w not in saved]
    llvm_pool._idle[:] = saved
    for w in started:
        w.close()


def _live() -> list:
    return [w for w in llvm_pool._idle if w.pid == os.getpid() and w.proc.poll() is None]


def test_prestart_starts_one_worker_and_only_when_several_jobs_compile(monkeypatch, no_idle_workers):
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "1")
    llvm_pool.prestart()
    assert _live() == []  # one job: everything compiles in the calling process
    monkeypatch.setenv("CONVC_COMPILE_JOBS", "2")
    llvm_pool.prestart()
    llvm_pool.prestart()
    assert len(_live()) == 1  # one, kept idle; a second call finds it
    worker = _live()[0]
    assert llvm_pool._take() is worker  # the compile's first worker is the one started early


def test_a_cold_compile_prestarts_before_the_passes_and_a_warm_one_does_not(monkeypatch, tmp_path, no_idle_workers):
    from convc.models import lenet5
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CONVC_NO_CACHE", raising=False)
    path = tmp_path / "lenet.onnx"
    path.write_bytes(lenet5().SerializeToString())
    order: list[str] = []
    real = llvm_pool.prestart
    monkeypatch.setattr(llvm_pool, "prestart", lambda: (order.append("prestart"), real())[1])
    convc.compile(path, threads=1, progress=lambda s: order.append(s.split(" ")[0]))
    assert order.count("prestart") == 1
    assert order.index("prestart") < order.index("constant")  # before the first pass ("constant folding")
    order.clear()
    convc.compile(path, threads=1, progress=lambda s: order.append(s.split(" ")[0]))
    assert "prestart" not in order


def test_a_worker_warms_llvm_up_before_its_first_request():
    """The worker compiles an empty function for this machine when it starts (its first kernel
    then does not pay LLVM's set-up); in a process that has compiled nothing yet it runs too."""
    import io

    from convc.codegen import llvm_worker
    calls = []
    real = llvm_worker.object_code
    try:
        llvm_worker.object_code = lambda *a, **k: (calls.append(a[0]), real(*a, **k))[1]
        llvm_worker.serve(io.BytesIO(b""), io.BytesIO())  # no requests: warms up, then stdin ends
    finally:
        llvm_worker.object_code = real
    assert len(calls) == 1 and "convc_warm_up" in calls[0]
