"""Model latency: convc against onnxruntime, same process, same thread count, interleaved.

    python benchmarks/models.py [--repeat 20] [--models resnet18,mobilenet_v2,lenet5,cifar] [--batches 1,16]
                                [--threads 1,2]

The two runtimes alternate in blocks of calls, each after a busy pause and an untimed call, so
neither pays for the other's spinning threads (benchmarks/timing.py). Prints one row per (model, batch, threads):
median latency of each runtime, the ratio
convc/onnxruntime (below 1.0: convc is faster), the max relative difference of the outputs, and
the geometric mean of the ratios at the end.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import convc  # noqa: E402
from convc import models as builtin  # noqa: E402
from nets import mobilenet_v2, resnet18  # noqa: E402
from timing import BLOCK, interleaved_medians  # noqa: E402

BUILDERS = {
    "resnet18": resnet18,
    "mobilenet_v2": mobilenet_v2,
    "lenet5": lambda batch: builtin.lenet5(batch=batch),
    "cifar": lambda batch: builtin.cifar_cnn(batch=batch),
}


def ort_session(model, threads: int):
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def bench(name: str, batch: int, threads: int, repeat: int) -> tuple[float, float, float]:
    model = BUILDERS[name](batch)
    compiled = convc.compile(model, threads=threads, batch=batch)
    sess = ort_session(model, threads)
    spec = compiled.inputs[0]
    x = np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32)
    feeds = {spec.name: x}
    ours = compiled.run(feeds)
    theirs = sess.run(None, feeds)
    ref = theirs[0]
    err = float(np.abs(list(ours.values())[0] - ref).max() / max(1.0, float(np.abs(ref).max())))
    t_convc, t_ort = interleaved_medians([lambda: compiled.run(feeds), lambda: sess.run(None, feeds)],
                                         repeat // BLOCK)
    return t_convc, t_ort, err


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="resnet18,mobilenet_v2,lenet5,cifar")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args(argv)
    print(f"{'model':<14}{'batch':>6}{'thr':>4}{'convc ms':>11}{'ort ms':>10}{'ratio':>8}{'max rel err':>13}")
    ratios = []
    for name in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            for threads in map(int, args.threads.split(",")):
                try:
                    tc, to, err = bench(name, batch, threads, args.repeat)
                except convc.ConvcError as e:
                    print(f"{name:<14}{batch:>6}{threads:>4}  convc cannot run it yet: {str(e).splitlines()[0]}")
                    continue
                ratios.append(tc / to)
                print(f"{name:<14}{batch:>6}{threads:>4}{tc * 1e3:>11.3f}{to * 1e3:>10.3f}{tc / to:>8.2f}{err:>13.1e}",
                      flush=True)
    if ratios:
        geo = float(np.exp(np.mean(np.log(ratios))))
        print(f"geometric mean ratio convc/onnxruntime: {geo:.2f} over {len(ratios)} cases; "
              f"worst {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
