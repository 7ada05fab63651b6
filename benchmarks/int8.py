"""int8 latency: convc on QDQ models against convc float32, onnxruntime int8 and OpenVINO int8.

    python benchmarks/int8.py [--models resnet18,mobilenet_v2] [--batches 1,16] [--threads 2]
                              [--rounds 3] [--seconds 2] [--runtimes convc-int8,convc-f32,ort-int8,ov-int8]

The models are benchmarks/nets.py's ResNet-18 and MobileNetV2 (torchvision's layer shapes, seeded
weights), quantized by onnxruntime's own ``quantize_static`` (QDQ format, U8S8, per-channel weights,
calibrated on a few seeded random batches): the file every runtime reads is the same. Rows:

- ``convc-int8``: convc compiling the QDQ file (its integer path); "unsupported" when this convc
  cannot compile QDQ models (the reason is printed);
- ``convc-f32``: convc compiling the float model the QDQ file was made from;
- ``ort-int8``: onnxruntime on the QDQ file (all graph optimizations: QLinearConv and friends);
- ``ov-int8``: OpenVINO on the QDQ file with its default precision (its low-precision
  transformations run the QDQ layers in int8), when the ``openvino`` package is installed.

As in benchmarks/models.py, every measurement runs in a fresh process that loads one runtime,
compiles the model and times calls for ``--seconds`` after a warm-up; the runtimes take turns round
after round and each figure is the median over rounds of the per-round median; every runtime gets
the same thread count. Printed per (model, batch): each runtime's median wall time and, in brackets, its
median CPU time per call (the process's, all threads: spinning pool threads count, and on a machine other
work shares it is the steadier figure, though a core shared with another process still inflates it, more
for some kernels than others; the two ratios use it), convc int8 / convc float32
(the issue's target: <= 0.5 at batch 16), convc int8 / the faster peer int8 (target: <= 1.0), and
each int8 runtime's output deviation from onnxruntime's int8 output (max |y - y_ort| / max |y_ort|).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402  (benchmarks/peers.py)

MODELS = ("resnet18", "mobilenet_v2")
RUNTIMES = ("convc-int8", "convc-f32", "ort-int8", "ov-int8")
CALIBRATION_BATCHES = 4


def build(name: str, batch: int, tmp: str) -> tuple[str, str]:
    """(float path, QDQ path) of ``name`` at ``batch``, the QDQ file written by onnxruntime's quantize_static."""
    import nets
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    model = getattr(nets, name)(batch)
    float_path, qdq_path = os.path.join(tmp, f"{name}_b{batch}.onnx"), os.path.join(tmp, f"{name}_b{batch}.qdq.onnx")
    onnx.save(model, float_path)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(1)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.left = CALIBRATION_BATCHES

        def get_next(self):
            if not self.left:
                return None
            self.left -= 1
            return {"x": rng.standard_normal(shape).astype(np.float32)}

    # onnxruntime's recommended pre-processing (shape inference, BatchNormalization folded into the convs)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    pre_path = os.path.join(tmp, f"{name}_b{batch}.pre.onnx")
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process, given even when we did
    quant_pre_process(float_path, pre_path)
    quantize_static(pre_path, qdq_path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return float_path, qdq_path


# ---- one runtime in one process -------------------------------------------------------------------

def worker(runtime: str, path: str, threads: int, batch: int, seconds: float, out: str) -> None:
    try:  # convc-int8 and convc-f32 are convc on the QDQ and the float file (bench passes the path)
        run, _ = peers.session(runtime.split("-")[0], path, threads, batch)
    except Exception as e:  # noqa: BLE001 -- reported as this runtime's row, not a crash of the table
        from convc.errors import UnsupportedOpError
        kind = "unsupported" if isinstance(e, UnsupportedOpError) else "error"
        print(json.dumps({kind: " ".join(str(e).split())[:300]}))
        return
    x = np.load(out + ".input.npy")
    np.save(out + f".{runtime}.npy", np.asarray(run(x), dtype=np.float32))
    print(json.dumps(time_calls(run, x, seconds)))


def time_calls(run, x: np.ndarray, seconds: float) -> dict:
    """peers.time_calls' median wall seconds per call, and the median CPU seconds per call of this process
    (all its threads: on a loaded machine the figure other processes disturb least)."""
    import time
    for _ in range(3):
        run(x)
    wall: list[float] = []
    cpu: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(wall) < 5:
        t, c = time.perf_counter(), time.process_time()
        run(x)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"median": statistics.median(wall), "cpu": statistics.median(cpu), "calls": len(wall)}


def measure(runtime: str, path: str, threads: int, batch: int, seconds: float, out: str) -> dict:
    return peers.measure(__file__, runtime, path, threads, batch, seconds, out)


# ---- the table ------------------------------------------------------------------------------------

def available(runtimes: list[str]) -> list[str]:
    return runtimes if peers.has_openvino() else [r for r in runtimes if r != "ov-int8"]


def bench(name: str, batch: int, threads: int, runtimes: list[str], rounds: int, seconds: float,
          tmp: str) -> dict[str, dict]:
    float_path, qdq_path = build(name, batch, tmp)
    import onnx
    shape = [d.dim_value for d in onnx.load(float_path).graph.input[0].type.tensor_type.shape.dim]
    out = os.path.join(tmp, f"{name}_b{batch}_t{threads}")
    np.save(out + ".input.npy", np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    medians: dict[str, list[float]] = {r: [] for r in runtimes}
    cpus: dict[str, list[float]] = {r: [] for r in runtimes}
    info: dict[str, dict] = {r: {} for r in runtimes}
    for _ in range(rounds):
        for r in runtimes:
            if "error" in info[r] or "unsupported" in info[r]:
                continue
            res = measure(r, float_path if r == "convc-f32" else qdq_path, threads, batch, seconds, out)
            if "median" not in res:
                info[r] = res
                continue
            medians[r].append(res["median"])
            cpus[r].append(res["cpu"])
    ref = np.load(out + ".ort-int8.npy") if os.path.exists(out + ".ort-int8.npy") else None
    for r in runtimes:
        if medians[r]:
            info[r]["ms"] = statistics.median(medians[r]) * 1e3
            info[r]["cpu_ms"] = statistics.median(cpus[r]) * 1e3
            if ref is not None and r.endswith("int8") and os.path.exists(out + f".{r}.npy"):
                y = np.load(out + f".{r}.npy")
                info[r]["err"] = float(np.abs(y - ref).max() / max(1e-30, float(np.abs(ref).max())))
    return info


def _cell(info: dict) -> str:
    if "ms" in info:
        return f"{info['ms']:.2f} ({info['cpu_ms']:.1f})"
    return "unsupported" if "unsupported" in info else "error" if "error" in info else "-"


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        rt, path, threads, batch, seconds, out = sys.argv[2:8]
        worker(rt, path, int(threads), int(batch), float(seconds), out)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--threads", type=int, default=2, help="threads for every runtime (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per runtime (default 3)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of timed calls per round (default 2)")
    p.add_argument("--runtimes", default=",".join(RUNTIMES))
    args = p.parse_args(argv)
    runtimes = available(args.runtimes.split(","))
    print(f"runtimes: {', '.join(runtimes)}; QDQ files from onnxruntime's quantize_static; each runtime alone in "
          f"its own process, {args.threads} thread(s), {args.rounds} alternating rounds, median of per-round "
          "medians", flush=True)
    print("each cell: wall ms (CPU ms of the process, all threads) per call; the ratios use CPU ms")
    print(f"{'model':<14}{'batch':>6}" + "".join(f"{r + ' ms':>16}" for r in runtimes)
          + f"{'i8/f32':>8}{'i8/peer':>8}  max rel err vs ort-int8", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for batch in map(int, args.batches.split(",")):
                info = bench(name, batch, args.threads, runtimes, args.rounds, args.seconds, tmp)
                cells = "".join(f"{_cell(info[r]):>16}" for r in runtimes)
                ms = {r: info[r]["cpu_ms"] for r in runtimes if "cpu_ms" in info[r]}
                vs_f32 = f"{ms['convc-int8'] / ms['convc-f32']:.2f}" if {"convc-int8", "convc-f32"} <= set(ms) else "-"
                peers = [ms[r] for r in ("ort-int8", "ov-int8") if r in ms]
                vs_peer = f"{ms['convc-int8'] / min(peers):.2f}" if "convc-int8" in ms and peers else "-"
                errs = ", ".join(f"{r} {info[r]['err']:.1e}" for r in runtimes if "err" in info[r] and r != "ort-int8")
                print(f"{name:<14}{batch:>6}{cells}{vs_f32:>8}{vs_peer:>8}  {errs}", flush=True)
                for r in runtimes:
                    for kind in ("unsupported", "error"):
                        if kind in info[r]:
                            print(f"    {r}: {kind}: {info[r][kind]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
