"""Full-ranking metrics: exact ranks over the whole catalogue, history removed.

Ranks are 1-based and pessimistic on ties: an item scoring exactly as the
target is ranked ahead of it, so a constant scorer cannot look good.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch

HR_KS = (1, 10, 50, 100, 200)
NDCG_KS = (10, 50, 200)
METRIC_NAMES = tuple(
    [f"hr@{k}" for k in HR_KS] + [f"ndcg@{k}" for k in NDCG_KS] + ["mrr"]
)


def exclude_items(scores: torch.Tensor, item_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """A copy of ``scores [B, num_items + 1]`` with padding column 0 and ``item_ids [B, L]`` at -inf.

    ``item_ids`` are 1-based, 0 is padding; -inf ranks below every finite score.
    """
    masked = scores.clone() if item_ids is None else scores.scatter(1, item_ids, float("-inf"))
    masked[:, 0] = float("-inf")
    return masked


REPEATED_TARGET_RULES = ("rank", "miss")
# The rank the paper's code gives a miss: its MAX_K + 1 (research/data/eval.py), whatever the catalogue.
REFERENCE_MISS_RANK = 2501


def target_ranks(
    scores: torch.Tensor,
    target_ids: torch.Tensor,
    history_ids: Optional[torch.Tensor] = None,
    rank_cap: Optional[int] = None,
    repeated_target: str = "rank",
) -> torch.Tensor:
    """Rank of each target among all items.

    Args:
        scores: ``[B, num_items + 1]``; column 0 (padding) never counts.
        target_ids: ``[B]`` 1-based ids.
        history_ids: ``[B, L]`` items removed from the ranking (0 = padding).
        rank_cap: if set, ranks above it become ``rank_cap + 1`` (the
            reference's top-2,500 retrieval).
        repeated_target: what happens to a target that is one of its own
            history items. ``"rank"``: it stays in the ranking and is ranked
            like any other target. ``"miss"`` (the reference: it removes the
            whole history, the target too): the user scores a miss, rank
            ``rank_cap + 1``, or without a cap the paper's
            ``REFERENCE_MISS_RANK`` (2,501), or ``num_items + 1`` where the
            catalogue is larger, so that a miss never ranks above a ranked
            target: a hit at no reported K (HR@K and NDCG@K 0).
    """
    if repeated_target not in REPEATED_TARGET_RULES:
        raise ValueError(f"repeated_target must be one of {REPEATED_TARGET_RULES}, got {repeated_target!r}")
    if not torch.isfinite(scores).all():
        raise FloatingPointError("evaluation scores hold NaN or inf: the model has diverged")
    target_scores = scores.gather(1, target_ids.view(-1, 1))
    # Excluded items drop to -inf, below any finite target; the target then counts itself.
    masked = exclude_items(scores, history_ids)
    masked.scatter_(1, target_ids.view(-1, 1), target_scores)
    ranks = (masked >= target_scores).sum(dim=1)
    if repeated_target == "miss" and history_ids is not None:
        repeated = (history_ids == target_ids.view(-1, 1)).any(dim=1)
        miss = max(REFERENCE_MISS_RANK, scores.size(1)) if rank_cap is None else rank_cap + 1
        ranks = torch.where(repeated, torch.full_like(ranks, miss), ranks)
    if rank_cap is not None:
        ranks = torch.where(ranks > rank_cap, torch.full_like(ranks, rank_cap + 1), ranks)
    return ranks


def metrics_from_ranks(ranks: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per-user HR@K (rank <= K), NDCG@K (1/log2(rank + 1) if rank <= K) and MRR (1/rank)."""
    ranks = ranks.to(torch.float64)
    out: Dict[str, torch.Tensor] = {}
    for k in HR_KS:
        out[f"hr@{k}"] = (ranks <= k).to(torch.float64)
    for k in NDCG_KS:
        out[f"ndcg@{k}"] = torch.where(ranks <= k, 1.0 / torch.log2(ranks + 1), 0.0)
    out["mrr"] = 1.0 / ranks
    return out


class MetricAccumulator:
    """Sums per-user metrics and counts users, so shards can be added exactly."""

    def __init__(self) -> None:
        self.sums: Dict[str, float] = {name: 0.0 for name in METRIC_NAMES}
        self.count = 0

    def add(self, ranks: torch.Tensor) -> None:
        for name, values in metrics_from_ranks(ranks).items():
            self.sums[name] += float(values.sum())
        self.count += int(ranks.numel())

    def means(self) -> Dict[str, float]:
        if self.count == 0:
            raise ValueError("no users were evaluated")
        return {name: total / self.count for name, total in self.sums.items()}


DEFAULT_REPORTED = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@200", "mrr")


def format_metrics(metrics: Dict[str, float], names: Sequence[str] = DEFAULT_REPORTED) -> str:
    """``names`` that ``metrics`` has (all of its metrics if it has none of them, e.g. AUC and Logloss)."""
    shown = [name for name in names if name in metrics] or list(metrics)
    return ", ".join(f"{name.upper()} {metrics[name]:.4f}" for name in shown)
