"""Training step time: convc's one-call step against PyTorch eager, same network, data, weights,
hyper-parameters and thread count.

    python benchmarks/train.py [--sizes 8,32] [--batch 64] [--steps 60] [--threads 1]

The network is the digits CNN of the tests (conv3x3(16)-BN-ReLU-maxpool2, conv3x3(32)-BN-ReLU-
maxpool2, flatten, dropout 0.25, linear 10), trained with Adam(3e-3) and cross-entropy on
scikit-learn's 8x8 digits, and on the same digits upscaled to 32x32 (nearest neighbour). Both
frameworks start from the same weights (PyTorch's initialization, copied into the ONNX model convc
compiles). Steps of the two alternate, so both see the same machine load; the script prints the
median step time of each, the ratio convc / PyTorch (below 1: convc is faster) and the median
thread CPU time (less sensitive to other processes on a busy machine). PyTorch is skipped if it is
not installed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import convc

C1, C2, CLASSES, DROPOUT, LR = 16, 32, 10, 0.25, 3e-3


def digits(hw: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    if hw != 8:
        x = np.repeat(np.repeat(x, hw // 8, axis=2), hw // 8, axis=3)
    return np.ascontiguousarray(x), d.target.astype(np.int64)


def init_weights(hw: int, seed: int = 0) -> dict[str, np.ndarray]:
    """PyTorch's default initialization when it is installed (so both start alike), else He-normal."""
    flat = C2 * (hw // 4) ** 2
    shapes = {"conv1.weight": (C1, 1, 3, 3), "conv1.bias": (C1,), "bn1.weight": (C1,), "bn1.bias": (C1,),
              "conv2.weight": (C2, C1, 3, 3), "conv2.bias": (C2,), "bn2.weight": (C2,), "bn2.bias": (C2,),
              "fc.weight": (CLASSES, flat), "fc.bias": (CLASSES,)}
    try:
        import torch
        torch.manual_seed(seed)
        m = torch_model(hw)
        sd = {k: v.detach().numpy().copy() for k, v in m.state_dict().items()}
        names = {"0": "conv1", "1": "bn1", "4": "conv2", "5": "bn2", "10": "fc"}
        return {f"{names[k.split('.')[0]]}.{k.split('.')[1]}": v for k, v in sd.items()
                if k.split(".")[0] in names and k.split(".")[1] in ("weight", "bias")}
    except ImportError:
        rng = np.random.default_rng(seed)
        return {n: (rng.standard_normal(s) * np.sqrt(2.0 / max(1, int(np.prod(s[1:])))) if "weight" in n and "bn" not in n
                    else np.ones(s) if n.startswith("bn") and n.endswith("weight") else np.zeros(s)).astype(np.float32)
                for n, s in shapes.items()}


def onnx_model(hw: int, w: dict[str, np.ndarray]) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(v, n) for n, v in w.items()]
    for i, c in ((1, C1), (2, C2)):
        inits += [numpy_helper.from_array(np.zeros(c, np.float32), f"bn{i}.running_mean"),
                  numpy_helper.from_array(np.ones(c, np.float32), f"bn{i}.running_var")]
    inits.append(numpy_helper.from_array(np.array(DROPOUT, np.float32), "ratio"))
    nodes, x = [], "input"
    for i in (1, 2):
        nodes += [helper.make_node("Conv", [x, f"conv{i}.weight", f"conv{i}.bias"], [f"c{i}"], kernel_shape=[3, 3],
                                   pads=[1, 1, 1, 1]),
                  helper.make_node("BatchNormalization", [f"c{i}", f"bn{i}.weight", f"bn{i}.bias",
                                                          f"bn{i}.running_mean", f"bn{i}.running_var"], [f"b{i}"],
                                   momentum=0.9),
                  helper.make_node("Relu", [f"b{i}"], [f"r{i}"]),
                  helper.make_node("MaxPool", [f"r{i}"], [f"p{i}"], kernel_shape=[2, 2], strides=[2, 2])]
        x = f"p{i}"
    nodes += [helper.make_node("Flatten", [x], ["flat"], axis=1),
              helper.make_node("Dropout", ["flat", "ratio"], ["drop"]),
              helper.make_node("Gemm", ["drop", "fc.weight", "fc.bias"], ["output"], transB=1)]
    g = helper.make_graph(nodes, "digits_cnn", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              ["N", 1, hw, hw])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", CLASSES])],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def torch_model(hw: int):
    from torch import nn
    return nn.Sequential(nn.Conv2d(1, C1, 3, padding=1), nn.BatchNorm2d(C1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(C1, C2, 3, padding=1), nn.BatchNorm2d(C2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(DROPOUT), nn.Linear(C2 * (hw // 4) ** 2, CLASSES))


def bench(hw: int, batch: int, steps: int, threads: int) -> None:
    x, y = digits(hw)
    w = init_weights(hw)
    start = time.perf_counter()
    trainer = convc.Trainer(onnx_model(hw, w), input_shape=(batch, 1, hw, hw), optimizer=convc.optim.Adam(LR),
                            **({"threads": threads} if threads > 1 else {}))
    compile_s = time.perf_counter() - start
    try:
        import torch
        torch.set_num_threads(threads)
        tm = torch_model(hw)
        names = {"0": "conv1", "1": "bn1", "4": "conv2", "5": "bn2", "10": "fc"}
        tm.load_state_dict({f"{k}.{s}": torch.tensor(w[f"{v}.{s}"]) for k, v in names.items()
                            for s in ("weight", "bias")}, strict=False)
        topt = torch.optim.Adam(tm.parameters(), LR)
        tx, ty = torch.tensor(x), torch.tensor(y)
        F = torch.nn.functional
    except ImportError:
        torch = None

    rng = np.random.default_rng(0)
    wall = {"convc": [], "pytorch": []}
    cpu = {"convc": [], "pytorch": []}
    for i in range(steps + 10):
        idx = rng.choice(len(x), batch, replace=False)
        xb, yb = x[idx], y[idx]
        t0, c0 = time.perf_counter(), time.thread_time()
        trainer.step(xb, yb)
        t1, c1 = time.perf_counter(), time.thread_time()
        if i >= 10:
            wall["convc"].append(t1 - t0)
            cpu["convc"].append(c1 - c0)
        if torch is not None:
            ti = torch.from_numpy(idx)
            xt, yt = tx[ti], ty[ti]
            t0, c0 = time.perf_counter(), time.thread_time()
            topt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(tm(xt), yt)
            loss.backward()
            topt.step()
            t1, c1 = time.perf_counter(), time.thread_time()
            if i >= 10:
                wall["pytorch"].append(t1 - t0)
                cpu["pytorch"].append(c1 - c0)
    med = {k: statistics.median(v) * 1e3 for k, v in wall.items() if v}
    med_cpu = {k: statistics.median(v) * 1e3 for k, v in cpu.items() if v}
    acc = trainer.evaluate(x[:512], y[:512])["accuracy"]
    line = (f"{hw:>2}x{hw:<2} batch {batch} threads {threads}: convc {med['convc']:8.3f} ms "
            f"(cpu {med_cpu['convc']:.3f})")
    if "pytorch" in med:
        line += (f" | pytorch {med['pytorch']:8.3f} ms (cpu {med_cpu['pytorch']:.3f}) | ratio convc/pytorch "
                 f"{med['convc'] / med['pytorch']:.3f} (cpu {med_cpu['convc'] / med_cpu['pytorch']:.3f})")
    else:
        line += " | pytorch not installed"
    print(line + f" | convc compile {compile_s:.1f} s, train acc after {steps + 10} steps {acc:.3f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="8,32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", default="1")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for threads in [int(t) for t in args.threads.split(",")]:
        for hw in [int(s) for s in args.sizes.split(",")]:
            bench(hw, args.batch, args.steps, threads)


if __name__ == "__main__":
    main()
