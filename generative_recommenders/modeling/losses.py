"""Sampled softmax over next-item predictions, with uniform or in-batch negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

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
