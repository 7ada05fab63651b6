"""convc.data.DataLoader: batches, seeded shuffles, drop_last and data-parallel shares."""
from __future__ import annotations

import numpy as np
import pytest

import convc
from convc.data import DataLoader


@pytest.fixture
def data():
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    y = np.arange(10, dtype=np.int64)
    return x, y


def test_batches_in_order_with_a_partial_last_batch(data):
    x, y = data
    loader = DataLoader(x, y, batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3  # 10 = 4 + 4 + 2
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(batches[1][0], x[4:8])
    assert all(b[0].flags.c_contiguous and b[0].dtype == np.float32 for b in batches)


def test_drop_last_leaves_out_the_partial_batch(data):
    loader = DataLoader(*data, batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert [b[1].tolist() for b in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_shuffle_is_seeded_new_every_epoch_and_keeps_pairs_together(data):
    x, y = data
    first = DataLoader(x, y, batch_size=3, shuffle=True, seed=5)
    second = DataLoader(x, y, batch_size=3, shuffle=True, seed=5)
    epoch0 = [b[1].tolist() for b in first]
    epoch1 = [b[1].tolist() for b in first]
    assert epoch0 == [b[1].tolist() for b in second]  # same seed, same epoch: same order
    assert epoch0 != epoch1 and first.epoch == 2
    assert sorted(sum(epoch0, [])) == list(range(10))  # every sample once
    for xb, yb in first:
        np.testing.assert_array_equal(xb, x[yb])
    assert [b[1].tolist() for b in DataLoader(x, y, batch_size=3, shuffle=True, seed=6)] != epoch0
    second.set_epoch(1)
    assert [b[1].tolist() for b in second] == epoch1  # a resumed run continues the same sequence


@pytest.mark.parametrize("shuffle", [False, True])
def test_replicas_together_see_the_global_batches(data, shuffle):
    x, y = data
    whole = [b[1] for b in DataLoader(x, y, batch_size=4, shuffle=shuffle, seed=1, drop_last=True)]
    shares = [[b[1] for b in DataLoader(x, y, batch_size=4, shuffle=shuffle, seed=1, drop_last=True, rank=r,
                                        world_size=2)] for r in range(2)]
    for i, batch in enumerate(whole):
        np.testing.assert_array_equal(np.concatenate([shares[0][i], shares[1][i]]), batch)
        assert len(shares[0][i]) == len(shares[1][i]) == 2


def test_bad_arguments_are_input_errors(data):
    x, y = data
    with pytest.raises(convc.InputError, match="same number of samples"):
        DataLoader(x, y[:9], batch_size=2)
    with pytest.raises(convc.InputError, match="batch_size=0 must be a positive integer"):
        DataLoader(x, batch_size=0)
    with pytest.raises(convc.InputError, match="batch_size=5 .* multiple of world_size=2"):
        DataLoader(x, batch_size=5, world_size=2)
    with pytest.raises(convc.InputError, match=r"rank=2 must be an integer in \[0, world_size=2\)"):
        DataLoader(x, batch_size=4, rank=2, world_size=2)
    with pytest.raises(convc.InputError, match="at least one array"):
        DataLoader(batch_size=4)
