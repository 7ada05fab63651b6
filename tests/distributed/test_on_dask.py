"""The README's Dask recipes on a local cluster of 2 worker processes: a pickled compiled model
with a free batch runs every chunk on the workers (client.submit and dask.array.map_blocks)
exactly as in this process, and no worker compiles."""
from __future__ import annotations

import numpy as np
import pytest

import convc
import convc.models

pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.slow  # two worker processes start and import convc


def _compiles_nothing() -> None:
    import convc.codegen.module as module

    def refuse(*args, **kwargs):
        raise AssertionError("a Dask worker compiled")
    module.emit_module = refuse


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as c:
        c.run(_compiles_nothing)
        yield c


@pytest.fixture(scope="module")
def model():
    return convc.compile(convc.models.lenet5(batch=None), threads=1).compile_batches(32)


def reference(model, images, chunk):
    """This process, running each chunk as a worker does: 32s, then batch 1."""
    out = []
    for i in range(0, len(images), chunk):
        part = images[i:i + chunk]
        full = len(part) // 32 * 32
        out += [model(part[j:j + 32]) for j in range(0, full, 32)]
        out += [model(part[j:j + 1]) for j in range(full, len(part))]
    return np.concatenate(out)


def test_client_submit_with_a_broadcast_model(client, model):
    images = np.random.default_rng(9).standard_normal((200, 1, 28, 28)).astype(np.float32)
    remote = client.scatter(model, broadcast=True)
    futures = [client.submit(lambda m, x: m(x), remote, images[i:i + 70]) for i in range(0, 200, 70)]
    out = np.concatenate(client.gather(futures))
    np.testing.assert_array_equal(out, reference(model, images, 70))
    assert len(set(client.run(lambda: __import__("os").getpid()).values())) == 2


def test_dask_array_map_blocks(client, model):
    import dask.array as da
    images = np.random.default_rng(10).standard_normal((150, 1, 28, 28)).astype(np.float32)
    x = da.from_array(images, chunks=(40, 1, 28, 28))
    y = x.map_blocks(model, chunks=(40, 10), drop_axis=[2, 3], dtype=np.float32, meta=np.empty((0, 10), np.float32))
    np.testing.assert_array_equal(y.compute(), reference(model, images, 40))
