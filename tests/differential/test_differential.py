"""The compiled code against convc's numpy reference of the same graph, for inference and for the
training step, over the zoo's architectures at the sizes users run, with the arena check on.

The grid crosses architectures, batch (1, 3, 16, 32), spatial size (7 to 64, odd ones included),
width (odd widths leave register-tile and vector remainders) and threads (1, 2). Every run takes a
seeded sample of it (about two minutes on 2 cores); the whole grid (about 2,400 cases, hours) runs
with ``CONVC_DIFFERENTIAL_GRID=1 python -m pytest tests/differential -m slow``.
"""
from __future__ import annotations

import itertools
import os
import random

import numpy as np
import pytest

import convc
from tests.differential import harness, zoo

BATCHES = (1, 3, 16, 32)
SIZES = (7, 9, 16, 23, 32, 33, 64)
WIDTHS = (3, 5, 8, 13, 16)
THREADS = (1, 2)
CLASSIFIERS = ("resnet", "mobilenet", "densenet")


def valid(name: str, size: int) -> bool:
    if name == "unet":
        return size % 2 == 0  # the transposed conv doubles the pooled size back
    return size >= 4 or name == "tcn"


GRID = [case for case in itertools.product(zoo.NETS, BATCHES, SIZES, WIDTHS, THREADS) if valid(case[0], case[2])]


def sample(n: int, seed: int, *, max_pixels: int) -> list[tuple]:
    """``n`` cases of the grid, every architecture at least twice, the issue-sized ResNet always."""
    rng = random.Random(seed)
    small = [c for c in GRID if c[1] * c[2] * c[2] <= max_pixels]
    picked = [("resnet", 16, 32, 8, 2)]
    for name in zoo.NETS:
        picked += rng.sample([c for c in small if c[0] == name], 2)
    picked += rng.sample(small, max(0, n - len(picked)))
    return list(dict.fromkeys(picked))


def case_id(case: tuple) -> str:
    name, batch, size, width, threads = case
    return f"{name}-b{batch}-{size}px-w{width}-t{threads}"


@pytest.fixture(autouse=True)
def arena_check(monkeypatch):
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")


def _inference(case: tuple) -> None:
    name, batch, size, width, threads = case
    model = zoo.build(name, width)
    harness.inference(model, zoo.input_shape(name, batch, size), threads=threads, case=case_id(case)).check()


def _training(case: tuple) -> None:
    name, batch, size, width, threads = case
    model = zoo.build(name, width)
    loss = "cross_entropy" if name in CLASSIFIERS else "mse"
    shape = zoo.input_shape(name, batch, size)
    harness.training(model, shape, loss=loss, threads=threads, case=case_id(case) + " gradients").check()
    harness.training(model, shape, loss=loss, threads=threads, case=case_id(case) + " momentum update",
                     optimizer=convc.optim.SGD(0.05, momentum=0.9, weight_decay=1e-4)).check()


INFERENCE_SAMPLE = sample(14, seed=1, max_pixels=32 * 64 * 64)
TRAINING_SAMPLE = sample(11, seed=2, max_pixels=16 * 33 * 33)


@pytest.mark.parametrize("case", INFERENCE_SAMPLE, ids=case_id)
@pytest.mark.slow
def test_inference_matches_the_reference(case):
    _inference(case)


# `-m "not slow"` keeps the report's ResNet case; CI runs the whole sample
@pytest.mark.parametrize("case", [c if i == 0 else pytest.param(c, marks=pytest.mark.slow)
                                  for i, c in enumerate(TRAINING_SAMPLE)], ids=case_id)
@pytest.mark.slow
def test_training_step_matches_the_reference(case):
    _training(case)


full_grid = pytest.mark.skipif(not os.environ.get("CONVC_DIFFERENTIAL_GRID"),
                               reason="the whole grid takes hours: set CONVC_DIFFERENTIAL_GRID=1")


@pytest.mark.slow
@full_grid
@pytest.mark.parametrize("case", [c for c in GRID if c not in INFERENCE_SAMPLE], ids=case_id)
def test_inference_grid(case):
    _inference(case)


@pytest.mark.slow
@full_grid
@pytest.mark.parametrize("case", [c for c in GRID if c not in TRAINING_SAMPLE], ids=case_id)
def test_training_grid(case):
    _training(case)


# --- the harness finds what it is for --------------------------------------------------------------
@pytest.mark.slow
def test_the_harness_fails_a_gradient_off_by_the_size_it_was_built_to_catch(monkeypatch):
    """BatchNorm scale gradients 1e-3 away from the compiled ones (the wrong ResNet gradients were
    off by 2.5e-3 to 1.5e-2) fail the comparison; the unchanged step passes."""
    import dataclasses

    from convc.ops import OpKind, base
    model = zoo.build("resnet", 5)
    shape = zoo.input_shape("resnet", 3, 9)
    assert not harness.training(model, shape, loss="cross_entropy", threads=1).failures()
    definition = base.op_def(OpKind.BATCH_NORM_GRAD)

    def off(attrs, *inputs):
        dx, dscale, dbias = definition.reference(attrs, *inputs)
        return [dx, dscale * (1 + 1e-3), dbias]
    monkeypatch.setitem(base._REGISTRY, OpKind.BATCH_NORM_GRAD, dataclasses.replace(definition, reference=off))
    bad = harness.training(model, shape, loss="cross_entropy", threads=1).failures()
    assert bad and all("bn" in line for line in bad), bad


@pytest.mark.slow
def test_the_arena_check_catches_a_tensor_placed_over_a_live_one(monkeypatch):
    """A plan that puts a tensor over one still in use computes a wrong step: the static check
    refuses the plan, and the run-time check stops the kernel that reads the clobbered bytes."""
    from convc.codegen.arena_check import ArenaError
    from convc.passes.autodiff.training import build_training, update_targets
    from convc.passes.memory_check import check_memory_plan

    from convc.driver import compile_bound
    from convc.options import resolve_options

    monkeypatch.delenv("CONVC_CHECK_ARENA")
    model = zoo.build("resnet", 5)
    shape = zoo.input_shape("resnet", 3, 9)
    step = build_training(model.to_graph(shape), loss="cross_entropy")
    mem, g = step.plan.memory, step.plan.graph
    check_memory_plan(g, step.plan.order, mem, update_targets)
    # the first activation that lives past the birth of a later, disjoint one gets its bytes
    ranges = sorted(mem.live_ranges, key=lambda r: r.first)
    victim, intruder = next((a, b) for a, b in itertools.combinations(ranges, 2)
                            if a.first < b.first < a.last and b.nbytes <= a.nbytes)
    mem.buffers[intruder.name] = mem.buffers[victim.name]
    with pytest.raises(convc.GraphError, match="overlaps"):
        check_memory_plan(g, step.plan.order, mem, update_targets)
    monkeypatch.setenv("CONVC_CHECK_ARENA", "1")
    state = {n: np.array(v, copy=True) for n, v in step.initial.items()}
    state[step.lr] = np.zeros(1, np.float32)
    native = compile_bound(step.plan, state, resolve_options(threads=1, cache=False))
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with pytest.raises(ArenaError, match="arena check: kernel"):
        native.run({step.x: x, step.labels: np.zeros(3, np.int64)})


@pytest.mark.slow
def test_a_checked_build_passes_and_matches_an_unchecked_one(monkeypatch):
    model = zoo.build("densenet", 5)
    shape = zoo.input_shape("densenet", 3, 9)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    checked = convc.compile(model, input_shape=shape, threads=2)(x)
    monkeypatch.delenv("CONVC_CHECK_ARENA")
    plain = convc.compile(model, input_shape=shape, threads=2, cache=False)(x)
    np.testing.assert_array_equal(checked, plain)


def test_an_update_is_known_to_one_ulp_of_the_stored_value_and_no_better():
    """A parameter's change far below its own ulp (a conv bias before BatchNorm, whose gradient is
    rounding residue) rounds to 0 or one ulp: that passes; a change wrong by 1e-4 of the weights fails."""
    from tests.differential.harness import Comparison
    rng = np.random.default_rng(0)
    before = rng.uniform(0.05, 0.2, 64).astype(np.float32)
    exact = np.full(64, 1e-12)                                   # the float64 step's change
    rounded = before.copy()
    rounded[3] = np.nextafter(before[3], np.float32(1))          # the compiled step rounded one element up
    wrong = before + np.float32(1e-4) * before
    stored = float(np.max(np.spacing(before)))
    for compiled, ok in ((rounded, True), (wrong, False)):
        change = compiled.astype(np.float64) - before
        c = Comparison("update")
        c.add("bias (updated)", change, exact, np.zeros(64), change, "SgdUpdate[0]", stored)
        c.add("weight (updated)", np.full(64, -1e-3), np.full(64, -1e-3), np.full(64, -1e-3), np.full(64, -1e-3),
              "SgdUpdate[0]", stored)
        assert (not c.failures()) == ok, c.failures()
