"""convc.distributed driven by torch.distributed (gloo): 2 spawned replicas equal one process on
the global batch for SGD, momentum and Adam."""
from __future__ import annotations

import multiprocessing
import socket

import pytest
from conftest import assert_matches_one_process

pytest.importorskip("torch.distributed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_replicas(config: dict, world: int = 2) -> list[dict]:
    import replicas
    ctx = multiprocessing.get_context("spawn")
    queue, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=replicas.torch_replica, args=(rank, world, port, config, queue))
             for rank in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict(queue.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


@pytest.mark.slow
def test_two_torch_replicas_equal_one_process_on_the_global_batch(references):
    assert_matches_one_process(run_replicas({"optimizers": list(references)}), references)


def test_torch_allreduce_needs_a_process_group():
    import convc
    from convc.distributed import TorchAllreduce
    with pytest.raises(convc.InputError, match="init_process_group"):
        TorchAllreduce()
