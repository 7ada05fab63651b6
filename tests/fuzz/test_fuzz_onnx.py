"""Fuzzing the ONNX frontend with seeded mutants of a small valid model (tests/fuzz/onnx_mutants.py).

Every mutant must either compile, run and match onnxruntime (when onnxruntime accepts it too), or
raise a ConvcError with a clear message. The mutants run in child processes, many per child, so a
crash or a hang is a failure naming the mutant, not a dead test run; after a crash the next child
starts at the following mutant. A failure prints the seed, the mutant's number and what was
changed, and the command that checks that mutant alone.

The CI test checks a few hundred mutants in seconds; ``test_fuzz_long`` (slow) checks thousands
(``CONVC_FUZZ_MUTANTS``, default 3000) from ``CONVC_FUZZ_SEED`` (default 1): set another seed to
look at other mutants locally.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from onnx_mutants import base_model, compare, make_mutant, run_onnxruntime

import convc

WORKER = Path(__file__).with_name("onnx_mutants.py")
FAILURES = ("foreign", "unclear", "mismatch", "crash", "hang")
SECONDS_PER_MUTANT = 2.0  # the hang limit of a child, per mutant it checks (most take milliseconds)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(CONVC_NO_CACHE="1",  # every mutant is compiled, never served from a cache
               CONVC_MAX_BYTES="64M",  # huge-but-allowed shapes are refused quickly rather than computed
               OMP_NUM_THREADS="1")
    return env


def _start(seed: int, first: int, count: int, scratch: Path) -> subprocess.Popen:
    scratch.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, str(WORKER), "--seed", str(seed), "--first", str(first),
                             "--count", str(count), "--scratch", str(scratch)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            cwd=scratch, env=_child_env())


def _collect(proc: subprocess.Popen, first: int, count: int) -> tuple[dict[int, dict], int]:
    """The records of one child, and the first mutant it did not get to (``first + count`` when done).

    A mutant the child started but never finished (it crashed or hung) gets a failure record."""
    try:
        out, err = proc.communicate(timeout=60 + SECONDS_PER_MUTANT * count)
        hung = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        hung = True
    records: dict[int, dict] = {}
    current, phase = None, None
    for line in out.splitlines():
        r = json.loads(line)
        if r["phase"] == "done":
            records[r["index"]] = r
            current = None
        else:
            current, phase = r["index"], r["phase"]
    if current is None:
        return records, first + count
    if hung:
        outcome, error = "hang", f"no result after {60 + SECONDS_PER_MUTANT * count:.0f} s"
    else:
        rc = proc.returncode
        name = signal.Signals(-rc).name if rc < 0 and -rc in signal.Signals._value2member_map_ else f"status {rc}"
        outcome, error = "crash", f"the child process died ({name}); stderr: {err[-1500:]}"
    if phase == "onnxruntime":  # convc compiled and ran it; the oracle died
        outcome = "onnxruntime died"
    records[current] = {"index": current, "outcome": outcome, "error": error}
    return records, current + 1


def run_mutants(seed: int, count: int, scratch: Path, children: int = 2) -> dict[int, dict]:
    """Check mutants 0..count-1 of ``seed`` in ``children`` parallel child processes."""
    size = -(-count // children)
    pending = [(first, min(size, count - first)) for first in range(0, count, size)]
    records: dict[int, dict] = {}
    while pending:
        running = [(_start(seed, first, n, scratch / f"child{first}"), first, n) for first, n in pending]
        pending = []
        for proc, first, n in running:
            got, resume = _collect(proc, first, n)
            records.update(got)
            if resume < first + n:  # it died: go on with the mutants after the one that killed it
                pending.append((resume, first + n - resume))
    return records


def failures_report(seed: int, records: dict[int, dict]) -> list[str]:
    lines = []
    for i, r in sorted(records.items()):
        if r["outcome"] in FAILURES:
            what = r.get("what") or make_mutant(seed, i)[1]
            lines.append(f"seed {seed} mutant {i} ({what}): {r['outcome']}: {r['error'].strip()[-1200:]}\n"
                         f"  check it alone: python {WORKER} --seed {seed} --only {i} --verbose")
    return lines


def check(seed: int, count: int, scratch: Path) -> Counter:
    records = run_mutants(seed, count, scratch)
    assert sorted(records) == list(range(count)), "some mutants were never checked"
    failures = failures_report(seed, records)
    assert not failures, f"{len(failures)} of {count} mutants failed:\n" + "\n".join(failures)
    outcomes = Counter(r["outcome"] if r["outcome"] != "compiled" else ("compared" if r["compared"] else "compiled")
                       for r in records.values())
    print(f"seed {seed}, {count} mutants: {dict(outcomes)}")
    return outcomes


def test_base_model_compiles_and_matches_onnxruntime():
    """The fuzzer's starting point is valid: otherwise every mutant would be 'refused' and prove nothing."""
    data = base_model().SerializeToString()
    model = convc.compile(data, threads=1, cache=False)
    rng = np.random.default_rng(0)
    feeds = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in model.inputs}
    ours = model.run(feeds)
    theirs = run_onnxruntime(data, feeds, list(ours))
    assert theirs is not None and compare(ours, theirs) == {"outcome": "compiled", "compared": True}


@pytest.mark.slow
def test_fuzz_mutants(tmp_path):
    """300 mutants (seed 0): a crash, a hang, a foreign exception, an unclear message or a result
    that differs from onnxruntime fails with the mutant's seed, number and description."""
    outcomes = check(0, 300, tmp_path)
    # the mix is deterministic for the seed: both outcomes must be well represented, or the
    # mutants stopped testing anything (say, a base model convc refuses)
    assert outcomes["refused"] >= 100 and outcomes["compared"] >= 20, outcomes


@pytest.mark.slow
def test_fuzz_long(tmp_path):
    """Thousands of mutants, for local runs: CONVC_FUZZ_MUTANTS (default 3000), CONVC_FUZZ_SEED (default 1)."""
    seed = int(os.environ.get("CONVC_FUZZ_SEED", "1"))
    count = int(os.environ.get("CONVC_FUZZ_MUTANTS", "3000"))
    check(seed, count, tmp_path)


@pytest.mark.slow
def test_a_crashing_mutant_is_reported_and_the_rest_still_run(tmp_path, monkeypatch):
    """The harness itself: a child killed by a signal mid-mutant names that mutant as a crash, and
    the mutants after it are still checked, in a new child."""
    real_start = _start

    class Killed:
        """A child killed (SIGKILL) as it started mutant 2: what it printed until then."""

        def __init__(self, proc: subprocess.Popen):
            self.lines = []
            while not self.lines or json.loads(self.lines[-1]) != {"index": 2, "phase": "start"}:
                self.lines.append(proc.stdout.readline())
            proc.kill()
            proc.communicate()
            self.returncode = proc.returncode

        def communicate(self, timeout=None):
            return "".join(self.lines), "killed on purpose"

    def start(seed, first, count, scratch):
        proc = real_start(seed, first, count, scratch)
        return Killed(proc) if first == 0 else proc
    monkeypatch.setattr(sys.modules[__name__], "_start", start)
    records = run_mutants(0, 6, tmp_path, children=1)
    assert sorted(records) == list(range(6))
    assert records[2]["outcome"] == "crash" and "SIGKILL" in records[2]["error"]
    assert all(records[i]["outcome"] in ("refused", "compiled") for i in (0, 1, 3, 4, 5))
    assert "seed 0 mutant 2 (" in failures_report(0, records)[0]
