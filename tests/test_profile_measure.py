"""``convc profile --measure``: the total and the rows come from the same runs (they add up), and a
measurement taken under load is timed again, then flagged, instead of being reported as if clean."""
from __future__ import annotations

import importlib
import json

import onnx
import pytest
from convc.codegen import peak

import convc
from convc.cli import main
from convc.models import lenet5

profile_module = importlib.import_module("convc.profile")  # the module (convc.profile is the function)
QUIET_PEAK = peak.Peak(100.0, 190.0, 2, "cpu")


@pytest.fixture
def lenet_file(tmp_path):
    path = tmp_path / "lenet.onnx"
    onnx.save(lenet5(batch=1), str(path))
    return path


class FakeLoad:
    """peak.OtherLoad reporting what a test sets: the other processes' share of the cores."""
    share = 0.0

    def stop(self) -> float:
        return FakeLoad.share


@pytest.fixture(autouse=True)
def no_other_load(monkeypatch):
    """The tests decide whether the machine is loaded, not the processes running beside them."""
    FakeLoad.share = 0.0
    monkeypatch.setattr(peak, "OtherLoad", FakeLoad)


@pytest.fixture
def quiet_peak(monkeypatch):
    monkeypatch.setattr(peak, "peak", lambda refresh=False: QUIET_PEAK)


def test_total_is_the_sum_of_the_rows(lenet_file, quiet_peak):
    p = convc.profile(lenet_file, measure=True, repeats=4)
    assert p.total_seconds == pytest.approx(sum(l.seconds for l in p.layers))
    assert sum(p.share(l) for l in p.layers) == pytest.approx(1.0)
    top = p.top(3)
    assert sum(p.share(l) for l in top) >= 3 / len(p.layers)  # the costliest layers hold at least their share


def test_noisy_runs_are_timed_again_then_flagged(lenet_file, quiet_peak, monkeypatch, capsys):
    spreads = []

    def loaded(totals):
        spreads.append(len(totals))
        return 0.6

    monkeypatch.setattr(profile_module, "_spread", loaded)
    assert main(["profile", str(lenet_file), "--measure", "--repeat", "4", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert spreads == [4, 4], "a second round of runs"
    d = json.loads(out)
    assert d["warnings"] and "measured under load" in d["warnings"][0] and "60%" in d["warnings"][0]
    assert "convc: warning: measured under load" in err and "timing again" in err
    assert d["totals"]["seconds"] == pytest.approx(sum(l["seconds"] for l in d["layers"]))


def test_runs_beside_other_processes_are_timed_again_then_flagged(lenet_file, quiet_peak, monkeypatch, capsys):
    """The runs may agree with each other while another process holds a core: /proc/stat tells."""
    monkeypatch.setattr(profile_module, "_spread", lambda totals: 0.0)
    FakeLoad.share = 0.5
    assert main(["profile", str(lenet_file), "--measure", "--repeat", "2", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    d = json.loads(out)
    assert "other processes used 50% of the cores meanwhile: timing again" in err
    assert any(w.startswith("measured under load: other processes used 50%") for w in d["warnings"])
    FakeLoad.share = 0.0
    assert main(["profile", str(lenet_file), "--measure", "--repeat", "2", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warnings"] == [] and "timing again" not in err


def test_a_noisy_peak_is_flagged_in_the_report(lenet_file, monkeypatch, capsys):
    noisy = peak.Peak(260.9, 257.8, 2, "cpu", noisy="measured under load, not cached: the 2-core peak ...")
    monkeypatch.setattr(peak, "peak", lambda refresh=False: noisy)
    monkeypatch.setattr(profile_module, "_spread", lambda totals: 0.0)
    assert main(["profile", str(lenet_file), "-q", "--measure", "--repeat", "2"]) == 0
    out, err = capsys.readouterr()
    assert "warning: peak measured under load, not cached" in out
    assert "convc: warning: peak measured under load" in err


def test_spread_is_the_interquartile_range_over_the_median():
    assert profile_module._spread([1.0, 1.0, 1.0, 1.0]) == 0.0
    assert profile_module._spread([1.0, 2.0]) == 0.0  # too few runs to tell
    assert profile_module._spread([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0]) < 0.2  # one outlier is not load
    assert profile_module._spread([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0]) > 0.5


def test_a_layer_faster_than_the_cached_peak_measures_the_peak_again(lenet_file, monkeypatch):
    calls = []
    too_low = peak.Peak(0.001, 0.002, 2, "cpu")  # cached under load: every layer beats it

    def fake_peak(refresh=False):
        calls.append(refresh)
        return too_low

    monkeypatch.setattr(peak, "peak", fake_peak)
    monkeypatch.setattr(profile_module, "_spread", lambda totals: 0.0)
    p = convc.profile(lenet_file, measure=True, repeats=2)
    assert calls == [False, True], "measured again"
    assert any("above the measured peak" in w for w in p.warnings)


def test_layers_below_half_the_peak_are_marked(lenet_file, monkeypatch, capsys):
    fast_machine = peak.Peak(1e6, 2e6, 2, "cpu")  # every layer is far below it
    monkeypatch.setattr(peak, "peak", lambda refresh=False: fast_machine)
    monkeypatch.setattr(profile_module, "_spread", lambda totals: 0.0)
    p = convc.profile(lenet_file, measure=True, repeats=2)
    with_macs = [l for l in p.layers if l.macs]
    assert with_macs and all(p.is_slow(l) for l in with_macs)
    assert not any(p.is_slow(l) for l in p.layers if not l.macs), "memory-bound layers are not FMA work"
    d = p.to_dict()
    assert [l["below_half_peak"] for l in d["layers"]] == [bool(l.macs) for l in p.layers]
    text = str(p)
    marked = [line for line in text.splitlines() if line.rstrip().endswith("%!")]
    assert len(marked) == len(with_macs)
    assert f"! below 50% of the 2-core FMA peak: {len(with_macs)} layers with MACs" in text
    assert "below_half_peak" in p.to_csv().splitlines()[0]


def test_layers_at_the_peak_are_not_marked(lenet_file, monkeypatch):
    slow_machine = peak.Peak(0.001, 0.002, 2, "cpu")  # every layer beats it (a warning says so)
    monkeypatch.setattr(peak, "peak", lambda refresh=False: slow_machine)
    monkeypatch.setattr(profile_module, "_spread", lambda totals: 0.0)
    p = convc.profile(lenet_file, measure=True, repeats=2)
    assert not any(p.is_slow(l) for l in p.layers)
    assert "%!" not in str(p) and "below 50%" not in str(p)


def test_each_runs_layers_fit_in_its_wall_time(lenet_file, quiet_peak, monkeypatch):
    """The kernels' stamps and the caller's clock are one clock: per run the layers add up to no more
    than the run took (a clock converted wrongly, or a kernel timed on the wrong thread, breaks it)."""
    monkeypatch.setattr(profile_module, "_spread", lambda totals: 0.0)
    seen = []
    real = profile_module._coverage_warnings

    def spy(sums, walls):
        seen.append(list(zip(sums, walls)))
        return real(sums, walls)

    monkeypatch.setattr(profile_module, "_coverage_warnings", spy)
    p = convc.profile(lenet_file, measure=True, repeats=4)
    (pairs,) = seen
    assert len(pairs) == 4 and all(0 < layers <= wall for layers, wall in pairs)
    assert not any("per-layer times are wrong" in w for w in p.warnings)
    assert p.wall_seconds >= min(wall for _, wall in pairs) and p.to_dict()["totals"]["wall_seconds"] == p.wall_seconds
    assert "as the caller timed it" in str(p)


def test_layers_longer_than_their_run_are_reported_wrong():
    (w,) = profile_module._coverage_warnings([0.005, 0.004], [0.0045, 0.0050])  # 5.0 ms of layers in a 4.5 ms run
    assert w.startswith("per-layer times are wrong: the layers of 1 of 2 runs add up to more than the run took")
    assert "5.000 ms in a 4.500 ms run" in w


def test_time_in_no_layer_is_reported():
    sums = [0.010] * 3
    assert profile_module._coverage_warnings(sums, [0.0105] * 3) == []  # 0.5 ms: call overhead
    assert profile_module._coverage_warnings([2e-5] * 3, [5e-4] * 3) == []  # a tiny model's overhead
    (w,) = profile_module._coverage_warnings(sums, [0.020] * 3)
    assert w == "the layers hold 10.000 ms of a 20.000 ms run (medians): 10.000 ms of each run is in no layer"


def test_a_layer_run_as_two_kernels_holds_both_times(lenet_file, quiet_peak, monkeypatch):
    """LeNet's first conv runs as two kernels: the input's layout change, then the conv. The layer's
    time is their sum in each run, never one of them (the layout change alone, charged with the
    conv's MACs, read as 2-3x this machine's peak for MobileNetV2's stem at batch 16)."""
    from convc.model import CompiledModel
    real = CompiledModel.run_timed
    layout_change, rest = 1e-3, 10e-3

    def made_up_times(self, feeds):
        outs, times = real(self, feeds)
        return outs, {k: layout_change if k.endswith("_to_nhwc") else rest for k in times}

    monkeypatch.setattr(CompiledModel, "run_timed", made_up_times)
    monkeypatch.setattr(profile_module, "_spread", lambda totals: 0.0)
    p = convc.profile(lenet_file, measure=True, repeats=3)
    conv1 = next(l for l in p.layers if l.name == "conv1")
    assert conv1.kernels == (("input_to_nhwc", layout_change), ("conv1", rest))
    assert conv1.seconds == pytest.approx(layout_change + rest)
    assert conv1.gflops_per_second == pytest.approx(conv1.flops / (layout_change + rest) / 1e9)
    kernels = [k for l in p.layers for k, _ in l.kernels]
    assert len(kernels) == len(set(kernels)), "each kernel's time is in one layer"
    assert p.total_seconds == pytest.approx(sum(s for l in p.layers for _, s in l.kernels))
    assert p.to_dict()["layers"][0]["kernels"] == [{"name": "input_to_nhwc", "seconds": layout_change},
                                                   {"name": "conv1", "seconds": rest}]
