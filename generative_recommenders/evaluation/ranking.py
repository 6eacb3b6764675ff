"""Full-ranking evaluation of a sequential recommender, chunked over users."""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import torch

from generative_recommenders.evaluation.metrics import MetricAccumulator, target_ranks
from generative_recommenders.evaluation.target_groups import TargetGroupAccumulator


@torch.no_grad()
def evaluate_ranking(
    model: torch.nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    device: torch.device,
    rank_cap: Optional[int] = None,
    max_batches: Optional[int] = None,
    target_groups: Sequence[TargetGroupAccumulator] = (),
) -> MetricAccumulator:
    """Ranks each batch's targets against every item; returns summed metrics.

    ``model`` provides ``query_embeddings(ids, lengths, timestamps)``,
    ``all_item_embeddings()`` and ``normalize_items(x)``. Candidate embeddings
    are computed once; memory is bounded by batch size x catalogue size.
    Each of ``target_groups`` also gets every batch's ranks and targets (e.g.
    popularity groups, cold items).
    """
    was_training = model.training
    model.eval()
    candidates = model.normalize_items(model.all_item_embeddings())  # [I + 1, D]
    acc = MetricAccumulator()
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        # Pinned batches (on CUDA) copy while the previous chunk is still ranking.
        history, lengths, timestamps, targets = (
            batch[key].to(device, non_blocking=True)
            for key in ("history_ids", "history_lengths", "history_timestamps", "target_ids")
        )
        queries = model.query_embeddings(history, lengths, timestamps)
        scores = queries @ candidates.T  # one matmul per chunk of users
        ranks = target_ranks(scores, targets, history, rank_cap).cpu()
        acc.add(ranks)
        for groups in target_groups:
            groups.add(ranks, targets)
    model.train(was_training)
    return acc
