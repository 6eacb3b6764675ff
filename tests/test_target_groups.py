"""Popularity groups and the cold-item split on hand-made data."""

import numpy as np
import pytest
import torch

from generative_recommenders.data.cold_items import split_cold_items, training_item_counts
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.evaluation.metrics import MetricAccumulator
from generative_recommenders.evaluation.target_groups import cold_item_group, popularity_groups


def dataset(sequences, num_items):
    return SequenceDataset.from_item_sequences("hand", num_items, sequences)


# Counts of items 1..6 (1-based): 10, 6, 4, 2, 1, 0; 23 in all, cumulatively 10, 16, 20, 22, 23.
COUNTS = np.array([0, 10, 6, 4, 2, 1, 0])


def test_boundaries_by_cumulative_interaction_share():
    groups = popularity_groups(COUNTS)
    # 50% of 23 is reached by item 2 (16): head = count >= 6; 80% (18.4) by item 3 (20): torso = 4..5.
    assert groups.item_group.tolist() == [-1, 0, 0, 1, 2, 2, 2]
    head, torso, tail = (groups.description[name] for name in ("head", "torso", "tail"))
    assert (head["num_items"], head["min_count"], head["max_count"]) == (2, 6, 10)
    assert (torso["num_items"], torso["min_count"], torso["max_count"]) == (1, 4, 4)
    assert (tail["num_items"], tail["min_count"], tail["max_count"]) == (3, 0, 2)
    assert head["interaction_share"] == pytest.approx(16 / 23)
    assert tail["interaction_share"] == pytest.approx(3 / 23)


def test_equal_counts_share_a_group():
    groups = popularity_groups(np.array([0, 5, 5, 5, 5]))
    assert groups.item_group.tolist() == [-1, 0, 0, 0, 0]
    results = groups.results()
    assert results["tail"] == {"num_users": 0} and results["groups"]["tail"]["num_items"] == 0


def test_metrics_per_group_and_shard_merge():
    groups = popularity_groups(COUNTS)
    targets, ranks = torch.tensor([1, 3, 5, 6, 2]), torch.tensor([1, 2, 10, 100, 11])
    groups.add(ranks[:3], targets[:3])
    other = popularity_groups(COUNTS)
    other.add(ranks[3:], targets[3:])
    groups.merge(other)
    results = groups.results()
    assert results["head"]["num_users"] == 2 and results["head"]["hr@10"] == 0.5  # ranks 1 and 11
    assert results["head"]["mrr"] == pytest.approx((1 + 1 / 11) / 2)
    assert results["torso"]["num_users"] == 1 and results["torso"]["ndcg@10"] == pytest.approx(1 / np.log2(3))
    assert results["tail"]["num_users"] == 2 and results["tail"]["hr@10"] == 0.5  # ranks 10 and 100
    overall = MetricAccumulator()
    overall.add(ranks)
    assert sum(results[g]["num_users"] for g in ("head", "torso", "tail")) == overall.count
    assert "rule" in results["groups"]


def test_bad_shares_and_empty_counts():
    with pytest.raises(ValueError, match="head_share < torso_share"):
        popularity_groups(COUNTS, head_share=0.8, torso_share=0.5)
    with pytest.raises(ValueError, match="no training interactions"):
        popularity_groups(np.zeros(4, dtype=np.int64))


def test_training_counts_leave_out_the_held_out_items():
    data = dataset([[0, 1, 2, 3], [1, 1, 0], [2]], num_items=4)
    assert training_item_counts(data).tolist() == [0, 1, 2, 0, 0]  # [0, 1] and [1]
    assert training_item_counts(data, num_held_out=1).tolist() == [0, 1, 3, 1, 0]


def test_cold_item_split_removes_cold_items_from_training_only():
    rng = np.random.default_rng(0)
    data = dataset([rng.integers(0, 20, size=rng.integers(3, 12)) for _ in range(50)], num_items=20)
    split = split_cold_items(data, cold_item_share=0.1, seed=5)
    cold = split.cold_item_ids - 1
    assert len(cold) == 2 and np.array_equal(cold, np.unique(cold))
    removed = 0
    for user, items in enumerate(data.item_ids):
        train, held_out = items[:-2], items[-2:]
        kept = np.isin(train, cold, invert=True)
        expected = np.concatenate([train[kept], held_out])
        assert split.training_data.item_ids[user].tolist() == expected.tolist()
        times = np.concatenate([data.timestamps[user][:-2][kept], data.timestamps[user][-2:]])
        assert split.training_data.timestamps[user].tolist() == times.tolist()
        removed += int((~kept).sum())
    assert split.num_removed_interactions == removed > 0
    expected_users = [u for u, items in enumerate(data.item_ids) if items[-1] in cold]
    assert split.cold_users.tolist() == expected_users and expected_users
    assert training_item_counts(split.training_data)[split.cold_item_ids].sum() == 0
    again = split_cold_items(data, cold_item_share=0.1, seed=5)
    assert np.array_equal(again.cold_item_ids, split.cold_item_ids)
    assert split.summary() == {
        "num_cold_items": 2, "num_cold_users": len(expected_users), "num_removed_interactions": removed
    }


def test_cold_item_group_counts_cold_targets_only():
    group = cold_item_group(np.array([2, 4]), num_items=5)
    group.add(torch.tensor([3, 1, 20]), torch.tensor([2, 1, 4]))  # target 1 is not cold
    results = group.results()
    assert results["cold_items"]["num_users"] == 2
    assert results["cold_items"]["hr@10"] == 0.5 and results["cold_items"]["mrr"] == pytest.approx((1 / 3 + 1 / 20) / 2)
    assert results["groups"] == {"num_items": 2}
    with pytest.raises(ValueError, match="cold_item_share"):
        split_cold_items(dataset([[0, 1, 2]], 3), cold_item_share=0.0, seed=0)
