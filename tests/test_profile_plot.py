"""``convc profile --plot``: layer axes numbered from 1 like the table, with names; the time panel's
title is the sum of its bars; the memory axis in a unit that suits the model; a legend that covers
no line."""
from __future__ import annotations

import dataclasses

import pytest

import convc
from convc.models import lenet5
from convc.report_plot import byte_unit, plot, plot_figure, time_unit

pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def figure():
    import matplotlib.pyplot as plt
    p = convc.profile(lenet5(batch=1))
    layers = [dataclasses.replace(l, seconds=1e-5 * (i + 1)) for i, l in enumerate(p.layers)]
    p = dataclasses.replace(p, layers=layers, total_seconds=sum(l.seconds for l in layers))
    fig = plot_figure(p)
    fig.canvas.draw()
    yield p, fig
    plt.close(fig)


def test_layer_axes_number_from_one_with_names(figure):
    p, fig = figure
    assert len(fig.axes) == 3
    for ax in fig.axes[:2]:
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels[0] == "#1 conv1" and labels[-1] == f"#{len(p.layers)} softmax"
        assert "# as in the table" in ax.get_xlabel()


def test_time_title_is_the_sum_of_its_bars(figure):
    _, fig = figure
    bars = sum(patch.get_height() for patch in fig.axes[1].patches)
    unit = fig.axes[1].get_ylabel()
    assert unit == "µs", "a 0.45 ms model in µs, not bars of 0.00001 ms"
    assert f"{bars:.3g} {unit}" in fig.axes[1].get_title() and "sum" in fig.axes[1].get_title()
    assert time_unit(2.5) == (1.0, "s") and time_unit(0.02) == (1e3, "ms") and time_unit(5e-4) == (1e6, "µs")


def test_png_and_svg_are_written(figure, tmp_path):
    p, _ = figure
    for name in ("profile.png", "profile.svg"):
        plot(p, tmp_path / name)
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = (tmp_path / "profile.svg").read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg and "</svg>" in svg


def test_memory_axis_unit_and_legend(figure):
    p, fig = figure
    ax = fig.axes[2]
    assert ax.get_ylabel() == "KiB"  # a 23 KiB arena, not 0.02 MiB
    assert ax.get_ylim()[1] == pytest.approx(1.1 * p.memory.arena_bytes / 1024)
    legend = ax.get_legend().get_window_extent()
    assert legend.y1 <= ax.get_window_extent().y0, "the legend sits below the axes, covering no line"
    assert byte_unit(500) == (1, "B") and byte_unit(3 << 20) == (1 << 20, "MiB")


@pytest.mark.slow  # builds a training step and draws two files: 6 s beside another run
def test_training_plot(tmp_path):
    """convc profile --train --plot: forward and backward MACs stacked per layer, the phases' times
    summing to the title's figure, the step's memory by kind; PNG and SVG."""
    import matplotlib.pyplot as plt

    from convc.report_plot import plot_train, plot_train_figure
    p = convc.profile(lenet5(batch=1), train=True)
    layers = [dataclasses.replace(l, seconds={"forward": 1e-5, "backward": 2e-5, "update": 1e-6 * i})
              for i, l in enumerate(p.layers)]
    p = dataclasses.replace(p, layers=layers, step_seconds=1e-3)
    fig = plot_train_figure(p)
    fig.canvas.draw()
    try:
        macs, times, memory = fig.axes
        labels = [t.get_text() for t in macs.get_xticklabels()]
        assert labels[0] == "#1 conv1" and labels[-1] == f"#{len(p.layers)} fc3"
        heights = sum(patch.get_height() for patch in macs.patches)
        assert heights == pytest.approx(p.total_macs / 1e6)
        unit = times.get_ylabel()
        bars = sum(patch.get_height() for patch in times.patches)
        assert unit == "µs" and f"the bars sum to {bars:.3g} µs" in times.get_title()
        assert "parameter gradients" in [t.get_text() for t in memory.get_yticklabels()]
    finally:
        plt.close(fig)
    for name in ("train.png", "train.svg"):
        plot_train(p, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 1000
