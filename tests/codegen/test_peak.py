"""The machine's FMA peak: measured by a JIT-compiled loop, cached per machine."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from convc.codegen import peak


def test_peak_is_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path))
    calls = []
    real = peak.measure

    def counting(*a, **k):
        calls.append(1)
        p = real(seconds=0.001, repeats=3)
        assert p.single_core_gflops > 1 and p.all_core_gflops > 0 and p.cores >= 1
        return peak.Peak(100.0, 100.0 * p.cores, p.cores, p.cpu)  # a quiet machine's figures

    monkeypatch.setattr(peak, "measure", counting)
    first = peak.peak()
    assert first.noisy is None and len(calls) == 2, "two rounds that agree"
    calls.clear()
    assert peak.peak() == first and len(calls) == 0, "the second call reads the cache"
    cached = json.loads((tmp_path / "peak.json").read_text())
    assert cached["peak"]["single_core_gflops"] == first.single_core_gflops

    cached["key"] = "another machine"
    (tmp_path / "peak.json").write_text(json.dumps(cached))
    peak.peak()
    assert len(calls) == 2, "a cache from another CPU is measured again"
    assert first.percent(first.single_core_gflops) == 100.0


def test_fma_loop_ir_uses_vector_fma():
    text = peak.fma_loop_ir(8, 12)
    assert "llvm.fma.v8f32" in text
    assert len(re.findall(r"= phi\s+<8 x float>", text)) == 12


def test_the_loop_fits_the_register_file():
    """16 accumulators of 16 floats on AVX2 spilled to the stack: the "peak" came out at 44% of what
    the FMA units do, and profiles put convs at 150% of it. AVX2 gets 12 accumulators of 8 floats,
    AVX-512 16 of 16; the loop compiled for each holds its accumulators in registers (no stack)."""
    from convc.codegen.jit import Target
    import llvmlite.binding as llvm
    from convc.codegen.llvm_worker import optimize, parse, target_machine
    assert peak.loop_shape("+avx,+avx2,+fma") == (8, 12)
    assert peak.loop_shape("+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512dq") == (16, 16)
    host = Target.host()
    for cpu, features in (("znver3", "+avx,+avx2,+fma"), ("znver4", "+avx,+avx2,+fma,+avx512f,+avx512bw,+avx512vl,+avx512dq")):
        tm = target_machine(host.triple, cpu, features)
        mod = parse(peak.fma_loop_ir(*peak.loop_shape(features)), host.triple, tm)
        optimize(mod, tm)
        lines = tm.emit_assembly(mod).splitlines()
        start = next(i for i, line in enumerate(lines) if "vfmadd" in line)
        end = next(i for i in range(start, len(lines)) if lines[i].startswith("\tj"))
        loop = lines[start:end]
        assert sum("vfmadd" in line for line in loop) >= peak.loop_shape(features)[1], cpu
        assert not any("rsp" in line for line in loop), (cpu, loop)  # no spill in the loop
    # the failing shape: 16 x 16 floats on AVX2 spills
    tm = target_machine(host.triple, "znver3", "+avx,+avx2,+fma")
    mod = parse(peak.fma_loop_ir(16, 16), host.triple, tm)
    optimize(mod, tm)
    assert "rsp" in tm.emit_assembly(mod).split("vfmadd", 1)[1]


def test_a_noisy_peak_is_measured_again_and_never_cached(tmp_path, monkeypatch):
    """Under load the 2-core figure came out below the 1-core one, was cached, and every later
    "% of peak" was wrong."""
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path))
    loaded = [peak.Peak(260.9, 257.8, 2, "cpu"), peak.Peak(250.0, 240.0, 2, "cpu")]
    figures = iter(loaded * peak.ATTEMPTS)
    monkeypatch.setattr(peak, "measure", lambda *a, **k: next(figures))
    noisy = peak.peak()
    assert noisy.noisy and "below the 1-core peak" in noisy.noisy and noisy.single_core_gflops == 260.9
    assert not (tmp_path / "peak.json").exists()

    rounds = iter([peak.Peak(100.0, 150.0, 2, "cpu"), peak.Peak(70.0, 140.0, 2, "cpu"),   # disagree
                   peak.Peak(100.0, 190.0, 2, "cpu"), peak.Peak(98.0, 195.0, 2, "cpu")])  # agree
    monkeypatch.setattr(peak, "measure", lambda *a, **k: next(rounds))
    quiet = peak.peak()
    assert quiet == peak.Peak(100.0, 195.0, 2, "cpu")
    assert json.loads((tmp_path / "peak.json").read_text())["peak"]["single_core_gflops"] == 100.0
    assert peak.noise(peak.Peak(100.0, 150.0, 2, "cpu"), peak.Peak(70.0, 140.0, 2, "cpu")).startswith("two rounds")


def test_a_peak_measured_beside_other_processes_is_not_cached(tmp_path, monkeypatch):
    """The 2-core figure can come out just above the 1-core one while another process holds a core
    (42.9 and 43.1 GFLOP/s were cached that way): the other processes' CPU time gives it away."""
    monkeypatch.setenv("CONVC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(peak, "measure", lambda *a, **k: peak.Peak(42.9, 43.1, 2, "cpu", others=0.5))
    p = peak.peak()
    assert p.noisy and "other processes used 50% of the 2 core(s)" in p.noisy
    assert not (tmp_path / "peak.json").exists()
    monkeypatch.setattr(peak, "measure", lambda *a, **k: peak.Peak(43.0, 85.0, 2, "cpu", others=0.02))
    assert peak.peak().noisy is None and (tmp_path / "peak.json").exists()


def test_other_load_sees_a_busy_process():
    import subprocess
    import sys
    import time
    if not Path("/proc/stat").exists():
        pytest.skip("/proc/stat is Linux's")
    load = peak.OtherLoad()
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 0.6: pass"])
    time.sleep(0.6)
    spin.wait()
    busy = load.stop()
    cores = len(load.cpus)
    assert busy >= 0.5 / cores, busy  # one core of the process's cores, less start-up
    assert 0.0 <= busy <= 1.0
