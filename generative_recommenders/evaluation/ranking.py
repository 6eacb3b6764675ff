"""Full-ranking evaluation of a sequential recommender, chunked over users.

The scoring here is the one every consumer of a trained model uses (the
evaluation, and ``generative_recommenders.recommender``): a user's query
embedding dotted with :func:`candidate_embeddings`, history excluded
(``metrics.tiled_target_ranks``: the ranks of ``metrics.target_ranks``
without the whole score matrix).
"""

from __future__ import annotations

from typing import Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch

from generative_recommenders.evaluation.metrics import MetricAccumulator, tiled_target_ranks
from generative_recommenders.evaluation.target_groups import TargetGroupAccumulator


CPU_TILE_ITEMS = 2048  # 128 users x 2048 items: 1 MiB of scores (benchmarks/evaluation.py)


def candidate_embeddings(model: torch.nn.Module) -> torch.Tensor:
    """Every item's ranking embedding ``[num_items + 1, D]`` (row 0 is padding).

    ``model`` provides ``all_item_embeddings()`` and ``normalize_items(x)``.
    """
    return model.normalize_items(model.all_item_embeddings())


@torch.no_grad()
def user_target_ranks(
    model: torch.nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    device: torch.device,
    rank_cap: Optional[int] = None,
    max_batches: Optional[int] = None,
    repeated_target: str = "rank",
) -> Iterator[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(user_index, target_ids, rank)`` of each batch's targets among every item, on the CPU.

    ``rank_cap`` and ``repeated_target`` (``"rank"``, or ``"miss"`` as the
    reference: a target that repeats a history item scores a miss) are those
    of :func:`~generative_recommenders.evaluation.metrics.target_ranks`, whose ranks these are
    (computed by :func:`~generative_recommenders.evaluation.metrics.tiled_target_ranks`); the
    items removed from the ranking are the batch's ``seen_item_ids`` when it has
    them (GRE-B: every item before the target), else its history.
    ``model`` provides ``query_embeddings(ids, lengths, timestamps)`` and what
    :func:`candidate_embeddings` needs. Candidate embeddings are computed
    once; memory is bounded by batch size x catalogue size.
    """
    was_training = model.training
    model.eval()
    try:
        candidates = candidate_embeddings(model)  # [I + 1, D]
        # A CPU ranks a tile of items that stays in its cache at a time; an accelerator all at once.
        tile = CPU_TILE_ITEMS if candidates.device.type == "cpu" else candidates.size(0)
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            # Pinned batches (on CUDA) copy while the previous chunk is still ranking.
            history, lengths, timestamps, targets = (
                batch[key].to(device, non_blocking=True)
                for key in ("history_ids", "history_lengths", "history_timestamps", "target_ids")
            )
            queries = model.query_embeddings(history, lengths, timestamps)
            excluded = batch["seen_item_ids"].to(device, non_blocking=True) if "seen_item_ids" in batch else history
            ranks = tiled_target_ranks(queries, candidates, targets, excluded, rank_cap, repeated_target, tile).cpu()
            yield batch["user_index"], batch["target_ids"], ranks
    finally:
        model.train(was_training)


def evaluate_ranking(
    model: torch.nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    device: torch.device,
    rank_cap: Optional[int] = None,
    max_batches: Optional[int] = None,
    repeated_target: str = "rank",
    target_groups: Sequence[TargetGroupAccumulator] = (),
) -> MetricAccumulator:
    """Ranks each batch's targets against every item (:func:`user_target_ranks`); returns summed metrics.

    Each of ``target_groups`` also gets every batch's ranks and targets (e.g.
    popularity groups, cold items).
    """
    acc = MetricAccumulator()
    for _, targets, ranks in user_target_ranks(model, batches, device, rank_cap, max_batches, repeated_target):
        acc.add(ranks)
        for groups in target_groups:
            groups.add(ranks, targets)
    return acc
