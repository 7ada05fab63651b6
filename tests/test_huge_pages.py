"""convc.compile runs without numpy's huge-page advice (convc/huge_pages.py) and restores it after,
also when compiles overlap in threads or a compile fails."""
from __future__ import annotations

import threading

import pytest

import convc
from convc import huge_pages
from convc.passes import pipeline as pipeline_module

switch = huge_pages._setter()
pytestmark = pytest.mark.skipif(switch is None, reason="this numpy has no huge-page switch")


def advised() -> bool:
    before = switch(True)
    switch(before)
    return before


def test_a_compile_runs_without_the_advice_and_restores_it(monkeypatch):
    monkeypatch.setenv("CONVC_NO_CACHE", "1")
    seen = []
    real = pipeline_module.pipeline
    monkeypatch.setattr(pipeline_module, "pipeline", lambda *a, **k: seen.append(advised()) or real(*a, **k))
    assert advised()
    convc.compile(convc.models.lenet5(), threads=1)
    assert seen == [False] and advised()
    monkeypatch.setattr(pipeline_module, "pipeline", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        convc.compile(convc.models.lenet5(), threads=1)
    assert advised()


def test_overlapping_compiles_restore_the_advice_when_the_last_one_ends():
    first_in, second_done = threading.Event(), threading.Event()
    inside = []

    def first():
        with huge_pages.without_huge_page_advice():
            first_in.set()
            assert second_done.wait(30)
            inside.append(advised())  # the second block ended first: still off for this one
    t = threading.Thread(target=first)
    t.start()
    assert first_in.wait(30)
    with huge_pages.without_huge_page_advice():
        inside.append(advised())
    second_done.set()
    t.join()
    assert inside == [False, False] and advised()


class Stop(Exception):
    pass


def test_plans_and_libraries_compile_without_the_advice(monkeypatch, tmp_path):
    """A training step's compile (driver.compile_plan, what convc.Trainer calls) and `convc compile`
    (driver.build_library) run without it too."""
    from convc import driver
    from convc.codegen import aot, cache
    from convc.passes.pipeline import pipeline
    seen = []

    def spy(*a, **k):
        seen.append(advised())
        raise Stop
    monkeypatch.setattr(cache, "compile_plan", spy)
    monkeypatch.setattr(aot, "build_plan", spy)
    plan = pipeline(driver.load_graph(convc.models.lenet5(), 1))
    with pytest.raises(Stop):
        driver.compile_plan(plan, driver.ONE_THREAD)
    with pytest.raises(Stop):
        driver.build_library(convc.models.lenet5(), tmp_path / "lenet.so", driver.ONE_THREAD, batch=1)
    assert seen == [False, False] and advised()
