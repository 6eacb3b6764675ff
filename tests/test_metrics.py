import math

import numpy as np
import pytest
import torch

from generative_recommenders.data.dataset import SequenceView, collate_sequences
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.evaluation.metrics import (
    MetricAccumulator,
    metrics_from_ranks,
    target_ranks,
)
from generative_recommenders.evaluation.ranking import evaluate_ranking


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


# Items 1..5 scored 0.1, 0.5, 0.9, 0.3, 0.7 (column 0 is padding).
ITEM_SCORES = torch.tensor([9.0, 0.1, 0.5, 0.9, 0.3, 0.7])


@pytest.mark.parametrize(
    "rule, rank_cap, expected",
    [
        # Target 3 (0.9) repeats history item 3: ranked, nothing ahead -> 1.
        # Target 2 (0.5), history 3 and 5 removed -> 1. Target 5 (0.7), no history: 3 ahead -> 2.
        # Target 4 (0.3) repeats (twice): 2, 3 and 5 ahead -> 4.
        ("rank", None, [1, 1, 2, 4]),
        # The reference's rule: a repeated target is a miss, the paper's rank 2,501 in any smaller catalogue ...
        ("miss", None, [2501, 1, 2, 2501]),
        # ... or one past the cap; the cap also turns the ranked 4 into 3.
        ("miss", 2, [3, 1, 2, 3]),
        ("rank", 2, [1, 1, 2, 3]),
    ],
)
def test_repeated_targets_ranked_or_missed(rule, rank_cap, expected):
    scores = ITEM_SCORES.expand(4, -1)
    targets = torch.tensor([3, 2, 5, 4])
    history = torch.tensor([[3, 1], [3, 5], [0, 0], [4, 4]])
    assert target_ranks(scores, targets, history, rank_cap, repeated_target=rule).tolist() == expected


def test_repeated_target_rule_is_checked():
    with pytest.raises(ValueError, match="repeated_target must be one of"):
        target_ranks(ITEM_SCORES.view(1, -1), torch.tensor([1]), repeated_target="drop")


class FixedScores(torch.nn.Module):
    """Scores every user's candidates with ITEM_SCORES: a one-dimensional item table, query 1."""

    def query_embeddings(self, ids, lengths, timestamps):
        return torch.ones(ids.size(0), 1)

    def all_item_embeddings(self):
        return ITEM_SCORES.view(-1, 1)

    def normalize_items(self, embeddings):
        return embeddings


def _sequences(*users):
    """0-based item sequences (ids shift by +1 in the views)."""
    return SequenceDataset(
        name="hand-made",
        num_items=5,
        item_ids=[np.array(u, dtype=np.int64) for u in users],
        ratings=[np.ones(len(u), dtype=np.float32) for u in users],
        timestamps=[np.arange(len(u), dtype=np.int64) for u in users],
        maps={},
    )


@pytest.mark.parametrize(
    "max_sequence_length, rule, ranks",
    [
        # User 0's last item (id 3) repeats its first: ranked 1, or a miss (rank 2,501).
        (50, "rank", [1, 1, 2]),
        (50, "miss", [2501, 1, 2]),
        # Truncated to one item, user 0's history no longer holds its target: ranked; user 1's
        # history is item 5 alone, so item 3 (0.9) is ahead of its target 2.
        (1, "miss", [1, 2, 2]),
    ],
)
def test_evaluation_of_a_dataset_with_a_repeated_target(max_sequence_length, rule, ranks):
    data = _sequences([2, 0, 2], [2, 4, 1], [0, 3, 3, 4])
    view = SequenceView(data, max_sequence_length, ignore_last_n=0)
    batches = [collate_sequences([view[i] for i in range(len(view))])]
    acc = evaluate_ranking(FixedScores(), batches, torch.device("cpu"), repeated_target=rule)
    assert acc.count == 3
    assert acc.means()["mrr"] == pytest.approx(sum(1 / r for r in ranks) / 3)
    assert acc.means()["hr@1"] == pytest.approx(sum(r == 1 for r in ranks) / 3)


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


def _ranks_one_by_one(scores, targets, history, rank_cap=None, rule="rank"):
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
        if rule == "miss" and target in {int(i) for i in history[b]}:
            rank = max(2501, scores.size(1))  # the paper's MAX_K + 1, or past a larger catalogue
        ranks.append(rank_cap + 1 if rank_cap is not None and rank > rank_cap else rank)
    return ranks


@pytest.mark.parametrize("rule", ["rank", "miss"])
@pytest.mark.parametrize("rank_cap", [None, 7])
def test_ranks_equal_the_item_by_item_count(rank_cap, rule):
    generator = torch.Generator().manual_seed(4)
    # Few distinct scores: many ties; histories with padding, repeats and the target itself.
    scores = torch.randint(0, 6, (20, 31), generator=generator).float()
    targets = torch.randint(1, 31, (20,), generator=generator)
    history = torch.randint(0, 31, (20, 9), generator=generator)
    history[::3, 0] = targets[::3]
    history[1::4, -3:] = 0
    expected = _ranks_one_by_one(scores, targets, history, rank_cap, rule)
    assert target_ranks(scores, targets, history, rank_cap, rule).tolist() == expected


def test_a_repeated_target_is_a_miss_at_every_reported_k_in_a_catalogue_smaller_than_every_k():
    """60 items, every target repeats a history item: the paper's code counts 0 hits at any K
    (rank MAX_K + 1 = 2,501), not HR@100 = 1 as rank num_items + 1 = 61 would."""
    num_items, users = 60, 8
    scores = torch.rand(users, num_items + 1, generator=torch.Generator().manual_seed(0))
    targets = torch.arange(1, users + 1)
    history = torch.stack([targets, targets + 20], dim=1)  # each history holds its own target
    ranks = target_ranks(scores, targets, history, repeated_target="miss")
    assert ranks.tolist() == [2501] * users
    acc = MetricAccumulator()
    acc.add(ranks)
    means = acc.means()
    assert all(means[f"hr@{k}"] == 0.0 for k in (1, 10, 50, 100, 200))
    assert all(means[f"ndcg@{k}"] == 0.0 for k in (10, 50, 200))
    assert means["mrr"] == pytest.approx(1 / 2501)


def test_a_miss_ranks_past_a_catalogue_larger_than_the_papers_cap():
    scores = torch.zeros(1, 3001)  # 3,000 items all tied: a ranked target is last of those ranked
    ranks = target_ranks(scores, torch.tensor([5]), torch.tensor([[5]]), repeated_target="miss")
    assert ranks.tolist() == [3001]
    assert target_ranks(scores, torch.tensor([5]), torch.tensor([[6]]), repeated_target="miss").tolist() == [2999]
