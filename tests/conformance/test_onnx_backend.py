"""The ONNX project's own conformance cases, run through convc.backend.

- node cases: ``onnx.backend.test.case.node.collect_testcases()`` (the operator tests shipped with onnx);
- model cases: every model under onnx/backend/test/data/pytorch-converted and pytorch-operator, with
  its test_data_set_0;
- the nine light models under onnx/backend/test/data/light, fed the input onnx's runner feeds them
  (``arange(n) / n``) and compared with the output stored next to them.

A case runs when convc claims every op of its graph (a converter is registered for it, or it is
Constant or ConstantOfShape); otherwise it skips with one "not claimed" reason (conftest.py tallies the
unclaimed ops). A case of claimed ops runs and must pass
unless exclusions.py lists it with a reason. Outputs are compared as onnx's runner does: shape,
dtype, then ``assert_allclose`` with the case's rtol/atol (1e-3/1e-7 unless the case says otherwise).
conftest.py prints the counts at the end of the session.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from exclusions import EXCLUDED
from onnx import numpy_helper

import convc.backend
from convc.frontend.onnx import CONVERTERS

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
MODEL_KINDS = ("pytorch-converted", "pytorch-operator")
LIGHT = sorted(p.name[len("light_"):-len(".onnx")] for p in (DATA / "light").glob("light_*.onnx"))
RTOL, ATOL = 1e-3, 1e-7  # onnx.backend.test.loader's defaults for model cases

# ops convc compiles (a converter exists), plus the sources whose output never depends on run-time data and
# always folds at import (the light models make their weights with ConstantOfShape)
CLAIMED = frozenset(CONVERTERS.op_types()) | {"Constant", "ConstantOfShape"}


def ops_of(graph: onnx.GraphProto) -> set[str]:
    """Op types of a graph and its subgraphs (a domain other than the default one makes the op unclaimed)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}")
        for attr in node.attribute:
            for g in [attr.g] if attr.HasField("g") else list(attr.graphs):
                ops |= ops_of(g) | {"<subgraph>"}
    return ops


UNCLAIMED = "not claimed: the graph uses an op convc does not compile"


def skip_unless_relevant(request: pytest.FixtureRequest, name: str, graph: onnx.GraphProto) -> None:
    """Skip by rule when an op is unclaimed (conftest.py tallies which), or when exclusions.py lists the case."""
    unclaimed = sorted(ops_of(graph) - CLAIMED)
    if unclaimed:
        request.node.user_properties.append(("unclaimed", unclaimed))
        pytest.skip(UNCLAIMED)
    if name in EXCLUDED:
        pytest.skip(f"excluded: {EXCLUDED[name]}")


def as_array(value) -> np.ndarray:
    """A test data value as numpy (the case generators keep exotic dtypes as TensorProto)."""
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def assert_outputs(got, expected, rtol: float, atol: float) -> None:
    assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
    for i, (g, e) in enumerate(zip(got, expected)):
        g, e = np.asarray(g), np.asarray(e)
        assert g.shape == e.shape, f"output {i}: shape {g.shape}, expected {e.shape}"
        assert g.dtype == e.dtype, f"output {i}: dtype {g.dtype}, expected {e.dtype}"
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"output {i}")


# --- node cases ---------------------------------------------------------------------------------
@functools.cache
def node_cases() -> dict:
    from onnx.backend.test.case.node import collect_testcases
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow casts on purpose
        return {case.name: case for case in collect_testcases("")}


def _node_names() -> list[str]:
    return sorted(node_cases())


@pytest.mark.parametrize("name", _node_names())
def test_node(request, name):
    case = node_cases()[name]
    skip_unless_relevant(request, name, case.model.graph)
    rep = convc.backend.prepare(case.model, threads=1)  # tiny graphs: no worker threads
    for inputs, outputs in case.data_sets:
        assert_outputs(rep.run([as_array(x) for x in inputs]), [as_array(y) for y in outputs], case.rtol, case.atol)


# --- model cases (pytorch-converted, pytorch-operator) ------------------------------------------
def _model_dirs() -> list[Path]:
    return sorted(d for kind in MODEL_KINDS for d in (DATA / kind).iterdir() if (d / "model.onnx").exists())


def _tensors(files: list[Path]) -> list[np.ndarray]:
    return [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in files]


@pytest.mark.parametrize("case_dir", _model_dirs(), ids=lambda d: d.name)
def test_model(request, case_dir):
    model = onnx.load(str(case_dir / "model.onnx"))
    skip_unless_relevant(request, case_dir.name, model.graph)
    rep = convc.backend.prepare(model, threads=1)
    for data in sorted(case_dir.glob("test_data_set*")):
        inputs = _tensors(sorted(data.glob("input_*.pb"), key=lambda p: int(p.stem.split("_")[1])))
        outputs = _tensors(sorted(data.glob("output_*.pb"), key=lambda p: int(p.stem.split("_")[1])))
        assert_outputs(rep.run(inputs), outputs, RTOL, ATOL)


# --- the light models ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT)
def test_light_model(request, name):
    model = onnx.load(str(DATA / "light" / f"light_{name}.onnx"))
    skip_unless_relevant(request, f"test_{name}", model.graph)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:  # what onnx's runner feeds: generate_dummy_data(random=False)
        if vi.name not in inits:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = (np.arange(int(np.prod(shape))).reshape(shape) / np.prod(shape)).astype(np.float32)
    expected = _tensors([DATA / "light" / f"light_{name}_output_{i}.pb" for i in range(len(model.graph.output))])
    assert_outputs(convc.backend.prepare(model).run(feeds), expected, RTOL, ATOL)


def test_light_models_are_nine():
    assert len(LIGHT) == 9, LIGHT


# --- the exclusion list itself --------------------------------------------------------------------
def test_exclusions_are_current():
    """Every excluded name is a case whose ops convc claims: no stale entries, no entries the rule covers."""
    graphs = {name: case.model.graph for name, case in node_cases().items()}
    graphs |= {d.name: onnx.load(str(d / "model.onnx"), load_external_data=False).graph for d in _model_dirs()}
    unknown = sorted(n for n in EXCLUDED if n not in graphs)
    covered_by_rule = sorted(n for n in EXCLUDED if n in graphs and ops_of(graphs[n]) - CLAIMED)
    assert not unknown, f"excluded cases that do not exist: {unknown}"
    assert not covered_by_rule, f"excluded cases of unclaimed ops (the rule skips them already): {covered_by_rule}"
    assert all(reason.strip() for reason in EXCLUDED.values())

