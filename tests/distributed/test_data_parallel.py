"""convc.distributed.DataParallel with an in-process engine: 2 replicas on 2 threads averaging
through a barrier (the Ray and torch.distributed engines run the same code in tests/distributed)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import assert_matches_one_process

import convc
from convc.distributed import Allreduce, DataParallel, SingleProcess


class ThreadedAllreduce:
    """One replica of a group of threads: each collective waits for every rank's buffer."""

    def __init__(self, shared: dict, rank: int, world_size: int):
        self.shared, self.rank, self.world_size = shared, rank, world_size

    def _exchange(self, buffer: np.ndarray) -> list[np.ndarray]:
        barrier = self.shared["barrier"]
        self.shared[self.rank] = buffer.copy()
        barrier.wait()
        parts = [self.shared[r] for r in range(self.world_size)]
        barrier.wait()
        return parts

    def allreduce(self, buffer: np.ndarray) -> None:
        parts = self._exchange(buffer)
        total = parts[0].copy()
        for part in parts[1:]:
            total += part
        buffer[...] = total / self.world_size

    def broadcast(self, buffer: np.ndarray, root: int = 0) -> None:
        buffer[...] = self._exchange(buffer)[root]


def run_threads(fn, config: dict, world: int = 2) -> list:
    shared = {"barrier": threading.Barrier(world, timeout=120)}
    results: list = [None] * world
    errors: list = []

    def replica(rank: int) -> None:
        try:
            results[rank] = fn(ThreadedAllreduce(shared, rank, world), config)
        except BaseException as e:  # noqa: BLE001  re-raised below
            errors.append(e)
            shared["barrier"].abort()
    threads = [threading.Thread(target=replica, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def test_the_engines_implement_the_protocol():
    assert isinstance(SingleProcess(), Allreduce)
    assert isinstance(ThreadedAllreduce({}, 0, 2), Allreduce)
    with pytest.raises(convc.InputError, match="must implement convc.distributed.Allreduce"):
        DataParallel(object(), object())


@pytest.mark.slow  # the references compile 6 training steps
def test_two_replicas_equal_one_process_on_the_global_batch(references):
    import replicas
    assert_matches_one_process(run_threads(replicas.train, {"optimizers": list(references)}), references)


@pytest.mark.slow
def test_replicas_start_from_rank_0_and_only_rank_0_saves(references, tmp_path):
    import replicas

    def start(comm, config):
        trainer = replicas.trainer("sgd", replicas.GLOBAL_BATCH // comm.world_size, seed=10 + comm.rank)
        before = trainer.weights()
        dp = DataParallel(trainer, comm)
        return before, trainer.weights(), dp.save(tmp_path / f"rank{comm.rank}.npz")
    (own0, after0, saved0), (own1, after1, saved1) = run_threads(start, {})
    assert not np.array_equal(own0["conv.weight"], own1["conv.weight"])  # seeded apart
    for name in own0:
        np.testing.assert_array_equal(after0[name], own0[name])
        np.testing.assert_array_equal(after1[name], own0[name])
    assert (saved0, saved1) == (True, False)
    assert (tmp_path / "rank0.npz").is_file() and not (tmp_path / "rank1.npz").exists()
