"""Data-parallel training on Ray with plain actors: ``run_on_ray(train_fn, num_workers)``.

    def train_fn(comm, config):                      # runs on every worker, as Ray Train's loop does
        trainer = convc.Trainer(...)
        dp = convc.distributed.DataParallel(trainer, comm)
        ...
        return trainer.weights() if comm.rank == 0 else None
    results = convc.distributed.run_on_ray(train_fn, num_workers=2, config={...})

The allreduce is a star through one async actor (``_Rendezvous``): each replica sends its buffer,
the actor sums the buffers in rank order once all are in, divides by the world size and hands the
same array back to every replica. Why not Ray's own collectives: ``ray.util.collective`` runs on
CPUs only through pygloo, which has no wheel for current Pythons (none installs here), and Ray
Train's data-parallel trainers bring a torch process group (TorchTrainer) or no collective at
all; users who have torch can run the same ``train_fn`` inside Ray Train's TorchTrainer with
``TorchAllreduce()`` as its ``comm``. A star moves 2 x world_size buffers per step through one
actor: fine for the CNNs convc trains (a few MB of gradients), not for hundreds of replicas.
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np

from convc.errors import InputError
from convc.limits import positive_int

__all__ = ["RayAllreduce", "run_on_ray"]


class _Meeting:
    def __init__(self) -> None:
        self.parts: dict[int, Any] = {}
        self.done = asyncio.Event()
        self.result: Any = None
        self.taken = 0


class _RendezvousImpl:
    """Collects one contribution per rank for each numbered collective, combines them once all are
    in, and answers every rank with the same result (an async actor: ranks wait concurrently)."""

    def __init__(self, world_size: int):
        self.world_size = world_size
        self.meetings: dict[int, _Meeting] = {}

    async def _meet(self, key: int, rank: int, value: Any, combine: Callable[[dict], Any]) -> Any:
        meeting = self.meetings.setdefault(key, _Meeting())
        meeting.parts[rank] = value
        if len(meeting.parts) == self.world_size:
            meeting.result = combine(meeting.parts)
            meeting.done.set()
        else:
            await meeting.done.wait()
        meeting.taken += 1
        if meeting.taken == self.world_size:
            del self.meetings[key]
        return meeting.result

    async def allreduce(self, key: int, rank: int, buffer: np.ndarray) -> np.ndarray:
        def mean(parts: dict) -> np.ndarray:
            total = np.array(parts[0], copy=True)
            for r in range(1, self.world_size):
                total += parts[r]
            total /= self.world_size
            return total
        return await self._meet(key, rank, buffer, mean)

    async def broadcast(self, key: int, rank: int, buffer: np.ndarray | None, root: int) -> np.ndarray:
        return await self._meet(key, rank, buffer if rank == root else None, lambda parts: parts[root])


class RayAllreduce:
    """``convc.distributed.Allreduce`` for one replica of a Ray job (``run_on_ray`` builds them)."""

    def __init__(self, rendezvous: Any, rank: int, world_size: int):
        self._rendezvous, self.rank, self.world_size = rendezvous, rank, world_size
        self._calls = 0  # every replica makes the same collectives in the same order: this numbers them

    def _next(self) -> int:
        self._calls += 1
        return self._calls

    def allreduce(self, buffer: np.ndarray) -> None:
        import ray
        buffer[...] = ray.get(self._rendezvous.allreduce.remote(self._next(), self.rank, buffer))

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> None:
        import ray
        key = self._next()
        buffer[...] = ray.get(self._rendezvous.broadcast.remote(key, self.rank, buffer if self.rank == root else None,
                                                                root))


def _replica(train_fn: Callable[[RayAllreduce, Any], Any], rendezvous: Any, rank: int, world_size: int,
             config: Any) -> Any:
    return train_fn(RayAllreduce(rendezvous, rank, world_size), config)


def run_on_ray(train_fn: Callable[[Any, Any], Any], num_workers: int = 2, config: Any = None, *,
               cpus_per_worker: float = 1, timeout: float = 60.0) -> list[Any]:
    """Run ``train_fn(comm, config)`` on ``num_workers`` Ray workers at once (one per rank, each
    reserving ``cpus_per_worker`` CPUs) and return their results in rank order. Ray must be
    initialized (``ray.init()``, or a cluster address). The workers are gang-scheduled through a
    placement group: when the cluster cannot hold them all within ``timeout`` seconds, an
    InputError says so instead of leaving half the replicas waiting for the others forever. A
    replica that raises stops the others and its exception is raised here."""
    try:
        import ray
        from ray.util.placement_group import placement_group, remove_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
    except ImportError:
        raise InputError("convc.distributed.run_on_ray needs Ray: pip install 'convc[distributed]'") from None
    world = positive_int("num_workers", num_workers, optional=False)
    if not ray.is_initialized():
        ray.init()
    group = placement_group([{"CPU": cpus_per_worker}] * world, strategy="PACK")
    try:
        ready, _ = ray.wait([group.ready()], timeout=timeout)
        if not ready:
            raise InputError(f"run_on_ray: the Ray cluster cannot run {world} workers of {cpus_per_worker} CPU(s) "
                             f"at once (it has {ray.cluster_resources().get('CPU', 0)} CPUs); lower num_workers or "
                             "cpus_per_worker")
        rendezvous = ray.remote(num_cpus=0)(_RendezvousImpl).remote(world)
        task = ray.remote(_replica)
        # no retries: a replica run again would restart its collectives while the others wait further on
        refs = [task.options(num_cpus=cpus_per_worker, max_retries=0,
                             scheduling_strategy=PlacementGroupSchedulingStrategy(
                                 placement_group=group, placement_group_bundle_index=rank))
                .remote(train_fn, rendezvous, rank, world, config) for rank in range(world)]
        pending = list(refs)
        while pending:  # a replica that fails leaves the others waiting in a collective: stop them
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done)
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
        return ray.get(refs)
    finally:
        remove_placement_group(group)
