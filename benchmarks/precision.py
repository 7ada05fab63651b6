"""float32 against bf16 latency and accuracy of convc on the benchmark nets, in one process.

    python benchmarks/precision.py [--models resnet18,mobilenet_v2] [--batches 1] [--threads 2] [--blocks 15]

Three compiles of each model alternate (benchmarks/timing.py interleaved_medians): float32 as
convc compiles it by default (Winograd where kernel selection picks it), float32 with
--no-winograd (the same direct kernels bf16 runs), and precision="bf16". Also printed: bf16's
max |bf16 - float32| / max |float32| on the logits and top-1 agreement, on seeded random inputs.

Without AVX512_BF16 (llvm.get_host_cpu_features()), bf16 is float32 FMAs on bf16-rounded operands
(passes/precision.py): it computes what a native-bf16 CPU computes but cannot be faster than
float32 here; it pays one rounding pass per conv input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nets  # noqa: E402
from timing import interleaved_medians  # noqa: E402

import convc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18")
    p.add_argument("--batches", default="1")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--blocks", type=int, default=15)
    args = p.parse_args(argv)
    import llvmlite.binding as llvm
    native = llvm.get_host_cpu_features().flatten().split(",").count("+avx512bf16") > 0
    print(f"host {llvm.get_host_cpu_name()}, avx512bf16: {native}, threads {args.threads}")
    for name in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            model = getattr(nets, name)(batch)
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
            variants = {
                "float32": convc.compile(model, threads=args.threads),
                "float32 direct": convc.compile(model, threads=args.threads, winograd=False),
                "bf16": convc.compile(model, threads=args.threads, precision="bf16"),
            }
            outs = {k: next(iter(m.run({"x": x}).values())) for k, m in variants.items()}
            ref, got = outs["float32"], outs["bf16"]
            dev = float(np.abs(got - ref).max() / np.abs(ref).max())
            agree = int((got.argmax(1) == ref.argmax(1)).sum())
            times = interleaved_medians([lambda m=m: m.run({"x": x}) for m in variants.values()], args.blocks)
            line = ", ".join(f"{k} {t * 1e3:.2f} ms" for k, t in zip(variants, times))
            print(f"{name} batch {batch}: {line}; bf16/float32 {times[2] / times[0]:.2f}x, "
                  f"bf16/float32-direct {times[2] / times[1]:.2f}x; bf16 deviation {dev:.2e}, "
                  f"top-1 {agree}/{batch}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
