"""Library build time: `convc compile model.onnx -o model.so` split and compiled on every core through
the kernel cache, against the model compiled as one module on one core (the build before the split).

    python benchmarks/aot_compile.py [--rounds 2] [--models resnet50,resnet101]

Every build runs in a fresh process; its CPU time is that process's and its LLVM workers' (they
exit with it: ``resource.getrusage(RUSAGE_CHILDREN)`` of this process counts them), so the figure
holds on a loaded machine where wall time does not. Per round: every model as ``one module`` (no
kernel cache); the first model ``split cold`` (an empty kernel cache), then, into the same cache,
the next (``split after <previous>``: ResNet-101 reuses ResNet-50's kernel objects). Rounds alternate the
variants so load drifts hit both alike.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

CHILD = r"""
import sys, onnx
import convc.codegen.aot as aot
import nets
if sys.argv[2] == "single":
    aot.links_parts = lambda target, object_only: False
onnx.save(getattr(nets, sys.argv[1])(batch=1), sys.argv[3] + ".onnx")
import convc
convc.compile_library(sys.argv[3] + ".onnx", sys.argv[3] + ".so", progress=lambda line: print(line, flush=True))
"""


def build(model: str, mode: str, workdir: str, cache: str | None) -> tuple[float, float, str]:
    """(CPU seconds of the build and its workers, wall seconds, the LLVM progress line)."""
    env = dict(os.environ, PYTHONPATH=HERE)
    if cache:
        env.update(CONVC_CACHE_DIR=cache, CONVC_NO_CACHE="")
    else:
        env["CONVC_NO_CACHE"] = "1"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, model, mode, os.path.join(workdir, f"{model}-{mode}")],
                          capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    llvm = next((line for line in done.stdout.splitlines() if re.match(r"LLVM: \d+ modules? to compile", line)),
                "LLVM: one module")
    return cpu, wall, llvm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="resnet50,resnet101")
    args = ap.parse_args()
    models = args.models.split(",")
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="convc-aot-bench-") as tmp:
            cache = os.path.join(tmp, "cache")
            order = ["single", "split"] if r % 2 == 0 else ["split", "single"]
            for mode in order:
                if mode == "single":
                    for model in models:
                        cpu, wall, _ = build(model, "single", tmp, None)
                        print(f"round {r + 1}  {model:<10} one module           CPU {cpu:6.1f} s  wall {wall:6.1f} s",
                              flush=True)
                    continue
                for k, model in enumerate(models):
                    cpu, wall, llvm = build(model, "split", tmp, cache)
                    what = "split cold" if k == 0 else f"split after {models[k - 1]}"
                    print(f"round {r + 1}  {model:<10} {what:<20} CPU {cpu:6.1f} s  wall {wall:6.1f} s  ({llvm})",
                          flush=True)


if __name__ == "__main__":
    main()
