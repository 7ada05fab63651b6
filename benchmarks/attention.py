"""Attention blocks of CNNs as PyTorch exports them, timed against onnxruntime in one process:

- se_conv: squeeze-and-excitation with 1x1 convs, the mean written as ReduceMean((2, 3), keepdims) (timm's
  EfficientNet, MobileNetV3);
- se_linear: squeeze-and-excitation with Linear layers: ReduceMean without keepdims, Gemm, ReLU, Gemm, Sigmoid,
  Reshape to (N, C, 1, 1) (timm's SEModule in ResNet variants);
- cbam: channel attention (mean and max over H and W through a shared MLP) then spatial attention (mean and max
  over channels, a 7x7 conv, Sigmoid, times the features).

Each block sits between two 3x3 convs, so a block that breaks the channels-last layout pays two transposes of
the features; the script prints the layout changes convc planned (Transpose kernels) next to the times.

    python benchmarks/attention.py [--batch 16] [--size 56] [--channels 96] [--threads 1] [--blocks 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).parent))
from nets import Net  # noqa: E402
from timing import interleaved_medians  # noqa: E402


def _conv(n: Net, x: str, cin: int, cout: int, k: int) -> str:
    w = n.const(n._name("w"), n.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k)))
    b = n.const(n._name("b"), n.rng.uniform(-0.1, 0.1, cout))
    return n.node("Conv", [x, w, b], kernel_shape=[k, k], pads=[k // 2] * 4)


def se_conv(n: Net, x: str, c: int, batch: int) -> str:
    s = n.node("ReduceMean", [x], axes=[2, 3], keepdims=1)
    s = n.node("Sigmoid", [_conv(n, n.node("Relu", [_conv(n, s, c, c // 4, 1)]), c // 4, c, 1)])
    return n.node("Mul", [x, s])


def se_linear(n: Net, x: str, c: int, batch: int) -> str:
    s = n.node("ReduceMean", [x], axes=[2, 3], keepdims=0)
    s = n.node("Sigmoid", [n.linear(n.node("Relu", [n.linear(s, c, c // 4)]), c // 4, c)])
    shape = n._name("shape")
    n.inits.append(numpy_helper.from_array(np.array([batch, c, 1, 1], np.int64), shape))
    return n.node("Mul", [x, n.node("Reshape", [s, shape])])


def cbam(n: Net, x: str, c: int, batch: int) -> str:
    pooled = [n.node("ReduceMean", [x], axes=[2, 3], keepdims=1), n.node("ReduceMax", [x], axes=[2, 3], keepdims=1)]
    mlp = [_conv(n, n.node("Relu", [_conv(n, p, c, c // 4, 1)]), c // 4, c, 1) for p in pooled]
    x = n.node("Mul", [x, n.node("Sigmoid", [n.node("Add", mlp)])])
    maps = n.node("Concat", [n.node("ReduceMean", [x], axes=[1], keepdims=1),
                             n.node("ReduceMax", [x], axes=[1], keepdims=1)], axis=1)
    return n.node("Mul", [x, n.node("Sigmoid", [_conv(n, maps, 2, 1, 7)])])


BLOCKS = {"se_conv": se_conv, "se_linear": se_linear, "cbam": cbam}


def model(block: str, batch: int, size: int, c: int):
    n = Net(seed=1)
    x = n.node("Relu", [_conv(n, "x", 16, c, 3)])
    y = _conv(n, BLOCKS[block](n, x, c, batch), c, c, 3)
    return n.model((batch, 16, size, size), y, block)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=56)
    p.add_argument("--channels", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blocks", type=int, default=5, help="alternating timing blocks per runtime")
    args = p.parse_args(argv)
    import onnxruntime

    import convc
    from convc.ops import OpKind
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = args.threads
    print(f"batch {args.batch}, {args.size}x{args.size}, {args.channels} channels, {args.threads} thread(s)")
    for block in BLOCKS:
        m = model(block, args.batch, args.size, args.channels)
        x = np.random.default_rng(0).standard_normal((args.batch, 16, args.size, args.size)).astype(np.float32)
        compiled = convc.compile(m, threads=args.threads)
        session = onnxruntime.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        (ours,), (theirs,) = compiled.run({"x": x}).values(), session.run(None, {"x": x})
        error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        layout_changes = sum(op.kind is OpKind.TRANSPOSE for op in compiled.graph.ops())
        t_convc, t_ort = interleaved_medians([lambda: compiled.run({"x": x}),
                                              lambda: session.run(None, {"x": x})], args.blocks)
        print(f"{block:10s} convc {t_convc * 1e3:7.2f} ms  onnxruntime {t_ort * 1e3:7.2f} ms  "
              f"({layout_changes} layout changes, max error {error:.1e} of the output's range)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
