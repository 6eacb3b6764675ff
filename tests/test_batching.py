from collections import Counter

import numpy as np
import pytest
import torch

from generative_recommenders.data.batching import LengthBucketedBatchSampler, history_lengths


def _lengths(n=1000, seed=0):
    return np.random.default_rng(seed).integers(1, 201, n)


@pytest.mark.parametrize("n, batch_size, pool_batches", [(1000, 32, 8), (1000, 32, 1), (7, 3, 2), (0, 4, 2)])
def test_every_example_once_per_epoch_in_batches_of_the_size(n, batch_size, pool_batches):
    sampler = LengthBucketedBatchSampler(_lengths(n), batch_size, seed=1, pool_batches=pool_batches)
    batches = list(sampler)
    assert Counter(i for batch in batches for i in batch) == Counter(range(n))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert len(batches) == len(sampler)


def test_batches_hold_similar_lengths():
    lengths = _lengths()
    sampler = LengthBucketedBatchSampler(lengths, 32, seed=1, pool_batches=10)
    bucketed_padding = sum(len(b) * lengths[b].max() - lengths[b].sum() for b in sampler.batches())
    order = np.random.default_rng(1).permutation(len(lengths))
    random_padding = sum(
        len(b) * lengths[b].max() - lengths[b].sum() for b in np.array_split(order, len(sampler))
    )
    assert bucketed_padding < random_padding / 4


def test_order_depends_only_on_seed_and_epoch():
    def epoch_order(seed, epoch):
        sampler = LengthBucketedBatchSampler(_lengths(), 16, seed=seed)
        sampler.set_position(epoch)
        return list(sampler)

    assert epoch_order(3, 0) == epoch_order(3, 0)
    assert epoch_order(3, 0) != epoch_order(3, 1)
    assert epoch_order(3, 0) != epoch_order(4, 0)


def test_it_drives_a_data_loader():
    dataset = [{"history_ids": np.arange(n)} for n in (5, 1, 9, 2, 5, 8)]
    lengths = history_lengths(dataset)
    assert lengths.tolist() == [5, 1, 9, 2, 5, 8]
    sampler = LengthBucketedBatchSampler(lengths, 2, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=lambda examples: examples)
    seen = sorted(len(e["history_ids"]) for batch in loader for e in batch)
    assert seen == sorted(lengths.tolist())
    # Pools are sorted by length: the two longest share a batch.
    assert any({len(e["history_ids"]) for e in batch} == {8, 9} for batch in loader)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="batch_size"):
        LengthBucketedBatchSampler([1, 2], 0, seed=0)
    with pytest.raises(ValueError, match="pool_batches"):
        LengthBucketedBatchSampler([1, 2], 2, seed=0, pool_batches=0)


def test_a_resumed_epoch_yields_the_batches_after_the_skipped_ones():
    sampler = LengthBucketedBatchSampler(_lengths(100), 8, seed=2)
    sampler.set_position(5)
    whole = list(sampler)
    sampler.set_position(5, skip_batches=3)
    assert list(sampler) == whole[3:] and len(sampler) == len(whole) - 3
    sampler.set_position(5, skip_batches=len(whole) + 1)
    assert list(sampler) == [] and len(sampler) == 0
