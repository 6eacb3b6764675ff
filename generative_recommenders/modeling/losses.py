"""Sampled softmax over next-item predictions, with uniform or in-batch negatives,
and the training loss of a sequential recommender built on it."""

from __future__ import annotations

from typing import Counter, Dict, Optional

import torch
import torch.nn.functional as F

from generative_recommenders.modeling.sequential import SequentialRecommender
from generative_recommenders.ops.tiles import tile_bounds

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


# Positions per chunk of :class:`_ChunkedNegativeLogits`: [chunk, R, D] gathered rows stay
# within about 2 MiB, in cache between the gather and the batched dot product (at least
# ops.tiles.MIN_TILE positions: a bmm over a batch of one rounds differently).
_CHUNK_ELEMENTS = 1 << 19


class _ChunkedNegativeLogits(torch.autograd.Function):
    """``bmm(table[negative_ids], queries[..., None])[..., 0]`` (``[P, R]``) without the ``[P, R, D]`` tensor.

    Forward and backward gather a chunk of positions' rows at a time; the table's
    gradient is accumulated row by row in the order of ``negative_ids``, as the
    backward of ``table[negative_ids]`` does at one thread, and every product
    is the same ``bmm`` call on the same rows: loss and gradients are
    bit-identical to the gathered computation's at one thread. (With more
    threads the gathered table gradient is summed by parallel atomic adds, in
    no fixed order; this one stays deterministic.) Under CUDA autocast the
    logits are computed in float32.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, queries: torch.Tensor, table: torch.Tensor, negative_ids: torch.Tensor) -> torch.Tensor:
        num_positions, num_negatives = negative_ids.shape
        # On an accelerator one chunk: its memory is wide, and each chunk would cost kernel launches.
        chunk = _CHUNK_ELEMENTS // max(1, num_negatives * table.size(1)) if table.device.type == "cpu" else num_positions
        bounds = tile_bounds(num_positions, chunk)
        logits = queries.new_empty(num_positions, num_negatives)
        for begin, end in bounds:
            rows = table.index_select(0, negative_ids[begin:end].reshape(-1)).view(end - begin, num_negatives, -1)
            logits[begin:end] = torch.bmm(rows, queries[begin:end].unsqueeze(-1)).squeeze(-1)
        ctx.save_for_backward(queries, table, negative_ids)
        ctx.bounds = bounds
        return logits

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_logits: torch.Tensor):
        queries, table, negative_ids = ctx.saved_tensors
        num_negatives = negative_ids.size(1)
        grad_queries = torch.empty_like(queries) if ctx.needs_input_grad[0] else None
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        for begin, end in ctx.bounds:
            grad = grad_logits[begin:end].unsqueeze(-1)  # [c, R, 1], as bmm's backward sees it
            ids = negative_ids[begin:end].reshape(-1)
            if grad_queries is not None:
                rows = table.index_select(0, ids).view(end - begin, num_negatives, -1)
                grad_queries[begin:end] = torch.bmm(rows.transpose(1, 2), grad).squeeze(-1)
            if grad_table is not None:
                outer = torch.bmm(grad, queries[begin:end].unsqueeze(1))  # [c, R, D]
                grad_table.index_add_(0, ids, outer.view(ids.numel(), -1))
        return grad_queries, grad_table, None


def sampled_softmax_loss_chunked(
    queries: torch.Tensor,
    positive_ids: torch.Tensor,
    positive_embeddings: torch.Tensor,
    negative_ids: torch.Tensor,
    item_table: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """:func:`sampled_softmax_loss` with ``negative_embeddings = item_table[negative_ids]``, the
    negatives' logits computed a chunk of positions at a time (:class:`_ChunkedNegativeLogits`):
    the same loss and gradients, bit for bit at one thread, without the ``[P, R, D]`` tensor."""
    _check_positions(queries)
    positive_logits = (queries * positive_embeddings).sum(-1) / temperature
    negative_logits = _ChunkedNegativeLogits.apply(queries, item_table, negative_ids) / temperature
    return _softmax_over_negatives(positive_logits, negative_logits, positive_ids, negative_ids)


NEGATIVE_SCORINGS = ("auto", "per_sample", "gathered", "chunked", "item_table")
# Scoring the whole table beats gathering the negatives up to a catalogue of about
# ITEM_TABLE_MAX_ITEMS_PER_NEGATIVE items per negative on a CPU (benchmarks/sampled_softmax.py).
ITEM_TABLE_MAX_ITEMS_PER_NEGATIVE = 32


def resolve_negative_scoring(negative_scoring: str, num_items: int, num_negatives: int, num_positions: int) -> str:
    """The concrete scoring ``auto`` stands for (others are returned as they are).

    ``auto``: ``item_table`` up to :data:`ITEM_TABLE_MAX_ITEMS_PER_NEGATIVE` items
    per negative; ``per_sample`` when the step samples fewer negatives
    (``num_positions * num_negatives``) than there are items, so that a huge
    catalogue is never embedded whole; else ``chunked``.
    """
    if negative_scoring not in NEGATIVE_SCORINGS:
        raise ValueError(f"unknown negative_scoring {negative_scoring!r}; choose from {NEGATIVE_SCORINGS}")
    if negative_scoring != "auto":
        return negative_scoring
    if num_items + 1 <= ITEM_TABLE_MAX_ITEMS_PER_NEGATIVE * num_negatives:
        return "item_table"
    return "per_sample" if num_items + 1 > num_positions * num_negatives else "chunked"


def training_loss(
    model: SequentialRecommender,
    batch: Dict[str, torch.Tensor],
    device: torch.device,
    sampling_strategy: str,
    num_negatives: int,
    temperature: float,
    negative_scoring: str = "auto",
    negative_item_ids: Optional[torch.Tensor] = None,
    scorings_used: Optional[Counter[str]] = None,
) -> torch.Tensor:
    """Next-item sampled softmax at every history position (target appended); ``local``
    negatives from ``negative_item_ids`` when given (see :func:`sample_negatives`).
    ``scorings_used``, when given, counts the steps of each concrete scoring (what
    ``auto`` chose, for ``results.json``).

    ``negative_scoring`` says how the sampled negatives are embedded and scored,
    all giving the same loss:

    * ``per_sample``: the item embedding module runs on every sampled negative
      (the reference: with text, each negative's text is projected on its own);
    * ``gathered``: every item is embedded (and normalized) once per step, the
      negatives' rows are gathered into a ``[P, R, D]`` tensor;
    * ``chunked``: the same, a chunk of positions at a time, the ``[P, R, D]``
      tensor never built (:func:`sampled_softmax_loss_chunked`; bit-identical
      to ``gathered`` at one thread);
    * ``item_table``: the same table, scored against every position in one
      matmul, the negatives' logits picked from it;
    * ``auto``: see :func:`resolve_negative_scoring`.
    """
    lengths = batch["history_lengths"].to(device, non_blocking=True)
    num_positions = int(batch["history_lengths"].sum())
    scoring = resolve_negative_scoring(negative_scoring, model.num_items, num_negatives, num_positions)
    if scorings_used is not None:
        scorings_used[scoring] += 1
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
    if scoring == "chunked":
        return sampled_softmax_loss_chunked(
            queries, positive_ids, positive_embeddings, negative_ids, item_table, temperature
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
    history_ids = batch["history_ids"].to(device, non_blocking=True)
    timestamps = batch["history_timestamps"].to(device)
    if last_position_only:  # the query at the last history position, predicting the target
        queries = model.query_embeddings(history_ids, lengths, timestamps)
        positive_ids = target_ids
        positive_embeddings = model.item_embeddings(target_ids)
    else:
        ids = history_ids.scatter(1, lengths.view(-1, 1), target_ids.view(-1, 1))
        embeddings = model.item_embeddings(ids)
        encoded = model.encode(ids, lengths + 1, timestamps, embeddings)
        predicts_next = predicting_positions(lengths, ids.size(1) - 1, last_position_only=False)
        queries = encoded[:, :-1][predicts_next]
        positive_ids = ids[:, 1:][predicts_next]
        positive_embeddings = embeddings[:, 1:][predicts_next]
    negative_ids = sample_negatives("local", positive_ids, num_negatives, model.num_items, candidate_ids=negative_item_ids)
    negative_embeddings = model.item_embeddings(negative_ids)
    if item_l2_norm:
        positive_embeddings = model.normalize_items(positive_embeddings)
        negative_embeddings = model.normalize_items(negative_embeddings)
    positive_logits = (queries * positive_embeddings).sum(-1) / temperature
    negative_logits = torch.einsum("pd,prd->pr", queries, negative_embeddings) / temperature
    return binary_cross_entropy_with_negatives(positive_logits, negative_logits, positive_ids, negative_ids)
