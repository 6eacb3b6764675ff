"""Length-bucketed batches: sequences of similar length share a batch, so little is padded.

Each epoch, examples are shuffled, cut into pools of ``pool_batches`` batches,
sorted by length within a pool and cut into batches; the batches are then
shuffled. Every example appears once per epoch; the order depends only on
``(seed, epoch)``, so an interrupted epoch can resume after its first batches.
Use it as a DataLoader's ``batch_sampler``.
"""

from __future__ import annotations

from typing import Iterator, List, Sequence

import numpy as np
import torch


def history_lengths(dataset: torch.utils.data.Dataset) -> np.ndarray:
    """The history length of every example of a dataset of ``{"history_ids": ...}`` dicts."""
    return np.array([len(dataset[i]["history_ids"]) for i in range(len(dataset))], dtype=np.int64)


class LengthBucketedBatchSampler(torch.utils.data.Sampler[List[int]]):
    """Yields lists of example indices; ``set_position`` picks the epoch's order (and where to start).

    Args:
        lengths: each example's sequence length.
        batch_size: examples per batch (the last batch of a pool may be smaller).
        seed: with the epoch, fixes the order.
        pool_batches: how many batches' worth of examples are sorted together:
            larger pools pad less but make batches less random.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int, pool_batches: int = 50) -> None:
        if batch_size < 1 or pool_batches < 1:
            raise ValueError(f"batch_size and pool_batches must be >= 1, got {batch_size} and {pool_batches}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.pool_batches = pool_batches
        self.epoch = 0
        self.skip_batches = 0

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        """The epoch to draw, starting after its first ``skip_batches`` batches."""
        self.epoch = epoch
        self.skip_batches = skip_batches

    def batches(self) -> List[np.ndarray]:
        """The epoch's batches, the skipped ones included."""
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        pool_size = self.batch_size * self.pool_batches
        batches = []
        for start in range(0, len(order), pool_size):
            pool = order[start : start + pool_size]
            pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches.extend(pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[List[int]]:
        return (batch.tolist() for batch in self.batches()[self.skip_batches :])

    def __len__(self) -> int:
        pool_size = self.batch_size * self.pool_batches
        full_pools, rest = divmod(len(self.lengths), pool_size)
        return max(0, full_pools * self.pool_batches + -(-rest // self.batch_size) - self.skip_batches)
