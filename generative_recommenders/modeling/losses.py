"""Sampled softmax over next-item predictions, with uniform or in-batch negatives,
and the training loss of a sequential recommender built on it."""

from __future__ import annotations

from typing import Dict, Optional

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
    candidate_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Negative ids ``[P, R]`` for positives ``[P]`` (ids are 1-based).

    ``local``: uniform over the catalogue ``1..num_items``, or over ``candidate_ids``
    (1-based ids, e.g. the catalogue without the items held out of training: an item
    only ever drawn as a negative would be learned as one nobody wants).
    ``in-batch``: uniform over the distinct positives of the batch.
    """
    shape = (positive_ids.numel(), num_negatives)
    if strategy == "local":
        if candidate_ids is not None:  # on the positives' device
            return candidate_ids[torch.randint(0, candidate_ids.numel(), shape, device=candidate_ids.device, generator=generator)]
        return torch.randint(
            1, num_items + 1, shape, device=positive_ids.device, generator=generator
        )
    if strategy == "in-batch":
        pool = torch.unique(positive_ids)
        offsets = torch.randint(0, pool.numel(), shape, device=pool.device, generator=generator)
        return pool[offsets]
    raise ValueError(f"unknown sampling_strategy {strategy!r}; choose from {SAMPLING_STRATEGIES}")


def _softmax_over_negatives(
    positive_logits: torch.Tensor,
    negative_logits: torch.Tensor,
    positive_ids: torch.Tensor,
    negative_ids: torch.Tensor,
) -> torch.Tensor:
    negative_logits = negative_logits.masked_fill(
        negative_ids == positive_ids.unsqueeze(1), float("-inf")
    )
    logits = torch.cat([positive_logits.unsqueeze(1), negative_logits], dim=1)
    return -F.log_softmax(logits, dim=1)[:, 0].mean()


def _check_positions(queries: torch.Tensor) -> None:
    if queries.size(0) == 0:
        raise ValueError("sampled_softmax_loss got no valid positions")


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
    _check_positions(queries)
    positive_logits = (queries * positive_embeddings).sum(-1) / temperature
    negative_logits = torch.bmm(negative_embeddings, queries.unsqueeze(-1)).squeeze(-1) / temperature
    return _softmax_over_negatives(positive_logits, negative_logits, positive_ids, negative_ids)


def sampled_softmax_loss_from_table(
    queries: torch.Tensor,
    positive_ids: torch.Tensor,
    positive_embeddings: torch.Tensor,
    negative_ids: torch.Tensor,
    item_table: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`sampled_softmax_loss` with ``negative_embeddings = item_table[negative_ids]``.

    Scores every position against the whole table (one matmul) and picks the
    negatives' logits, instead of gathering ``[P, R, D]`` embeddings: cheaper
    while the catalogue is small next to ``R * D``.
    """
    _check_positions(queries)
    positive_logits = (queries * positive_embeddings).sum(-1) / temperature
    negative_logits = torch.gather(queries @ item_table.T, 1, negative_ids) / temperature
    return _softmax_over_negatives(positive_logits, negative_logits, positive_ids, negative_ids)


NEGATIVE_SCORINGS = ("auto", "per_sample", "gathered", "item_table")
# Scoring the whole table beats gathering [P, R, D] negatives up to a catalogue of about
# 60-100 items per negative on a CPU (benchmarks/sampled_softmax.py); the margin is kept.
_ITEM_TABLE_MAX_ITEMS_PER_NEGATIVE = 32


def resolve_negative_scoring(negative_scoring: str, num_items: int, num_negatives: int, num_positions: int) -> str:
    """The concrete scoring ``auto`` stands for (others are returned as they are).

    ``auto``: ``item_table`` up to 32 items per negative; ``per_sample`` when the
    step samples fewer negatives (``num_positions * num_negatives``) than there
    are items, so that a huge catalogue is never embedded whole; else ``gathered``.
    """
    if negative_scoring not in NEGATIVE_SCORINGS:
        raise ValueError(f"unknown negative_scoring {negative_scoring!r}; choose from {NEGATIVE_SCORINGS}")
    if negative_scoring != "auto":
        return negative_scoring
    if num_items + 1 <= _ITEM_TABLE_MAX_ITEMS_PER_NEGATIVE * num_negatives:
        return "item_table"
    return "per_sample" if num_items + 1 > num_positions * num_negatives else "gathered"


def training_loss(
    model: SequentialRecommender,
    batch: Dict[str, torch.Tensor],
    device: torch.device,
    sampling_strategy: str,
    num_negatives: int,
    temperature: float,
    negative_scoring: str = "auto",
    negative_item_ids: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Next-item sampled softmax at every history position (target appended); ``local``
    negatives from ``negative_item_ids`` when given (see :func:`sample_negatives`).

    ``negative_scoring`` says how the sampled negatives are embedded and scored,
    all giving the same loss:

    * ``per_sample``: the item embedding module runs on every sampled negative
      (the reference: with text, each negative's text is projected on its own);
    * ``gathered``: every item is embedded (and normalized) once per step, the
      negatives' rows are gathered;
    * ``item_table``: the same table, scored against every position in one
      matmul, the negatives' logits picked from it;
    * ``auto``: see :func:`resolve_negative_scoring`.
    """
    lengths = batch["history_lengths"].to(device, non_blocking=True)
    num_positions = int(batch["history_lengths"].sum())
    scoring = resolve_negative_scoring(negative_scoring, model.num_items, num_negatives, num_positions)
    target_ids = batch["target_ids"].to(device, non_blocking=True)
    ids = batch["history_ids"].to(device, non_blocking=True).scatter(
        1, lengths.view(-1, 1), target_ids.view(-1, 1)
    )
    item_table = None if scoring == "per_sample" else model.all_item_embeddings()
    embeddings = model.item_embeddings(ids) if item_table is None else item_table[ids]
    timestamps = batch["history_timestamps"].to(device, non_blocking=True)
    encoded = model.encode(ids, lengths + 1, timestamps, embeddings)
    positions = torch.arange(ids.size(1) - 1, device=device)
    valid = positions.unsqueeze(0) < lengths.unsqueeze(1)  # position p predicts ids[:, p + 1]
    queries = encoded[:, :-1][valid]
    positive_ids = ids[:, 1:][valid]
    positive_embeddings = embeddings[:, 1:][valid]
    negative_ids = sample_negatives(
        sampling_strategy, positive_ids, num_negatives, model.num_items, candidate_ids=negative_item_ids
    )
    positive_embeddings = model.normalize_items(positive_embeddings)
    if item_table is None:
        negative_embeddings = model.normalize_items(model.item_embeddings(negative_ids))
        return sampled_softmax_loss(
            queries, positive_ids, positive_embeddings, negative_ids, negative_embeddings, temperature
        )
    item_table = model.normalize_items(item_table)
    if scoring == "gathered":
        return sampled_softmax_loss(
            queries, positive_ids, positive_embeddings, negative_ids, item_table[negative_ids], temperature
        )
    return sampled_softmax_loss_from_table(
        queries, positive_ids, positive_embeddings, negative_ids, item_table, temperature
    )


def binary_cross_entropy_with_negatives(
    positive_logits: torch.Tensor,
    negative_logits: torch.Tensor,
    positive_ids: torch.Tensor,
    negative_ids: torch.Tensor,
) -> torch.Tensor:
    """Mean over positions of ``-log sigmoid(pos) - mean_r log(1 - sigmoid(neg_r))``.

    ``positive_logits [P]``, ``negative_logits [P, R]``; a negative equal to its
    positive is left out of its position's mean (its label would contradict the
    positive's), so the positive and its negatives weigh the same at every position.
    """
    _check_positions(positive_logits)
    kept = (negative_ids != positive_ids.unsqueeze(1)).to(negative_logits.dtype)
    negative_terms = (F.softplus(negative_logits) * kept).sum(1) / kept.sum(1).clamp(min=1)
    return (F.softplus(-positive_logits) + negative_terms).mean()


def predicting_positions(lengths: torch.Tensor, width: int, last_position_only: bool) -> torch.Tensor:
    """``[B, width]``: the history positions whose output predicts the next item and is trained:
    every one (``p < lengths``), or only the last (``p == lengths - 1``, the one predicting the target)."""
    positions = torch.arange(width, device=lengths.device).unsqueeze(0)
    if last_position_only:
        return positions == (lengths - 1).unsqueeze(1)
    return positions < lengths.unsqueeze(1)


def binary_cross_entropy_loss(
    model: SequentialRecommender,
    batch: Dict[str, torch.Tensor],
    device: torch.device,
    num_negatives: int,
    temperature: float = 1.0,
    item_l2_norm: bool = False,
    negative_item_ids: Optional[torch.Tensor] = None,
    last_position_only: bool = False,
) -> torch.Tensor:
    """Next-item binary cross-entropy at every history position, uniform negatives (GRE-B's SASRec).

    Each position's logits are ``q . e / temperature`` for the next item (label 1)
    and ``num_negatives`` items drawn uniformly from the catalogue, or from
    ``negative_item_ids`` (label 0); see :func:`binary_cross_entropy_with_negatives`.
    ``last_position_only``: only the last history position, which predicts the
    target, counts (GRE-B's per-position samples, ``data/per_position.py``).
    """
    lengths = batch["history_lengths"].to(device, non_blocking=True)
    target_ids = batch["target_ids"].to(device, non_blocking=True)
    ids = batch["history_ids"].to(device, non_blocking=True).scatter(
        1, lengths.view(-1, 1), target_ids.view(-1, 1)
    )
    embeddings = model.item_embeddings(ids)
    encoded = model.encode(ids, lengths + 1, batch["history_timestamps"].to(device), embeddings)
    predicts_next = predicting_positions(lengths, ids.size(1) - 1, last_position_only)
    queries = encoded[:, :-1][predicts_next]
    positive_ids = ids[:, 1:][predicts_next]
    negative_ids = sample_negatives("local", positive_ids, num_negatives, model.num_items, candidate_ids=negative_item_ids)
    positive_embeddings = embeddings[:, 1:][predicts_next]
    negative_embeddings = model.item_embeddings(negative_ids)
    if item_l2_norm:
        positive_embeddings = model.normalize_items(positive_embeddings)
        negative_embeddings = model.normalize_items(negative_embeddings)
    positive_logits = (queries * positive_embeddings).sum(-1) / temperature
    negative_logits = torch.einsum("pd,prd->pr", queries, negative_embeddings) / temperature
    return binary_cross_entropy_with_negatives(positive_logits, negative_logits, positive_ids, negative_ids)
