"""Images per second of data-parallel training with convc.distributed on a local Ray cluster:
1 worker against 2, the same global batch.

    python benchmarks/distributed.py [--batch 64] [--steps 30] [--rounds 2] [--size 32]

The network is a CIFAR-sized CNN (conv3x3(16)-ReLU-maxpool2, conv3x3(32)-ReLU-maxpool2, linear 10)
written with convc.nn, trained with Adam on random images; each worker runs its compiled step on
its share of the global batch with 1 thread (global batch / workers images), one allreduce of the
gradients per step (run_on_ray's star through one actor). The compile cache is shared, so only
the first round compiles. Rounds alternate 1 and 2 workers so both see the same machine load; the
script prints per configuration the median over rounds of the global images per second (wall
clock over the timed steps, as a user sees it) and of the summed worker CPU seconds per 1000 images
(less sensitive to other processes; each round is printed too, to show the spread). On a machine
with 2 cores shared with other work, expect little gain from the second worker: the figure proves the path, not the scaling.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import convc
import convc.distributed
from convc import nn
from convc.distributed import DataParallel


class CifarNet(nn.Module):
    def __init__(self, size: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * (size // 4) ** 2, 10)

    def forward(self, x):
        x = self.pool(nn.relu(self.conv1(x)))
        x = self.pool(nn.relu(self.conv2(x)))
        return self.fc(nn.flatten(x))


def replica(comm, config: dict) -> dict:
    """Train ``config["steps"]`` timed steps (after 3 untimed) on this replica's share."""
    share, size = config["batch"] // comm.world_size, config["size"]
    nn.manual_seed(0)
    trainer = convc.Trainer(CifarNet(size), input_shape=(share, 3, size, size), optimizer=convc.optim.Adam(1e-3),
                            threads=1)
    dp = DataParallel(trainer, comm)
    rng = np.random.default_rng(comm.rank)
    x = rng.standard_normal((share, 3, size, size)).astype(np.float32)
    y = rng.integers(0, 10, share)
    for _ in range(3):
        dp.step(x, y)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(config["steps"]):
        dp.step(x, y)
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=64, help="global batch (default 64)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per round (default 30)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per configuration (default 2)")
    ap.add_argument("--size", type=int, default=32, help="image height and width (default 32)")
    args = ap.parse_args()
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    config = {"batch": args.batch, "steps": args.steps, "size": args.size}
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    try:
        for _ in range(args.rounds):
            for workers in (1, 2):
                results = convc.distributed.run_on_ray(replica, num_workers=workers, config=config)
                wall = max(r["wall"] for r in results)
                rates[workers].append(args.batch * args.steps / wall)
                cpu[workers].append(1000 * sum(r["cpu"] for r in results) / (args.batch * args.steps))
                print(f"round: {workers} worker(s) {rates[workers][-1]:7.1f} images/s, "
                      f"{cpu[workers][-1]:.2f} CPU s per 1000 images", flush=True)
    finally:
        ray.shutdown()
    print(f"data-parallel training, global batch {args.batch}, {args.size}x{args.size} images, "
          f"{args.steps} steps x {args.rounds} rounds, 1 thread per worker")
    for workers in (1, 2):
        print(f"{workers} worker(s): {statistics.median(rates[workers]):7.1f} images/s   "
              f"{statistics.median(cpu[workers]):6.2f} CPU s per 1000 images")
    print(f"2 workers / 1 worker: {statistics.median(rates[2]) / statistics.median(rates[1]):.2f}x images/s")


if __name__ == "__main__":
    main()
