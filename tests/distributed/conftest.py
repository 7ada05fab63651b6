"""Shared by the data-parallel tests: one compile cache for the process and its workers (the
replicas then load the training steps this process compiled), and the one-process references."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """Turn the compile cache on (tests/conftest.py turns it off) in a fresh directory, for this
    process and the workers it starts, with tests/distributed importable by them."""
    saved = {k: os.environ.get(k) for k in ("CONVC_NO_CACHE", "CONVC_CACHE_DIR", "PYTHONPATH")}
    os.environ.pop("CONVC_NO_CACHE", None)
    os.environ["CONVC_CACHE_DIR"] = str(tmp_path_factory.mktemp("convc-cache"))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), saved["PYTHONPATH"]] if p)
    yield {k: os.environ[k] for k in ("CONVC_CACHE_DIR", "PYTHONPATH")}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def references(shared_cache):
    """One process on the global batch per optimizer, and replica-sized Trainers compiled once
    so that the replicas' compiles are cache hits."""
    import replicas
    ref = replicas.single_process(replicas.OPTIMIZERS)
    for name in replicas.OPTIMIZERS:
        replicas.trainer(name, replicas.GLOBAL_BATCH // replicas.WORLD)
    return ref


def assert_matches_one_process(results: list[dict], reference: dict) -> None:
    """Every replica ends with the one-process weights (1e-5 relative) and reports its losses."""
    for name, want in reference.items():
        for rank, res in enumerate(results):
            got = res[name]
            assert got["steps"] == want["steps"] == 5
            np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5, err_msg=f"{name} rank {rank}")
            for p, w in want["weights"].items():
                np.testing.assert_allclose(got["weights"][p], w, rtol=1e-5, atol=1e-6,
                                           err_msg=f"{name}: {p} of rank {rank}")
        for p in want["weights"]:  # the replicas agree bit for bit
            np.testing.assert_array_equal(results[0][name]["weights"][p], results[1][name]["weights"][p])
