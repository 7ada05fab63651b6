"""Data-parallel training on any engine that can average a numpy buffer: ``convc.distributed``.

    comm = convc.distributed.TorchAllreduce()          # or RayAllreduce (convc.distributed.on_ray), ...
    trainer = convc.Trainer(model, input_shape=(32 // comm.world_size, 3, 32, 32), optimizer=...)
    dp = convc.distributed.DataParallel(trainer, comm)  # every replica now holds rank 0's weights
    loader = convc.data.DataLoader(x, y, batch_size=32, shuffle=True, seed=0, drop_last=True,
                                   rank=comm.rank, world_size=comm.world_size)
    for xb, yb in loader:
        loss = dp.step(xb, yb)                          # the global batch's mean loss
    dp.save("ckpt.npz")                                 # rank 0 writes; the others return False

A step is the Trainer's gradient API with one collective in between, as PyTorch DDP and Horovod
do it: ``compute_gradients`` (forward, loss, backward into ``trainer.gradients``, one contiguous
float32 buffer), ``allreduce`` of that buffer with the loss appended (the mean over replicas: one
collective per step), ``apply_gradients`` (the compiled optimizer update, natively). Each
replica's gradient is of its share's mean loss, so with equal shares the mean is the gradient of
the global batch: training equals one process on the global batch for any optimizer (SGD,
momentum, Adam: float32 drift, tests/distributed).

The engine is a tiny protocol (``Allreduce``): ``rank``, ``world_size``, ``allreduce(buffer)``
(in place, the mean) and ``broadcast(buffer, root)`` (in place). ``TorchAllreduce`` drives it with
torch.distributed (gloo), ``run_on_ray`` (convc/distributed/on_ray.py) with plain Ray actors; mpi4py fits in a few
lines (``comm.Allreduce(MPI.IN_PLACE, buf); buf /= size``).

BatchNorm: each replica normalizes its own share with that share's statistics and updates its
own running statistics (per-replica statistics, PyTorch DDP's default without SyncBatchNorm):
the gradients then equal one process accumulating the replicas' shares as micro-batches, not one
process on the whole global batch. The running statistics of the replicas differ; rank 0's are
the ones saved. ``sync_running_stats=True`` averages the running statistics over the replicas
after every step (one more allreduce), so every replica predicts alike. Synchronized batch
statistics in the forward pass (SyncBatchNorm) are not offered: they need a collective inside the
compiled step.
"""
from __future__ import annotations

import os
from typing import Any, Protocol, runtime_checkable

import numpy as np

from convc.errors import InputError

__all__ = ["Allreduce", "DataParallel", "RayAllreduce", "SingleProcess", "TorchAllreduce", "run_on_ray"]


def __getattr__(name: str):
    """The Ray backend loads on first use: ``import convc.distributed`` needs no Ray."""
    if name in ("RayAllreduce", "run_on_ray"):
        from convc.distributed import on_ray
        return getattr(on_ray, name)
    raise AttributeError(f"module 'convc.distributed' has no attribute {name!r}")


@runtime_checkable
class Allreduce(Protocol):
    """What ``DataParallel`` needs from a communication engine."""
    rank: int
    world_size: int

    def allreduce(self, buffer: np.ndarray) -> None:
        """Replace ``buffer`` (C-contiguous) in place by its mean over all replicas; every replica
        must end with the same bytes."""

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> None:
        """Replace ``buffer`` in place by rank ``root``'s."""


class SingleProcess:
    """The engine of one replica: nothing to exchange (benchmarks, tests, a loop that runs alone)."""
    rank, world_size = 0, 1

    def allreduce(self, buffer: np.ndarray) -> None:
        pass

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> None:
        pass


class TorchAllreduce:
    """``Allreduce`` over a torch.distributed process group (gloo on CPU): the numpy buffer is
    shared with a tensor (``torch.from_numpy``), summed in place and divided by the world size.
    ``torchrun`` or ``torch.distributed.init_process_group`` must have set the group up; Ray
    Train's TorchTrainer does that on each of its workers too."""

    def __init__(self, group: Any = None):
        import torch.distributed as dist
        if not dist.is_initialized():
            raise InputError("TorchAllreduce needs an initialized process group: call "
                             "torch.distributed.init_process_group('gloo', ...) first (torchrun sets its environment)")
        self._dist, self._group = dist, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)

    def _tensor(self, buffer: np.ndarray):
        import torch
        if not buffer.flags.c_contiguous or not buffer.flags.writeable:
            raise InputError("allreduce/broadcast need a writeable, C-contiguous buffer")
        return torch.from_numpy(buffer)

    def allreduce(self, buffer: np.ndarray) -> None:
        t = self._tensor(buffer)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self._group)
        t.div_(self.world_size)

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> None:
        self._dist.broadcast(self._tensor(buffer), src=root, group=self._group)


class DataParallel:
    """A ``convc.Trainer`` replicated over ``comm.world_size`` processes (see the module docstring).

    Building it broadcasts rank 0's training state (weights, running statistics, optimizer state,
    step counter) to every replica, so they start identical whatever their seeds."""

    def __init__(self, trainer: Any, comm: Allreduce, *, sync_running_stats: bool = False):
        if not isinstance(comm, Allreduce):
            raise InputError(f"comm must implement convc.distributed.Allreduce (rank, world_size, allreduce, "
                             f"broadcast); got {type(comm).__name__}")
        self.trainer, self.comm = trainer, comm
        self.sync_running_stats = bool(sync_running_stats)
        self._packed: np.ndarray | None = None  # the gradients and the loss, averaged in one allreduce
        state = trainer.state_dict()
        for name in sorted(state):  # the same order on every replica
            buf = np.ascontiguousarray(state[name])
            comm.broadcast(buf, 0)
            state[name] = buf
        trainer.load_state_dict(state)

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def world_size(self) -> int:
        return self.comm.world_size

    def step(self, x: Any, y: Any) -> float:
        """One data-parallel step on this replica's share (x, y) of the global batch; every replica
        calls it with an equal share. Returns the global batch's mean loss (before the update)."""
        trainer = self.trainer
        loss = trainer.compute_gradients(x, y)
        grads = trainer.gradients
        # the loss rides with the gradients: one collective per step, whose latency (not the
        # copy in and out) is what a small model's step waits for (4 ms through Ray here)
        if self._packed is None or self._packed.size != grads.size + 1:
            self._packed = np.empty(grads.size + 1, np.float32)
        self._packed[:-1] = grads
        self._packed[-1] = loss
        self.comm.allreduce(self._packed)
        grads[...] = self._packed[:-1]
        trainer.apply_gradients()
        if self.sync_running_stats and trainer.plan.running:
            state = trainer.state_dict()
            stats = {name: np.ascontiguousarray(state[name]) for name in trainer.plan.running}
            for buf in stats.values():
                self.comm.allreduce(buf)
            trainer.load_state_dict(stats, strict=False)
        return float(self._packed[-1])

    def save(self, path: str | os.PathLike) -> bool:
        """Rank 0 writes the checkpoint (``Trainer.save``); returns whether this replica wrote it."""
        if self.comm.rank != 0:
            return False
        self.trainer.save(path)
        return True
