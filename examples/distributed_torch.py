"""Data-parallel training of a small CNN with convc, torch.distributed (gloo) moving the gradients.

    torchrun --nproc_per_node=2 examples/distributed_torch.py    # one process per replica
    python examples/distributed_torch.py                          # starts 2 replicas itself

Each replica compiles the same training step for its share of the global batch (32 = 2 x 16),
starts from rank 0's weights (DataParallel broadcasts them), takes its share of every batch from
convc.data.DataLoader (same seeded shuffle on every rank) and averages its gradients with the
others once per step (TorchAllreduce: torch.distributed.all_reduce on the numpy buffer). Rank 0
prints the global loss, evaluates and saves the checkpoint. The result equals one process training
on the global batch (tests/distributed). Needs torch (CPU) and scikit-learn.
"""
from __future__ import annotations

import os
import socket
import sys

import numpy as np
from sklearn.datasets import load_digits

import convc
from convc import nn
from convc.data import DataLoader
from convc.distributed import DataParallel, TorchAllreduce

GLOBAL_BATCH, EPOCHS = 32, 3


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(nn.relu(self.conv1(x)))
        x = self.pool(nn.relu(self.conv2(x)))
        return self.fc(nn.flatten(x))


def replica(checkpoint: str = "digits_dp.npz") -> dict | None:
    """One replica's training loop; torch.distributed's process group is set up already."""
    comm = TorchAllreduce()
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    x_train, y_train, x_test, y_test = x[:1440], y[:1440], x[1440:], y[1440:]
    nn.manual_seed(comm.rank)  # different on purpose: DataParallel starts every replica from rank 0's weights
    trainer = convc.Trainer(DigitsCNN(), input_shape=(GLOBAL_BATCH // comm.world_size, 1, 8, 8),
                            optimizer=convc.optim.Adam(3e-3), threads=1)
    dp = DataParallel(trainer, comm)
    loader = DataLoader(x_train, y_train, batch_size=GLOBAL_BATCH, shuffle=True, seed=0, drop_last=True,
                        rank=comm.rank, world_size=comm.world_size)
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        losses = [dp.step(xb, yb) for xb, yb in loader]
        if comm.rank == 0:
            print(f"epoch {epoch + 1}: global train loss {np.mean(losses):.4f}", flush=True)
    if comm.rank != 0:
        return None
    metrics = trainer.evaluate(x_test, y_test)
    print(f"rank 0 of {comm.world_size}: test accuracy {metrics['accuracy']:.4f}; checkpoint {checkpoint}")
    dp.save(checkpoint)
    return metrics


def _spawned(rank: int, world: int, port: int) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        replica()
    finally:
        dist.destroy_process_group()


def main(world: int = 2) -> None:
    if "RANK" in os.environ:  # started by torchrun: it set up the rendezvous
        import torch.distributed as dist
        dist.init_process_group("gloo")
        try:
            replica()
        finally:
            dist.destroy_process_group()
        return
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_spawned, args=(world, port), nprocs=world)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
