"""Sampled softmax over next-item predictions, with uniform or in-batch negatives,
and the training loss of a sequential recommender built on it."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from generative_recommenders.modeling.sequential import SequentialRecommender

SAMPLING_STRATEGIES = ("local", "in-batch")


def sample_negatives(
    strategy: str,
    positive_ids: torch.Tensor,
    num_negatives: int,
    num_items: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Negative ids ``[P, R]`` for positives ``[P]`` (ids are 1-based).

    ``local``: uniform over the catalogue ``1..num_items``.
    ``in-batch``: uniform over the distinct positives of the batch.
    """
    shape = (positive_ids.numel(), num_negatives)
    if strategy == "local":
        return torch.randint(
            1, num_items + 1, shape, device=positive_ids.device, generator=generator
        )
    if strategy == "in-batch":
        pool = torch.unique(positive_ids)
        offsets = torch.randint(0, pool.numel(), shape, device=pool.device, generator=generator)
        return pool[offsets]
    raise ValueError(f"unknown sampling_strategy {strategy!r}; choose from {SAMPLING_STRATEGIES}")


def sampled_softmax_loss(
    queries: torch.Tensor,
    positive_ids: torch.Tensor,
    positive_embeddings: torch.Tensor,
    negative_ids: torch.Tensor,
    negative_embeddings: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean over positions of ``-log softmax([q.pos, q.neg_1..R] / T)[0]``.

    Args:
        queries: ``[P, D]`` user embeddings at the valid positions.
        positive_ids / positive_embeddings: ``[P]`` / ``[P, D]``, the next items.
        negative_ids / negative_embeddings: ``[P, R]`` / ``[P, R, D]``.
        temperature: logits are divided by it.
    A negative equal to its positive is masked out.
    """
    if queries.size(0) == 0:
        raise ValueError("sampled_softmax_loss got no valid positions")
    positive_logits = (queries * positive_embeddings).sum(-1, keepdim=True) / temperature
    negative_logits = torch.bmm(negative_embeddings, queries.unsqueeze(-1)).squeeze(-1) / temperature
    negative_logits = negative_logits.masked_fill(
        negative_ids == positive_ids.unsqueeze(1), float("-inf")
    )
    logits = torch.cat([positive_logits, negative_logits], dim=1)
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def training_loss(
    model: SequentialRecommender,
    batch: Dict[str, torch.Tensor],
    device: torch.device,
    sampling_strategy: str,
    num_negatives: int,
    temperature: float,
    item_l2_norm: bool,
) -> torch.Tensor:
    """Next-item sampled softmax at every history position (target appended)."""
    lengths = batch["history_lengths"].to(device)
    ids = batch["history_ids"].to(device).scatter(
        1, lengths.view(-1, 1), batch["target_ids"].to(device).view(-1, 1)
    )
    embeddings = model.item_embeddings(ids)
    encoded = model.encode(ids, lengths + 1, batch["history_timestamps"].to(device), embeddings)
    positions = torch.arange(ids.size(1) - 1, device=device)
    valid = positions.unsqueeze(0) < lengths.unsqueeze(1)  # position p predicts ids[:, p + 1]
    queries = encoded[:, :-1][valid]
    positive_ids = ids[:, 1:][valid]
    positive_embeddings = embeddings[:, 1:][valid]
    negative_ids = sample_negatives(sampling_strategy, positive_ids, num_negatives, model.num_items)
    item_table = model.all_item_embeddings()
    if item_l2_norm:
        positive_embeddings = model.normalize_items(positive_embeddings)
        item_table = model.normalize_items(item_table)
    return sampled_softmax_loss(
        queries, positive_ids, positive_embeddings, negative_ids, item_table[negative_ids], temperature
    )
