"""The rich profile table fits an 80 or 100 column terminal without breaking a word: fused op names
abbreviated, optional columns left out (and said so), long layer names ellipsized."""
from __future__ import annotations

import dataclasses
import io
import re

import numpy as np
import pytest
from convc.codegen.peak import Peak

import convc
from convc.report import _by_op_rows, _columns, _row, _total_row, abbreviate_op, fit_columns, render_rich

pytest.importorskip("rich")


def long_named_resnet():
    """tests/test_profile.py's small ResNet with the long node names of a torchvision export."""
    from test_profile import small_resnet_model
    model = small_resnet_model(np.random.default_rng(0))
    for node in model.graph.node:
        node.name = f"features.denseblock3.denselayer12.{node.name}"
    return model


def measured(p):
    """The profile as --measure fills it (made up times, so the test compiles nothing)."""
    layers = [dataclasses.replace(l, seconds=1e-4 * (i + 1)) for i, l in enumerate(p.layers)]
    return dataclasses.replace(p, layers=layers, total_seconds=sum(l.seconds for l in layers),
                               peak=Peak(123.4, 234.5, 2, "skylake-avx512"))


@pytest.fixture(scope="module")
def profiles():
    plain = convc.profile(long_named_resnet())
    return {"plain": plain, "measured": measured(plain)}


def render(p, width, **kw) -> str:
    buf = io.StringIO()
    render_rich(p, file=buf, width=width, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("kind", ["plain", "measured"])
@pytest.mark.parametrize("by_op", [False, True])
def test_table_fits_without_breaking_words(profiles, width, kind, by_op):
    p = profiles[kind]
    out = render(p, width, by_op=by_op, top=5 if kind == "measured" else None)
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    if by_op:
        cols, rows = _by_op_rows(p, 5 if kind == "measured" else None)
        rows = [[abbreviate_op(c) for c in r] for r in rows]
    else:
        top = p.top(5) if kind == "measured" else p.layers
        index = {l.name: i for i, l in enumerate(p.layers, 1)}
        cols = _columns(p)
        rows = [_row(p, index[l.name], l, 32) for l in top] + [_total_row(p)]
        rows = [r[:2] + [abbreviate_op(r[2])] + r[3:] for r in rows]
    keep, widths = fit_columns(cols, rows, width)
    assert len(keep) >= 5
    table_lines = [line for line in lines if line.startswith(("┃", "│"))]
    for k, w in zip(keep, widths):
        for word in cols[k][0].split():  # headers wrap between words only
            assert any(re.search(rf"(^|[\s┃]){re.escape(word)}($|[\s┃])", line) for line in table_lines), word
        if cols[k][0] in ("layer", "as (fused layers)"):
            continue  # long names are ellipsized (checked below)
        for r in rows:
            assert not r[k] or any(r[k] in line for line in table_lines), (cols[k][0], r[k])
    left_out = [cols[k][0] for k in range(len(cols)) if k not in keep]
    assert ("left out to fit" in out) == bool(left_out)
    for name in left_out:
        assert name in " ".join(out.split("left out to fit")[1].split())
    if not by_op and kind == "plain":
        assert "Conv+BN+Relu" in out and "BatchNormalization" not in out
        assert any("features.den…" in line or "…" in line for line in table_lines)  # ellipsized, not wrapped


def test_wide_terminal_keeps_every_column(profiles):
    out = render(profiles["measured"], 250)
    assert "left out" not in out and "other" in out and "2-core" in out


@pytest.fixture(scope="module")
def train_profiles():
    """The training profile of the long-named ResNet, plain and with made-up times."""
    from test_profile import small_resnet_model
    plain = convc.profile(small_resnet_model(np.random.default_rng(0)), train=True)
    for l in plain.layers:
        object.__setattr__(l, "name", f"features.denseblock3.denselayer12.{l.name}")
    timed = dataclasses.replace(plain, step_seconds=1e-3, layers=[
        dataclasses.replace(l, seconds={"forward": 1e-5 * i, "backward": 2e-5 * i, "update": 1e-6 * i})
        for i, l in enumerate(plain.layers, 1)])
    return {"plain": plain, "measured": timed}


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("kind", ["plain", "measured"])
def test_training_table_fits_without_breaking_words(train_profiles, width, kind):
    """convc profile --train on a terminal: the same fitting as the inference table (it used to print
    a 100-150 column plain table that the terminal wrapped inside words)."""
    from convc.report import render_train_rich
    from convc.train_profile import table
    p = train_profiles[kind]
    buf = io.StringIO()
    render_train_rich(p, top=4, file=buf, width=width)
    out = buf.getvalue()
    lines = out.splitlines()
    assert all(len(line) <= width for line in lines), max(lines, key=len)
    table_lines = [line for line in lines if line.startswith(("┃", "│"))]
    names, rows = table(p, 4)
    for column in ("#", "fwd MACs", "bwd MACs") + (("fwd ms", "bwd ms") if kind == "measured" else ()):
        k = names.index(column)
        for word in column.split():
            assert any(re.search(rf"(^|[\s┃]){re.escape(word)}($|[\s┃])", line) for line in table_lines), word
        for r in rows:
            assert any(r[k] in line for line in table_lines), (column, r[k])
    assert any("…" in line for line in table_lines), "long layer names are ellipsized, not wrapped"
    assert "4 costliest of" in " ".join(out.split())
    if "left out to fit" in out:
        assert "--format csv has every column" in " ".join(out.split())
    assert "Memory of the training step" in out and "peak memory of the planned step" in out


def test_training_table_at_a_wide_terminal_keeps_every_column(train_profiles):
    from convc.report import render_train_rich
    buf = io.StringIO()
    render_train_rich(train_profiles["measured"], file=buf, width=250)
    out = buf.getvalue()
    assert "left out" not in out and "grads" in out and "upd" in out
