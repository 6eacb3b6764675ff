import math

import pytest
import torch

from generative_recommenders.evaluation.metrics import (
    MetricAccumulator,
    metrics_from_ranks,
    target_ranks,
)


def test_ranks_by_hand_with_history_removed():
    # Items 1..5 (column 0 is padding and must never count, even with the top score).
    scores = torch.tensor(
        [
            [9.0, 0.1, 0.5, 0.9, 0.3, 0.7],  # target 2 (0.5): 0.9 and 0.7 ahead -> rank 3
            [9.0, 0.1, 0.5, 0.9, 0.3, 0.7],  # same, but 3 and 5 are history -> rank 1
            [9.0, 0.1, 0.5, 0.9, 0.3, 0.7],  # target 3 in its own history stays ranked -> 1
        ]
    )
    targets = torch.tensor([2, 2, 3])
    history = torch.tensor([[0, 0], [3, 5], [3, 1]])
    assert target_ranks(scores, targets, history).tolist() == [3, 1, 1]


def test_ties_are_pessimistic():
    scores = torch.tensor([[0.0, 0.5, 0.5, 0.5, 0.1]])
    # Two other items tie with the target: both are ranked ahead of it.
    assert target_ranks(scores, torch.tensor([2])).tolist() == [3]
    constant = torch.zeros(1, 101)
    assert target_ranks(constant, torch.tensor([7])).tolist() == [100]


def test_rank_cap():
    scores = torch.arange(10, dtype=torch.float32).flip(0).unsqueeze(0)  # item k has score 9 - k
    assert target_ranks(scores, torch.tensor([8])).tolist() == [8]
    assert target_ranks(scores, torch.tensor([8]), rank_cap=5).tolist() == [6]


def test_nan_scores_are_an_error():
    with pytest.raises(FloatingPointError):
        target_ranks(torch.tensor([[0.0, float("nan"), 1.0]]), torch.tensor([1]))


def test_metric_values_by_hand():
    m = metrics_from_ranks(torch.tensor([1, 3, 11, 250]))
    assert m["hr@1"].tolist() == [1, 0, 0, 0]
    assert m["hr@10"].tolist() == [1, 1, 0, 0]
    assert m["hr@50"].tolist() == [1, 1, 1, 0]
    assert m["hr@200"].tolist() == [1, 1, 1, 0]
    assert m["ndcg@10"].tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert m["ndcg@50"].tolist() == pytest.approx([1.0, 0.5, 1 / math.log2(12), 0.0])
    assert m["mrr"].tolist() == pytest.approx([1.0, 1 / 3, 1 / 11, 1 / 250])


def test_accumulator_averages_over_users_across_chunks():
    acc = MetricAccumulator()
    acc.add(torch.tensor([1, 3]))
    acc.add(torch.tensor([11]))
    means = acc.means()
    assert acc.count == 3
    assert means["hr@10"] == pytest.approx(2 / 3)
    assert means["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)
    with pytest.raises(ValueError):
        MetricAccumulator().means()


def _ranks_one_by_one(scores, targets, history, rank_cap=None):
    """Each user's rank counted item by item: the definition, not the vectorized code."""
    ranks = []
    for b in range(scores.size(0)):
        target = int(targets[b])
        removed = {int(i) for i in history[b]} - {target}
        ahead = sum(
            1 for item in range(1, scores.size(1))
            if item != target and item not in removed and scores[b, item] >= scores[b, target]
        )
        rank = ahead + 1
        ranks.append(rank_cap + 1 if rank_cap is not None and rank > rank_cap else rank)
    return ranks


@pytest.mark.parametrize("rank_cap", [None, 7])
def test_ranks_equal_the_item_by_item_count(rank_cap):
    generator = torch.Generator().manual_seed(4)
    # Few distinct scores: many ties; histories with padding, repeats and the target itself.
    scores = torch.randint(0, 6, (20, 31), generator=generator).float()
    targets = torch.randint(1, 31, (20,), generator=generator)
    history = torch.randint(0, 31, (20, 9), generator=generator)
    history[::3, 0] = targets[::3]
    history[1::4, -3:] = 0
    expected = _ranks_one_by_one(scores, targets, history, rank_cap)
    assert target_ranks(scores, targets, history, rank_cap).tolist() == expected
