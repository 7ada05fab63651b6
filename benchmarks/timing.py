"""Fair timing of two runtimes in one process on a shared, noisy machine.

The runtimes alternate in blocks of calls. Each block starts with a busy pause and an untimed
call: a runtime's idle worker threads keep spinning after a call (onnxruntime's and OpenBLAS's for
tens of milliseconds) and would halve a multi-threaded call of the other that starts sooner, and a
sleeping pause instead lets this VM's cores clock down, so the next calls run slowly for
milliseconds. A block times at least BLOCK calls and at least BLOCK_SECONDS of calls, so that
sub-millisecond models get enough samples for a stable median.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

BLOCK = 3
BLOCK_SECONDS = 0.01
SETTLE = 0.15  # s: onnxruntime's idle workers spin for 20-100 ms after a run


def settle() -> None:
    """Wait SETTLE seconds on a busy core."""
    end = time.perf_counter() + SETTLE
    while time.perf_counter() < end:
        pass


def interleaved_medians(runs: Sequence[Callable[[], object]], blocks: int) -> list[float]:
    """Median seconds per call of each of ``runs``, timed in ``blocks`` alternating blocks."""
    t0 = time.perf_counter()
    for _ in range(3):  # warm up every runtime
        for run in runs:
            run()
    per_round = (time.perf_counter() - t0) / (3 * len(runs))
    calls = max(BLOCK, int(BLOCK_SECONDS / max(per_round, 1e-9)))
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(max(1, blocks)):
        for run, samples in zip(runs, times):
            settle()
            run()
            for _ in range(calls):
                t = time.perf_counter()
                run()
                samples.append(time.perf_counter() - t)
    return [statistics.median(samples) for samples in times]
