"""GEMM throughput: convc's register-tiled GEMM against numpy's BLAS, same process, same threads.

    python benchmarks/gemm.py [--threads 1,2] [--repeat 15]

C[M, N] = A[M, K] @ B[K, N] with A fed at run time and B a constant (a layer's weights, packed
once at compile time, as convc does for every conv and linear layer). Shapes: 1024^3 and the
im2col products of ResNet-18's and MobileNetV2's layers at batch 1 (M = output pixels,
N = output channels, K = input channels x kernel taps). Each figure is also given as a
percentage of this machine's measured peak (FMA units x vector width x clock).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

import convc
from convc.codegen.peak import peak
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.gemm import GemmAttrs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import BLOCK, interleaved_medians  # noqa: E402

SHAPES = {
    "square 1024": (1024, 1024, 1024),
    # ResNet-18, batch 1: (output pixels, output channels, input channels * kh * kw)
    "resnet18 conv1 7x7/2": (112 * 112, 64, 3 * 49),
    "resnet18 layer1 3x3": (56 * 56, 64, 64 * 9),
    "resnet18 layer2 3x3": (28 * 28, 128, 128 * 9),
    "resnet18 layer3 3x3": (14 * 14, 256, 256 * 9),
    "resnet18 layer4 3x3": (7 * 7, 512, 512 * 9),
    "resnet18 fc": (1, 1000, 512),
    # MobileNetV2, batch 1: pointwise expansions and projections
    "mobilenetv2 expand 24->144 @56": (56 * 56, 144, 24),
    "mobilenetv2 project 144->24 @56": (56 * 56, 24, 144),
    "mobilenetv2 expand 64->384 @14": (14 * 14, 384, 64),
    "mobilenetv2 project 960->160 @7": (7 * 7, 160, 960),
    "mobilenetv2 last 320->1280 @7": (7 * 7, 1280, 320),
}


def convc_gemm(m: int, n: int, k: int, threads: int, b: np.ndarray):
    g = Graph("gemm")
    g.add_tensor("a", (m, k), np.float32, TensorKind.INPUT)
    g.add_constant("b", b)
    g.add_op(OpKind.GEMM, GemmAttrs(), ["a", "b"], ["c"])
    g.outputs = ["c"]
    return convc.compile(g, threads=threads)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--repeat", type=int, default=15)
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits
    machine = peak()
    print(f"peak: {machine.single_core_gflops:.0f} GFLOP/s one core, {machine.all_core_gflops:.0f} all "
          f"{machine.cores} cores ({machine.cpu})")
    print(f"{'shape':<34}{'M':>6}{'N':>6}{'K':>6}{'thr':>4}{'convc GF/s':>12}{'%peak':>7}{'numpy GF/s':>12}"
          f"{'%peak':>7}{'ratio':>7}")
    rng = np.random.default_rng(0)
    for name, (m, n, k) in SHAPES.items():
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        for threads in map(int, args.threads.split(",")):
            model = convc_gemm(m, n, k, threads, b)
            feeds = {"a": a}
            got = model.run(feeds)["c"]
            err = np.abs(got - a @ b).max() / max(1.0, float(np.abs(a @ b).max()))
            assert err < 1e-4, f"{name}: convc differs from numpy by {err}"
            with threadpool_limits(limits=threads):  # numpy's BLAS on as many threads as convc
                t_cv, t_np = interleaved_medians([lambda: model.run(feeds), lambda: a @ b], args.repeat // BLOCK)
            flops = 2.0 * m * n * k
            g_cv, g_np = flops / t_cv / 1e9, flops / t_np / 1e9
            all_cores = threads > 1
            print(f"{name:<34}{m:>6}{n:>6}{k:>6}{threads:>4}{g_cv:>12.1f}{machine.percent(g_cv, all_cores):>6.0f}%"
                  f"{g_np:>12.1f}{machine.percent(g_np, all_cores):>6.0f}%{g_cv / g_np:>7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
