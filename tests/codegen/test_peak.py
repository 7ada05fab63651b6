"""The machine's FMA peak: measured by a JIT-compiled loop, cached per machine."""
from __future__ import annotations

import json
import re

from convc.codegen import peak


def test_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path))
    calls = []
    real = peak.measure

    def counting(*a, **k):
        calls.append(1)
        return real(seconds=0.001, repeats=3)

    monkeypatch.setattr(peak, "measure", counting)
    first = peak.peak()
    assert first.single_core_gflops > 1 and first.all_core_gflops > 0 and first.cores >= 1
    assert peak.peak() == first and len(calls) == 1, "the second call reads the cache"
    cached = json.loads((tmp_path / "peak.json").read_text())
    assert cached["peak"]["single_core_gflops"] == first.single_core_gflops

    cached["key"] = "another machine"
    (tmp_path / "peak.json").write_text(json.dumps(cached))
    peak.peak()
    assert len(calls) == 2, "a cache from another CPU is measured again"
    assert first.percent(first.single_core_gflops) == 100.0


def test_fma_loop_ir_uses_vector_fma():
    text = peak.fma_loop_ir()
    assert "llvm.fma.v16f32" in text
    assert len(re.findall(r"= phi\s+<16 x float>", text)) == peak.ACCUMULATORS
