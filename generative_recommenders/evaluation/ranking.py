"""Full-ranking evaluation of a sequential recommender, chunked over users."""

from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch

from generative_recommenders.evaluation.metrics import MetricAccumulator, target_ranks


@torch.no_grad()
def evaluate_ranking(
    model: torch.nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    device: torch.device,
    rank_cap: Optional[int] = None,
    max_batches: Optional[int] = None,
) -> MetricAccumulator:
    """Ranks each batch's targets against every item; returns summed metrics.

    ``model`` provides ``query_embeddings(ids, lengths, timestamps)``,
    ``all_item_embeddings()`` and ``normalize_items(x)``. Candidate embeddings
    are computed once; memory is bounded by batch size x catalogue size.
    """
    was_training = model.training
    model.eval()
    candidates = model.normalize_items(model.all_item_embeddings())  # [I + 1, D]
    acc = MetricAccumulator()
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        history = batch["history_ids"].to(device)
        queries = model.query_embeddings(
            history, batch["history_lengths"].to(device), batch["history_timestamps"].to(device)
        )
        scores = queries @ candidates.T
        acc.add(target_ranks(scores, batch["target_ids"].to(device), history, rank_cap).cpu())
    model.train(was_training)
    return acc
