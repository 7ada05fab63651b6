"""Minimal batching over numpy arrays: ``convc.data.DataLoader``.

    loader = convc.data.DataLoader(x, y, batch_size=32, shuffle=True, seed=0, drop_last=True)
    for epoch in range(3):
        for xb, yb in loader:            # a new order every epoch, the same on every run
            trainer.step(xb, yb)

A data-parallel replica takes its share of every global batch with ``rank`` and ``world_size``:
all replicas draw the same permutation (same seed, same epoch), split each global batch in
``world_size`` equal, contiguous parts and take part ``rank``, so the replicas together see exactly
the batches one process would (convc/distributed). Pure numpy; nothing here compiles.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from convc.errors import InputError
from convc.limits import positive_int

__all__ = ["DataLoader"]


class DataLoader:
    """Batches of equal-length arrays (first axis = samples), as tuples in the order given.

    ``batch_size``: samples per (global) batch. ``shuffle``: a new permutation every epoch, drawn
    from ``seed`` and the epoch number (``set_epoch``, or counted by each full iteration), so a run is
    reproducible and a resumed run can continue from its epoch. ``drop_last``: leave out the last
    batch when it is partial (a Trainer compiles a step per batch size). ``rank``/``world_size``:
    this replica's contiguous share of each global batch (``batch_size`` must divide by
    ``world_size``). A partial last batch is split as evenly as it goes (``np.array_split``) and a
    replica left without samples skips it; data-parallel training wants ``drop_last=True``: every
    replica then takes every step with an equal share, the condition for matching one process."""

    def __init__(self, *arrays: Any, batch_size: int, shuffle: bool = False, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1):
        if not arrays:
            raise InputError("DataLoader needs at least one array")
        self.arrays = [np.asarray(a) for a in arrays]
        lengths = [a.shape[0] if a.ndim else None for a in self.arrays]
        if None in lengths or len(set(lengths)) != 1:
            raise InputError(f"DataLoader's arrays must have the same number of samples along their first axis; "
                             f"got shapes {[a.shape for a in self.arrays]}")
        self.batch_size = positive_int("batch_size", batch_size, optional=False)
        self.world_size = positive_int("world_size", world_size, optional=False)
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.world_size:
            raise InputError(f"rank={rank!r} must be an integer in [0, world_size={self.world_size})")
        if self.batch_size % self.world_size:
            raise InputError(f"batch_size={self.batch_size} (the global batch) must be a multiple of "
                             f"world_size={self.world_size}, so that every replica gets an equal share")
        self.rank = int(rank)
        self.shuffle, self.seed, self.drop_last = bool(shuffle), int(seed), bool(drop_last)
        self.samples = lengths[0]
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration uses (as torch's DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        """The sample indices of the current epoch, in the order they are batched."""
        if not self.shuffle:
            return np.arange(self.samples)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.samples)

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        order = self.order()
        for b in range(len(self)):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            share = np.array_split(batch, self.world_size)[self.rank]
            if share.size == 0:
                continue
            if not self.shuffle and share.size and share[-1] - share[0] + 1 == share.size:
                picked = [np.ascontiguousarray(a[share[0]:share[-1] + 1]) for a in self.arrays]  # a view's copy
            else:
                picked = [a[share] for a in self.arrays]
            yield tuple(picked)
        self.epoch += 1
