"""Training runs on the inference stack: the driver's loader, pipeline variants, the compile cache's
one key scheme, the NativeRunner (with inputs bound to the training state) and CompiledModel."""
from __future__ import annotations

import numpy as np
import pytest
from convc.codegen import cache
from convc.passes.autodiff.training import build_training, update_targets
from convc.passes.pipeline import AS_BUILT, EVAL_ON_STATE, INFERENCE, TRAINING_STEP, pipeline
from convc.passes.training_state import LATE

import convc
from convc import driver
from convc.ir import TensorKind
from convc.model import CompiledModel
from convc.options import resolve_options
from convc.reference import run_reference
from train import nets

SHAPE = (8, 1, 8, 8)


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(SHAPE).astype(np.float32), rng.integers(0, 10, SHAPE[0])


def test_training_plans_are_pipeline_variants():
    forward = driver.load_forward(nets.digits_cnn(c1=4, c2=8), SHAPE)
    step = build_training(forward, loss="cross_entropy", optimizer=convc.optim.Adam(1e-3))
    assert step.plan.variant is TRAINING_STEP and TRAINING_STEP.runtime_weights
    # the updates and their bookkeeping run last, in LATE's order, each over the bytes it replaces
    tail = [op.kind for op in step.plan.order if op.kind in LATE]
    assert tail == sorted(tail, key=LATE.index) and step.plan.order[-len(tail):] == \
        [op for op in step.plan.order if op.kind in LATE]
    aliased = [(out, t) for op in step.plan.order for out, t in update_targets(op).items()]
    assert len(aliased) >= 3 * len(step.params)  # Adam: the weight and two moments per parameter
    for out, t in aliased:
        assert step.plan.memory.buffers[out] == step.plan.memory.buffers[t]
        assert step.plan.memory.buffers[t].kind == "input"
    # parameters are read at run time: no initial value is left in the plan for codegen to pack
    assert all(step.graph.tensor(p).data is None for p in step.params)

    ev = driver.eval_plan(forward, step.roles)
    assert ev.variant is EVAL_ON_STATE
    assert set(step.params) <= set(ev.graph.inputs)
    assert all(ev.graph.tensor(p).data is None and ev.graph.tensor(p).kind is TensorKind.PARAMETER
               for p in step.params)
    # the inference variant of the same forward folds the weights in as constants instead
    inference = pipeline(forward)
    assert inference.variant is INFERENCE and not INFERENCE.runtime_weights
    assert inference.graph.inputs == forward.inputs


@pytest.mark.slow
def test_trainer_steps_and_predictions_are_compiled_models():
    x, y = _data()
    t = convc.Trainer(nets.digits_cnn(c1=4, c2=8, dropout=0.0), input_shape=SHAPE, optimizer=convc.optim.SGD(0.1),
                      threads=2)
    t.step(x, y)
    t.predict(x)
    _, step_model = t._steps[SHAPE[0]]
    for model in (step_model, t._evals[SHAPE[0]]):
        assert type(model) is CompiledModel and model.threads == 2
    # only x and the labels are fed: the state is bound, and the step writes it in place
    assert [s.name for s in step_model.inputs][:2] == [t.plan.x, t.plan.labels]
    w = t._state[t.parameters[0]]
    before = w.copy()
    step_model.run({t.plan.x: x, t.plan.labels: y})
    assert t._state[t.parameters[0]] is w and not np.array_equal(w, before)
    assert t.steps_done == 2


def test_bound_inputs_are_checked_and_used_in_place():
    """A bound input is read from the caller's array (never a copy); feeding it overrides it for one call."""
    graph = driver.load_forward(nets.mlp(), (4, 3, 2, 2))
    step = build_training(graph, loss="mse")  # no optimizer: outputs the loss and the gradients
    model = driver.compile_plan(step.plan, resolve_options(threads=1))
    state = {n: np.array(v, copy=True) for n, v in step.initial.items()}
    state[step.lr] = np.zeros(1, np.float32)
    p = step.params[0]
    with pytest.raises(convc.InputError, match="C-contiguous"):
        model.bind({p: np.asfortranarray(state[p]) if state[p].ndim > 1 else state[p].astype(np.float64)})
    with pytest.raises(convc.InputError, match="cannot bind 'nope'"):
        model.bind({"nope": state[p]})
    with pytest.raises(convc.InputError, match="missing input"):
        model.run({step.x: np.zeros((4, 3, 2, 2), np.float32)})
    model.bind({n: state[n] for n in step.inputs if n in state})
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 3, 2, 2)).astype(np.float32), rng.uniform(0, 1, (4, 3)).astype(np.float32)
    first = model.run({step.x: x, step.labels: y})
    state[p] *= 2  # in place: the next run reads it
    doubled = model.run({step.x: x, step.labels: y})
    assert not np.array_equal(first[step.loss], doubled[step.loss])
    fed = model.run({step.x: x, step.labels: y, p: state[p] / 2})  # a feed wins over the binding, once
    np.testing.assert_array_equal(fed[step.loss], first[step.loss])
    np.testing.assert_array_equal(model.run({step.x: x, step.labels: y})[step.loss], doubled[step.loss])


@pytest.mark.slow
def test_training_code_is_cached_under_the_graph_key(tmp_path, monkeypatch):
    """One key scheme: a training step's entry is named by cache.graph_key like any model's, and a
    model trained from other initial weights reuses it (the parameters are inputs, not code)."""
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CONVC_NO_CACHE", "")
    monkeypatch.delenv("CONVC_CHECK_ARENA", raising=False)
    x, y = _data(1)
    first = convc.Trainer(nets.digits_cnn(c1=4, c2=8, seed=0, dropout=0.0), input_shape=SHAPE)
    loss_first = first.step(x, y)
    entries = sorted(p.name for p in (tmp_path / f"v{cache.FORMAT}").glob("*.entry"))
    options = first._compile_options
    key = cache.graph_key(first.plan.plan, cache.environment(options.threads, options.instrument))
    assert entries == [f"{key}.entry"]
    other = convc.Trainer(nets.digits_cnn(c1=4, c2=8, seed=5, dropout=0.0), input_shape=SHAPE)
    assert sorted(p.name for p in (tmp_path / f"v{cache.FORMAT}").glob("*.entry")) == entries
    loss_other = other.step(x, y)
    assert loss_other != loss_first  # other weights, other numbers, from the same code
    monkeypatch.setenv("CONVC_NO_CACHE", "1")
    cold = convc.Trainer(nets.digits_cnn(c1=4, c2=8, seed=5, dropout=0.0), input_shape=SHAPE)
    assert cold.step(x, y) == loss_other


def test_a_graph_compiled_as_built_keeps_its_weights():
    graph = driver.load_forward(nets.mlp(), (4, 3, 2, 2))
    model = driver.compile_training_graph(graph)
    assert model._artifact is not None and model.graph.inputs == graph.inputs
    plan = pipeline(graph, variant=AS_BUILT)
    assert plan.variant.runtime_weights
    # no folding or fusion: every weight is still the graph's constant, every op still there
    assert [op.kind for op in plan.order] == [op.kind for op in graph.ops()]
    x = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)
    np.testing.assert_allclose(model(x), run_reference(graph, {graph.inputs[0]: x})[graph.outputs[0]],
                               rtol=1e-5, atol=1e-6)
