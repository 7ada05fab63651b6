"""Model latency: convc against onnxruntime and OpenVINO, each runtime alone in its own process.

    python benchmarks/models.py [--models resnet18,mobilenet_v2,...] [--batches 1,16] [--threads 2]
                                [--rounds 3] [--seconds 2] [--runtimes convc,ort,ov,ov-default]

Every measurement runs in a fresh process that loads one runtime, compiles the model, and times
calls for ``--seconds`` after a warm-up: a peer's spinning worker threads never share the cores with
another runtime. The runtimes take turns, round after round (convc, onnxruntime, OpenVINO, convc,
...), so a machine that slows down during the run slows every runtime alike; each runtime's figure
is the median over its rounds of the per-round median call time. Every runtime gets the same thread
count (onnxruntime's intra-op threads, OpenVINO's INFERENCE_NUM_THREADS).

Runtimes: ``convc``; ``ort`` (onnxruntime, all graph optimizations); ``ov`` (OpenVINO with its
inference precision fixed to float32) and ``ov-default`` (OpenVINO's own default precision: bf16 on
CPUs with AVX512_BF16 or AMX, float32 elsewhere; skipped when it is float32, as ``ov`` measures it).
OpenVINO rows appear when the ``openvino`` package is installed.

Prints one row per (model, batch, threads): each runtime's median latency, convc's ratio to the best
float32 peer (below 1.0: convc is faster), each output's max difference relative to onnxruntime's
largest output value, and at the end the geometric mean and the worst ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402  (benchmarks/peers.py)

MODELS = ("resnet18", "resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "yolo_silu", "convnext_small",
          "lenet5", "cifar")
DEFAULT_MODELS = "resnet18,mobilenet_v2,efficientnet_b0,densenet121,yolo_silu,lenet5,cifar"
FLOAT32_PEERS = ("ort", "ov")


def build(name: str, batch: int):
    import nets
    from convc import models as builtin
    if name == "lenet5":
        return builtin.lenet5(batch=batch)
    if name == "cifar":
        return builtin.cifar_cnn(batch=batch)
    return getattr(nets, name)(batch)


# ---- one runtime in one process -------------------------------------------------------------------

def worker(runtime: str, path: str, threads: int, batch: int, seconds: float, out: str) -> None:
    kind = {"convc": "convc", "ort": "ort"}.get(runtime, "ov")
    run, precision = peers.session(kind, path, threads, batch, ov_precision="f32" if runtime == "ov" else None)
    x = np.load(out + ".input.npy")
    np.save(out + f".{runtime}.npy", np.asarray(run(x), dtype=np.float32))
    print(json.dumps({**peers.time_calls(run, x, seconds), "precision": precision}))


def measure(runtime: str, path: str, threads: int, batch: int, seconds: float, out: str) -> dict:
    return peers.measure(__file__, runtime, path, threads, batch, seconds, out)


# ---- the table ------------------------------------------------------------------------------------

def available(runtimes: list[str]) -> list[str]:
    return runtimes if peers.has_openvino() else [r for r in runtimes if not r.startswith("ov")]


def bench(name: str, batch: int, threads: int, runtimes: list[str], rounds: int, seconds: float,
          tmp: str) -> dict[str, dict]:
    import onnx
    path = os.path.join(tmp, f"{name}_b{batch}.onnx")
    model = build(name, batch)
    onnx.save(model, path)
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    out = os.path.join(tmp, f"{name}_b{batch}_t{threads}")
    np.save(out + ".input.npy", np.random.default_rng(0).standard_normal(shape).astype(np.float32))
    medians: dict[str, list[float]] = {r: [] for r in runtimes}
    info: dict[str, dict] = {r: {} for r in runtimes}
    for _ in range(rounds):
        for r in runtimes:
            if "error" in info[r] or info[r].get("skip"):
                continue
            res = measure(r, path, threads, batch, seconds, out)
            if "error" in res:
                info[r] = {"error": res["error"]}
                continue
            if r == "ov-default" and res["precision"].lower() in ("f32", "<type: 'float32'>", "float32"):
                info[r] = {"skip": True, "precision": res["precision"]}
                continue
            medians[r].append(res["median"])
            info[r]["precision"] = res["precision"]
    ref = np.load(out + ".ort.npy") if os.path.exists(out + ".ort.npy") else None
    for r in runtimes:
        if medians[r]:
            info[r]["ms"] = statistics.median(medians[r]) * 1e3
            if ref is not None and os.path.exists(out + f".{r}.npy"):
                y = np.load(out + f".{r}.npy")
                info[r]["err"] = float(np.abs(y - ref).max() / max(1e-30, float(np.abs(ref).max())))
    return info


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--worker":
        rt, path, threads, batch, seconds, out = sys.argv[2:8]
        worker(rt, path, int(threads), int(batch), float(seconds), out)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per runtime (default 3)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds of timed calls per round (default 2)")
    p.add_argument("--runtimes", default="convc,ort,ov,ov-default")
    args = p.parse_args(argv)
    runtimes = available(args.runtimes.split(","))
    print(f"runtimes: {', '.join(runtimes)}; each alone in its own process, {args.rounds} alternating rounds, "
          f"median of per-round medians", flush=True)
    head = f"{'model':<16}{'batch':>6}{'thr':>4}" + "".join(f"{r + ' ms':>14}" for r in runtimes)
    print(head + f"{'ratio':>8}  max rel err vs ort", flush=True)
    ratios: list[tuple[float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for batch in map(int, args.batches.split(",")):
                for threads in map(int, args.threads.split(",")):
                    info = bench(name, batch, threads, runtimes, args.rounds, args.seconds, tmp)
                    cells, errs = "", []
                    for r in runtimes:
                        i = info[r]
                        cell = (f"{i['ms']:.3f}" if "ms" in i else "skip (f32)" if i.get("skip")
                                else "error" if "error" in i else "-")
                        if r == "ov-default" and "ms" in i:
                            cell += f" {i['precision']}"
                        cells += f"{cell:>14}"
                        if "err" in i and r != "ort":
                            errs.append(f"{r} {i['err']:.1e}")
                    peers = [info[r]["ms"] for r in FLOAT32_PEERS if "ms" in info.get(r, {})]
                    ratio = ""
                    if "ms" in info.get("convc", {}) and peers:
                        q = info["convc"]["ms"] / min(peers)
                        ratios.append((q, f"{name} b{batch} t{threads}"))
                        ratio = f"{q:.2f}"
                    print(f"{name:<16}{batch:>6}{threads:>4}{cells}{ratio:>8}  {', '.join(errs)}", flush=True)
                    for r in runtimes:
                        if "error" in info[r]:
                            print(f"    {r}: {info[r]['error']}", flush=True)
    if ratios:
        geo = float(np.exp(np.mean([np.log(q) for q, _ in ratios])))
        worst = max(ratios)
        print(f"convc / best float32 peer: geometric mean {geo:.2f} over {len(ratios)} cases; "
              f"worst {worst[0]:.2f} ({worst[1]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
