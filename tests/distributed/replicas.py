"""What the data-parallel tests run on each replica and in one process (importable by Ray and
spawned workers: tests/distributed goes on their PYTHONPATH)."""
from __future__ import annotations

import threading

import numpy as np

import convc
from convc import nn
from convc.data import DataLoader
from convc.distributed import DataParallel, SingleProcess

GLOBAL_BATCH, STEPS, WORLD = 16, 5, 2
OPTIMIZERS = {"sgd": lambda: convc.optim.SGD(0.05), "momentum": lambda: convc.optim.SGD(0.05, momentum=0.9),
              "adam": lambda: convc.optim.Adam(0.01)}


class SmallNet(nn.Module):
    """Conv 3x3 -> (BN) -> ReLU -> Linear: 9x7 images leave vector remainders."""

    def __init__(self, bn: bool):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6) if bn else None
        self.fc = nn.Linear(6 * 9 * 7, 5)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.fc(nn.flatten(nn.relu(x)))


def dataset() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    n = GLOBAL_BATCH * STEPS
    return rng.standard_normal((n, 2, 9, 7)).astype(np.float32), rng.integers(0, 5, n)


_SEEDING = threading.Lock()  # convc.nn's generator is global: replicas on threads seed and build in turn


def trainer(optimizer: str, batch: int, bn: bool = False, seed: int = 0) -> convc.Trainer:
    with _SEEDING:
        nn.manual_seed(seed)
        net = SmallNet(bn)
    return convc.Trainer(net, input_shape=(batch, 2, 9, 7), optimizer=OPTIMIZERS[optimizer](), threads=1)


def train(comm, config: dict) -> dict:
    """``config["optimizers"]`` trained for STEPS data-parallel steps on this replica's shares;
    each replica starts from its own random weights (seed + rank): DataParallel must broadcast
    rank 0's. Returns per optimizer the weights, the losses and the running statistics."""
    x, y = dataset()
    results = {}
    for name in config["optimizers"]:
        t = trainer(name, GLOBAL_BATCH // comm.world_size, config.get("bn", False), seed=comm.rank)
        dp = DataParallel(t, comm, sync_running_stats=config.get("sync", False))
        loader = DataLoader(x, y, batch_size=GLOBAL_BATCH, shuffle=True, seed=1, drop_last=True,
                            rank=comm.rank, world_size=comm.world_size)
        losses = [dp.step(xb, yb) for xb, yb in loader]
        results[name] = {"weights": t.weights(), "losses": losses, "steps": t.steps_done}
    return results


def single_process(optimizers) -> dict:
    """The same training in one process on the global batch."""
    return train(SingleProcess(), {"optimizers": list(optimizers)})


def accumulated_shares(world: int = WORLD) -> dict:
    """With BatchNorm, what replica 0 of ``world`` computes, in one process: each global batch's
    shares as micro-batches (the last one rank 0's, whose statistics the running ones take), the
    gradients summed and divided by ``world``, then one update."""
    x, y = dataset()
    t = trainer("sgd", GLOBAL_BATCH // world, bn=True)
    losses = []
    for xb, yb in DataLoader(x, y, batch_size=GLOBAL_BATCH, shuffle=True, seed=1, drop_last=True):
        shares = list(zip(np.array_split(xb, world), np.array_split(yb, world)))
        loss = 0.0
        for i, (xs, ys) in enumerate(reversed(shares)):
            loss += t.compute_gradients(xs, ys, accumulate=i > 0)
        t.gradients[...] /= world
        t.apply_gradients()
        losses.append(loss / world)
    return {"weights": t.weights(), "losses": losses, "steps": t.steps_done}


def torch_replica(rank: int, world: int, port: int, config: dict, results) -> None:
    """A replica under torch.distributed (gloo), as torchrun would start it."""
    import torch.distributed as dist

    from convc.distributed import TorchAllreduce
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results.put((rank, train(TorchAllreduce(), config)))
    finally:
        dist.destroy_process_group()
