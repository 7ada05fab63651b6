"""Training step time and step memory: convc's one-call step against PyTorch eager, same network,
weights, data, optimizer and thread count, each runtime alone in its own process.

    python benchmarks/train.py [--nets digits,cifar_resnet,mobilenet_v2] [--batches 32,128]
                               [--threads 1,2] [--optimizers sgd,adam] [--rounds 3] [--steps 10]

Nets (benchmarks/train_nets.py): the digits CNN on scikit-learn's 8x8 digits; the CIFAR ResNet of
``benchmarks/compile.py --train`` (3x3 stem, basic blocks, widths 16/32/64, two blocks per stage);
MobileNetV2 with CIFAR strides (inverted residuals, ReLU6, depthwise convs; ``--mobilenet-width``,
default 0.5). CIFAR-sized nets train on random 3x32x32 batches with random labels. Optimizers:
SGD(0.05, momentum 0.9) and Adam(1e-3), cross-entropy loss.

PyTorch builds each net, exports it in training mode (BatchNormalization training_mode=1, Dropout
with its training_mode input) and convc's Trainer compiles that file; the PyTorch process loads the
file's initializers back, so both start from the same weights and running statistics. Every
measurement runs in a fresh process that imports one runtime only (a peer's idle worker threads
would otherwise share the cores); convc and PyTorch take turns, round after round, so a machine
that slows down slows both alike. Each process builds its net, takes 1 untimed step, then times
``--steps`` steps: wall time (time.perf_counter) and process CPU time (time.process_time, all
threads; less sensitive to other processes on a busy machine). Each runtime's figure is the median
over rounds of the per-round median step. Ratio = convc / PyTorch (below 1: convc is faster). The
first step's loss of each is printed too: the same weights and batch give the same loss up to
float32 rounding (not for the digits net, whose dropout masks come from each framework's own
generator).

Step memory: the growth of the process's resident set over its first 2 steps, measured the same way
on both sides: RSS just before the first step (the net, its weights and the data in memory; for
convc the compiled code too; for PyTorch its one-time set-up, primed by one step of a throwaway
tiny net, so that library initialization does not count as step memory), against the peak RSS
(VmHWM, reset through /proc/self/clear_refs just before the first step) during the steps. It counts
everything a step brings into memory: activations saved for the backward, gradients, optimizer
state (PyTorch creates it at the first step), allocator and library caches. convc allocates its
optimizer state when the Trainer is built, before that baseline, so its planned optimizer-state
bytes are added to its growth. convc's own planned figure (arena + optimizer state, from the
training step's memory plan) is printed beside it; the two agree within a few hundred KiB.
torch.cuda's peak counters do not exist on CPU, and torch.profiler's memory events count only
PyTorch's allocator, not convc's arena: RSS is the one measure both processes share.

Without PyTorch, convc is timed alone on the same layer plans built with onnx.helper (He-normal
weights), and the PyTorch columns say that the peer was skipped.

``--worker RUNTIME NET BATCH OPTIMIZER THREADS STEPS MODEL WIDTH`` is how the script starts one
measurement process (it prints one JSON line); it is not meant to be called by hand.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

RUNTIMES = ("convc", "pytorch")
WARMUP = 1  # untimed steps; the first 2 steps (warm-up included) are the memory window
MEMORY_STEPS = 2  # the second step holds the optimizer state PyTorch made in the first
OPTIMIZERS = ("sgd", "adam")
SGD_LR, MOMENTUM, ADAM_LR = 0.05, 0.9, 1e-3
DATA_BATCHES = 4  # distinct batches cycled through


def have_torch() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch") is not None


# ---- memory of this process --------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ---- one runtime in one process ----------------------------------------------------------------------

def convc_step(model_path: str, shape: tuple[int, ...], optimizer: str, threads: int):
    """(step(x, y), planned step bytes, bytes allocated before the first step that a step needs)."""
    import convc
    from convc.train_profile import analyze_training
    opt = convc.optim.SGD(SGD_LR, momentum=MOMENTUM) if optimizer == "sgd" else convc.optim.Adam(ADAM_LR)
    trainer = convc.Trainer(model_path, input_shape=shape, optimizer=opt, threads=threads)
    memory = analyze_training(trainer.plan, trainer.forward, "", trainer.loss_name, repr(opt)).memory
    # the compiled step of this batch size; its arena is allocated but untouched until the first step
    arena = trainer._steps[shape[0]][1].arena_bytes
    return (lambda x, y: trainer.step(x, y)), arena + memory.optimizer_state_bytes, memory.optimizer_state_bytes


def prime_pytorch(torch, threads: int) -> None:
    """One training step of a throwaway conv net: PyTorch's one-time set-up (autograd engine, oneDNN,
    thread pool, optimizer code) then sits in the baseline RSS, as convc's compiled code does."""
    from torch import nn
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, groups=1), nn.BatchNorm2d(4), nn.ReLU6(),
                        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Dropout(0.1), nn.Linear(4, 2))
    for opt in (torch.optim.SGD(net.parameters(), 0.1, momentum=0.9), torch.optim.Adam(net.parameters())):
        torch.nn.functional.cross_entropy(net(torch.zeros(2, 3, 8, 8)), torch.zeros(2, dtype=torch.int64)).backward()
        opt.step()


def pytorch_step(net_name: str, model_path: str, optimizer: str, threads: int, width: float):
    import onnx
    import torch
    from onnx import numpy_helper

    import train_nets
    torch.set_num_threads(threads)
    net = train_nets.torch_net(net_name, width).train()
    # the export ran the net once in training mode (its running statistics moved): start from the file
    state = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in onnx.load(model_path).graph.initializer}
    own = net.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"the ONNX file lacks {missing[:5]}: the nets differ")
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    opt = (torch.optim.SGD(net.parameters(), SGD_LR, momentum=MOMENTUM) if optimizer == "sgd"
           else torch.optim.Adam(net.parameters(), ADAM_LR))
    cross_entropy = torch.nn.functional.cross_entropy
    prime_pytorch(torch, threads)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step, None, 0


def worker(runtime: str, net_name: str, batch: int, optimizer: str, threads: int, steps: int, model_path: str,
           width: float) -> dict:
    import train_nets
    data = train_nets.batches(net_name, batch, DATA_BATCHES)
    shape = train_nets.input_shape(net_name, batch)
    if runtime == "convc":
        step, planned, preallocated = convc_step(model_path, shape, optimizer, threads)
    else:
        import torch
        step, planned, preallocated = pytorch_step(net_name, model_path, optimizer, threads, width)
        data = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
    gc.collect()
    base_kb = _status_kb("VmRSS")
    exact_peak = reset_peak_rss()
    losses, wall, cpu = [], [], []
    for i in range(WARMUP + steps):
        x, y = data[i % len(data)]
        t0, c0 = time.perf_counter(), time.process_time()
        losses.append(float(step(x, y)))
        t1, c1 = time.perf_counter(), time.process_time()
        if i + 1 == MEMORY_STEPS:
            peak_kb = _status_kb("VmHWM") if exact_peak else _status_kb("VmRSS")
        if i >= WARMUP:
            wall.append(t1 - t0)
            cpu.append(c1 - c0)
    if WARMUP + steps < MEMORY_STEPS:
        peak_kb = _status_kb("VmHWM") if exact_peak else _status_kb("VmRSS")
    return {"wall": statistics.median(wall), "cpu": statistics.median(cpu),
            "memory": (peak_kb - base_kb) * 1024 + preallocated, "planned": planned, "exact_peak": exact_peak,
            "first_loss": losses[0], "last_loss": losses[-1]}


def run_worker(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", *args], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- the parent: models, rounds, table -----------------------------------------------------------------

def write_model(net_name: str, batch: int, width: float, directory: str, torch_available: bool) -> str:
    """The net's ONNX file: PyTorch's training-mode export, or the onnx.helper build without PyTorch."""
    import onnx

    import train_nets
    path = os.path.join(directory, f"{net_name}_{batch}.onnx")
    if torch_available:
        x = train_nets.batches(net_name, batch, 1)[0][0]
        proto = train_nets.export_training(train_nets.torch_net(net_name, width), x)
    else:
        proto = train_nets.onnx_net(net_name, width)
    onnx.save(proto, path)
    return path


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        runtime, net_name, batch, optimizer, threads, steps, path, width = sys.argv[2:10]
        print(json.dumps(worker(runtime, net_name, int(batch), optimizer, int(threads), int(steps), path,
                                float(width))))
        return 0
    import train_nets
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nets", default=",".join(train_nets.NETS),
                   help=f"comma-separated nets to train: {', '.join(train_nets.NETS)} (default: all)")
    p.add_argument("--batches", default="32,128", help="comma-separated batch sizes (default: 32,128)")
    p.add_argument("--threads", default="1,2",
                   help="comma-separated thread counts; convc and PyTorch get the same count (default: 1,2)")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                   help=f"comma-separated: sgd (SGD {SGD_LR}, momentum {MOMENTUM}), adam (Adam {ADAM_LR}) "
                        "(default: both)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating rounds (one fresh process per runtime each); figures are medians over "
                        "rounds (default: 3)")
    p.add_argument("--steps", type=int, default=10,
                   help=f"timed steps per process (at least 1), after {WARMUP} untimed warm-up step (default: 10)")
    p.add_argument("--mobilenet-width", type=float, default=0.5,
                   help="width multiplier of the mobilenet_v2 net: channels times it, rounded to multiples of 8 "
                        "(default: 0.5)")
    args = p.parse_args()
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be at least 1")
    nets = [n for n in args.nets.split(",") if n]
    unknown = [n for n in nets if n not in train_nets.NETS]
    if unknown:
        p.error(f"unknown net(s) {', '.join(unknown)}; choose from {', '.join(train_nets.NETS)}")
    batches = [int(b) for b in args.batches.split(",")]
    threads_list = [int(t) for t in args.threads.split(",")]
    optimizers = [o for o in args.optimizers.split(",") if o]
    if any(o not in OPTIMIZERS for o in optimizers):
        p.error(f"--optimizers: choose from {', '.join(OPTIMIZERS)}")
    torch_available = have_torch()
    runtimes = RUNTIMES if torch_available else ("convc",)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          + ("convc and PyTorch eager" if torch_available else "PyTorch is not installed: the peer is skipped, "
             "convc alone") + f"; {args.rounds} rounds of {args.steps} steps", flush=True)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, CONVC_CACHE_DIR=os.environ.get("CONVC_CACHE_DIR", os.path.join(tmp, "cache")))
        for net_name in nets:
            for batch in batches:
                path = write_model(net_name, batch, args.mobilenet_width, tmp, torch_available)
                for threads in threads_list:
                    for optimizer in optimizers:
                        results: dict[str, list[dict]] = {r: [] for r in runtimes}
                        for _ in range(args.rounds):
                            for runtime in runtimes:
                                results[runtime].append(run_worker(
                                    [runtime, net_name, str(batch), optimizer, str(threads), str(args.steps), path,
                                     str(args.mobilenet_width)], env))
                        rows.append(report(net_name, batch, threads, optimizer, results))
    return summary(rows, torch_available)


def report(net_name: str, batch: int, threads: int, optimizer: str, results: dict[str, list[dict]]) -> dict:
    row = {"label": f"{net_name:<13} batch {batch:>3} threads {threads} {optimizer:<4}"}
    line = row["label"]
    for runtime, rounds in results.items():
        ok = [r for r in rounds if "error" not in r]
        if not ok:
            line += f" | {runtime}: {rounds[0]['error']}"
            continue
        med = {k: statistics.median(r[k] for r in ok) for k in ("wall", "cpu", "memory")}
        row[runtime] = {**med, "first_loss": ok[0]["first_loss"]}
        line += f" | {runtime} {med['wall'] * 1e3:8.2f} ms (cpu {med['cpu'] * 1e3:8.2f}) mem {mib(med['memory'])} MiB"
        if runtime == "convc":
            line += f" (planned {mib(ok[0]['planned'])})"
    if "pytorch" not in results:
        line += " | pytorch skipped (not installed)"
    elif "convc" in row and "pytorch" in row:
        c, t = row["convc"], row["pytorch"]
        row["ratios"] = (c["wall"] / t["wall"], c["cpu"] / t["cpu"], c["memory"] / max(t["memory"], 1))
        line += " | convc/pytorch time {:.2f} (cpu {:.2f}) memory {:.2f}".format(*row["ratios"])
        # the same weights and batch give the same first loss (up to float32 order), except where
        # dropout draws its masks (the digits net): each framework has its own generator
        line += f" | first loss {c['first_loss']:.4f} / {t['first_loss']:.4f}"
    print(line, flush=True)
    return row


def summary(rows: list[dict], torch_available: bool) -> int:
    compared = [r for r in rows if "ratios" in r]
    if not torch_available or not compared:
        return 0 if all("convc" in r for r in rows) else 1
    for i, what in enumerate(("step time (wall)", "step time (cpu)", "step memory")):
        worst = max(compared, key=lambda r: r["ratios"][i])
        ratios = [r["ratios"][i] for r in compared]
        geo = float(np.exp(np.mean(np.log(ratios))))
        print(f"{what}: worst ratio {worst['ratios'][i]:.2f} ({worst['label'].strip()}), geometric mean {geo:.2f}")
    return 0 if all("convc" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
