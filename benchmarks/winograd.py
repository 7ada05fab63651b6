"""Winograd against the direct conv, one 3x3 stride-1 layer at a time, same process, same threads.

    python benchmarks/winograd.py [--threads 1,2] [--blocks 7] [--shapes 1x56x56x64:64,1x14x14x256:256]

Each layer (channels last, pad 1, bias + ReLU, as ResNet-18's run inside convc) is compiled three
ways: the direct implicit GEMM (``winograd=False``), Winograd F(2x2,3x3) and F(4x4,3x3), and the
three are timed alternating in blocks (benchmarks/timing.py), so a loaded machine slows all of them
alike. Rates are GFLOP/s-equivalent: the direct conv's 2 * N*H*W*M*C*9 FLOPs over the time, so a
faster algorithm shows a higher rate. The error column is max |y - y_direct| / max |y_direct|.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys

import numpy as np

import convc
from convc.codegen.peak import peak
from convc.ir import Graph, TensorKind
from convc.ops import OpKind
from convc.ops.conv import ConvAlgorithm, ConvAttrs
from convc.ops.epilogue import Epilogue
from convc.passes import kernel_selection

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import interleaved_medians  # noqa: E402

SHAPES = "1x56x56x64:64,1x14x14x256:256"


def layer(n: int, h: int, w: int, c: int, m: int, seed: int = 0) -> Graph:
    rng = np.random.default_rng(seed)
    g = Graph("conv3x3")
    g.add_tensor("x", (n, h, w, c), np.float32, TensorKind.INPUT)
    g.add_constant("w", (rng.standard_normal((m, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32))
    g.add_constant("b", rng.uniform(-0.1, 0.1, m).astype(np.float32))
    attrs = ConvAttrs((3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, Epilogue(False, OpKind.RELU), "NHWC")
    g.add_op(OpKind.CONV, attrs, ["x", "w", "b"], ["y"], name="conv")
    g.outputs = ["y"]
    return g


@contextlib.contextmanager
def forced(algorithm: ConvAlgorithm | None):
    """Kernel selection picks ``algorithm`` for every Winograd candidate (None: its own rule)."""
    rule = kernel_selection.winograd_algorithm
    if algorithm is not None:
        kernel_selection.winograd_algorithm = lambda g, op: algorithm
    try:
        yield
    finally:
        kernel_selection.winograd_algorithm = rule


def compiled(g: Graph, threads: int, algorithm: ConvAlgorithm | None):
    with forced(algorithm):
        model = convc.compile(g, threads=threads, cache=False, winograd=algorithm is not None)
    (conv,) = [op for op in model.graph.ops() if op.kind is OpKind.CONV]
    assert conv.attrs.algorithm is (algorithm or ConvAlgorithm.IMPLICIT_GEMM_NHWC), conv.attrs.algorithm
    return model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--blocks", type=int, default=7, help="alternating timing blocks per variant")
    p.add_argument("--shapes", default=SHAPES, help="NxHxWxC:M,... (channels-last input, output channels)")
    args = p.parse_args(argv)
    machine = peak()
    variants = {"direct": None, "F(2x2)": ConvAlgorithm.WINOGRAD_2X2, "F(4x4)": ConvAlgorithm.WINOGRAD_4X4}
    print(f"peak: {machine.single_core_gflops:.0f} GFLOP/s per core, {machine.all_core_gflops:.0f} on {machine.cores}")
    for spec in args.shapes.split(","):
        dims, m = spec.split(":")
        n, h, w, c = (int(v) for v in dims.split("x"))
        m = int(m)
        g = layer(n, h, w, c, m)
        feeds = {"x": np.random.default_rng(1).standard_normal((n, h, w, c)).astype(np.float32)}
        flops = 2 * n * h * w * m * c * 9
        for threads in (int(t) for t in args.threads.split(",")):
            models = {name: compiled(g, threads, alg) for name, alg in variants.items()}
            outs = {name: mdl.run(feeds)["y"] for name, mdl in models.items()}
            ref = outs["direct"]
            seconds = interleaved_medians([functools.partial(mdl.run, feeds) for mdl in models.values()], args.blocks)
            print(f"{n}x{h}x{w}x{c} -> {m}, {threads} thread(s):")
            for (name, out), s in zip(outs.items(), seconds):
                err = np.abs(out - ref).max() / np.abs(ref).max()
                print(f"  {name:7s} {s * 1e3:8.3f} ms {flops / s / 1e9:7.1f} GFLOP/s-eq "
                      f"({seconds[0] / s:4.2f}x direct)  err {err:.1e}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
