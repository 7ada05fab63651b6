"""One model on one runtime, alone in a process: what benchmarks/models.py and benchmarks/int8.py
run in their worker subprocesses (each runtime in its own process: a peer's spinning threads next
to another's distort both).

``session(kind, path, threads, batch)`` compiles the model on convc, onnxruntime or OpenVINO
(``ov_precision``: "f32" forces OpenVINO's float32, None keeps its default, bf16 on CPUs with it);
``time_calls`` runs it after a warm-up for at least ``seconds`` and 5 calls, and ``measure`` runs a
benchmark script's ``--worker`` mode in a fresh process and reads back its JSON line.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np


def session(kind: str, path: str, threads: int, batch: int,
            ov_precision: str | None = None) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """(run(x) -> the first output, the precision it runs at) for ``kind`` in convc, ort, ov."""
    if kind == "convc":
        import convc
        compiled = convc.compile(path, threads=threads, batch=batch)
        name = compiled.inputs[0].name
        return (lambda x: next(iter(compiled.run({name: x}).values()))), "f32"
    if kind == "ort":
        import onnxruntime as ort
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        return (lambda x: sess.run(None, {name: x})[0]), "f32"
    if kind != "ov":
        raise ValueError(f"unknown runtime {kind!r}")
    import openvino as ov
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    if ov_precision is not None:
        config["INFERENCE_PRECISION_HINT"] = ov_precision
    compiled = ov.Core().compile_model(path, "CPU", config)
    precision = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    request = compiled.create_infer_request()
    return (lambda x: request.infer([x])[0].copy()), precision


def time_calls(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, seconds: float) -> dict:
    """Median seconds per call after 3 warm-up calls, over at least ``seconds`` and 5 calls."""
    for _ in range(3):
        run(x)
    samples: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(samples) < 5:
        t = time.perf_counter()
        run(x)
        samples.append(time.perf_counter() - t)
    return {"median": statistics.median(samples), "calls": len(samples)}


def measure(script: str, runtime: str, path: str, threads: int, batch: int, seconds: float, out: str) -> dict:
    """``script --worker runtime path threads batch seconds out`` in a fresh process: its last JSON
    line, or {"error": its last line of stderr}."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, script, "--worker", runtime, path, str(threads), str(batch),
                           str(seconds), out], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(lines[-1])


def has_openvino() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True
