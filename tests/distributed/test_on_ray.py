"""convc on a local Ray cluster of 2 workers: batch inference with Ray Data's map_batches (the
README's recipe) and data-parallel training with convc.distributed.run_on_ray."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
from conftest import assert_matches_one_process

import convc
import convc.distributed
import convc.models

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

pytestmark = pytest.mark.slow  # a Ray cluster starts in seconds; each test is one job on it


@pytest.fixture(scope="module")
def cluster(shared_cache):
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": shared_cache})
    yield
    ray.shutdown()


class Predict:
    """The README's Ray Data recipe: each actor unpickles the model once and runs any batch."""

    def __init__(self, model):
        self.model = model

    def __call__(self, batch: dict) -> dict:
        return {"output": self.model(batch["data"])}


def test_ray_data_map_batches_equals_one_process(cluster):
    model = convc.compile(convc.models.lenet5(batch=None), threads=1).compile_batches(32)
    images = np.random.default_rng(5).standard_normal((300, 1, 28, 28)).astype(np.float32)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.from_numpy(images).map_batches(Predict, fn_constructor_args=(model,), batch_size=50,
                                                 concurrency=2, num_cpus=1, batch_format="numpy")
    out = np.stack([row["output"] for row in ds.take_all()])
    # batches of 50 ran as 32 + 18 * 1 on the workers; here: the same chunks
    want = np.concatenate([np.concatenate([model(images[i:i + 32])] + [model(images[j:j + 1])
                                                                        for j in range(i + 32, i + 50)])
                           for i in range(0, 300, 50)])
    np.testing.assert_array_equal(out, want)
    assert len(pickle.dumps(model)) < 4 * 2**20


def test_two_ray_replicas_equal_one_process_on_the_global_batch(cluster, references):
    import replicas
    results = convc.distributed.run_on_ray(replicas.train, num_workers=2, config={"optimizers": list(references)})
    assert_matches_one_process(results, references)


def test_batchnorm_statistics_are_per_replica_unless_synchronized(cluster, shared_cache):
    """Documented behaviour: each replica normalizes its share with its own statistics, so the
    update equals one process accumulating the shares as micro-batches; the running statistics
    differ between replicas (rank 0's are saved) unless sync_running_stats averages them."""
    import replicas
    want = replicas.accumulated_shares()
    per_replica = convc.distributed.run_on_ray(replicas.train, 2, {"optimizers": ["sgd"], "bn": True})
    got = [r["sgd"] for r in per_replica]
    for p, w in want["weights"].items():
        np.testing.assert_allclose(got[0]["weights"][p], w, rtol=1e-5, atol=1e-6, err_msg=p)
    np.testing.assert_allclose(got[0]["losses"], want["losses"], rtol=1e-5)
    assert not np.allclose(got[0]["weights"]["bn.running_mean"], got[1]["weights"]["bn.running_mean"])
    np.testing.assert_array_equal(got[0]["weights"]["conv.weight"], got[1]["weights"]["conv.weight"])
    synced = [r["sgd"] for r in convc.distributed.run_on_ray(replicas.train, 2, {"optimizers": ["sgd"], "bn": True,
                                                                                  "sync": True})]
    for name in ("bn.running_mean", "bn.running_var"):
        np.testing.assert_array_equal(synced[0]["weights"][name], synced[1]["weights"][name])


def test_run_on_ray_says_when_the_cluster_is_too_small(cluster):
    import replicas
    with pytest.raises(convc.InputError, match="cannot run 3 workers"):
        convc.distributed.run_on_ray(replicas.train, num_workers=3, config={}, timeout=2)


def _fails_on_rank_1(comm, config):
    import numpy as np
    if comm.rank == 1:
        raise convc.InputError("replica 1 cannot go on")
    comm.allreduce(np.ones(4, np.float32))  # waits for rank 1, which never comes
    return "unreachable"


def test_a_failing_replica_stops_the_job(cluster):
    with pytest.raises(convc.InputError, match="replica 1 cannot go on"):
        convc.distributed.run_on_ray(_fails_on_rank_1, num_workers=2)
