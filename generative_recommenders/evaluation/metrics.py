"""Full-ranking metrics: exact ranks over the whole catalogue, history removed.

Ranks are 1-based and pessimistic on ties: an item scoring exactly as the
target is ranked ahead of it, so a constant scorer cannot look good.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch

from generative_recommenders.ops.tiles import tile_bounds

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
    return _apply_rules(ranks, target_ids, history_ids, scores.size(1), rank_cap, repeated_target)


def _excluded_ids(history_ids: Optional[torch.Tensor], target_ids: torch.Tensor) -> torch.Tensor:
    """Each user's distinct excluded items ``[B, L + 1]``: padding 0 and the history but the target
    (it is ranked, as :func:`target_ranks` puts it back); repeats and the target become -1."""
    padding = torch.zeros_like(target_ids).view(-1, 1)
    ids = padding if history_ids is None else torch.cat([padding, history_ids], dim=1)
    ids = ids.sort(dim=1).values
    repeat = torch.zeros_like(ids, dtype=torch.bool)
    repeat[:, 1:] = ids[:, 1:] == ids[:, :-1]
    return ids.masked_fill(repeat | (ids == target_ids.view(-1, 1)), -1)


def tiled_target_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    target_ids: torch.Tensor,
    history_ids: Optional[torch.Tensor] = None,
    rank_cap: Optional[int] = None,
    repeated_target: str = "rank",
    tile_items: int = 2048,
) -> torch.Tensor:
    """:func:`target_ranks` of ``scores = queries @ candidates.T`` without the ``[B, num_items + 1]`` matrix.

    The scores are computed ``tile_items`` candidates at a time (``ops/tiles.py``:
    each score rounds as the whole matrix's), and each tile's
    items scoring at least the target are counted while it is in cache; the
    history's items are set to -inf in the tile (not in a copy of the scores). The target's score is the one its own tile
    computes, so it is compared with its competitors' scores of the same kind:
    a first guess (a small matmul) is checked against it and, for the users
    where the two differ in the last bit, the count is redone with the tile's.
    Finiteness is checked on ``queries`` and ``candidates``.
    """
    if repeated_target not in REPEATED_TARGET_RULES:
        raise ValueError(f"repeated_target must be one of {REPEATED_TARGET_RULES}, got {repeated_target!r}")
    if not (_all_finite(queries) and _all_finite(candidates)):
        raise FloatingPointError("evaluation scores hold NaN or inf: the model has diverged")
    if queries.size(0) == 1:  # a matrix-vector product, whose rounding may change with a tile's width
        tile_items = candidates.size(0)
    excluded = _excluded_ids(history_ids, target_ids)
    guess = _guess_target_scores(queries, candidates, target_ids)
    counts, target_scores = _ranks_in_tiles(queries, candidates, target_ids, guess, excluded, tile_items)
    redo = target_scores != guess
    if redo.any():  # rare: recount against the tiles' own target scores (the same tiles, the same bits)
        recounted, _ = _ranks_in_tiles(queries, candidates, target_ids, target_scores, excluded, tile_items)
        counts = torch.where(redo, recounted, counts)
    if not torch.isfinite(target_scores).all():
        raise FloatingPointError("evaluation scores hold NaN or inf: the model has diverged")
    return _apply_rules(counts, target_ids, history_ids, candidates.size(0), rank_cap, repeated_target)


def _all_finite(values: torch.Tensor) -> bool:
    """No NaN or inf in ``values``: its extremes are finite (one pass; NaN propagates to both)."""
    return bool(torch.isfinite(torch.stack(torch.aminmax(values))).all())


def _guess_target_scores(queries: torch.Tensor, candidates: torch.Tensor, target_ids: torch.Tensor) -> torch.Tensor:
    """``queries[b] . candidates[target_ids[b]]`` by a ``[B, B]`` matmul (usually the tiles' bits)."""
    return (queries @ candidates[target_ids].T).diagonal()


def _ranks_in_tiles(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    target_ids: torch.Tensor,
    thresholds: torch.Tensor,
    excluded: torch.Tensor,
    tile_items: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(counts, target_scores)``: per user, the items but the ``excluded`` ones scoring ``>= thresholds``
    (the target among them when its score reaches its threshold), and the target's score from its tile."""
    bounds = tile_bounds(candidates.size(0), tile_items)
    counts = torch.zeros(queries.size(0), dtype=torch.long, device=queries.device)
    target_scores = torch.empty(queries.size(0), dtype=queries.dtype, device=queries.device)
    column = thresholds.view(-1, 1)
    tiles_excluded = _by_tile(excluded, bounds)
    tiles_targets = _by_tile(target_ids.view(-1, 1), bounds)
    for (begin, end), (users, items), (target_users, targets) in zip(bounds, tiles_excluded, tiles_targets):
        scores = queries @ candidates[begin:end].T  # [B, end - begin], a fresh tile: changed in place
        flat = scores.view(-1)
        target_scores[target_users] = flat[target_users * (end - begin) + targets]
        flat.index_fill_(0, users * (end - begin) + items, float("-inf"))
        counts += (scores >= column).sum(dim=1, dtype=torch.int32)
    return counts, target_scores


def _by_tile(ids: torch.Tensor, bounds: List[Tuple[int, int]]) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """For each tile of ``bounds``, ``(rows, columns in the tile)`` of the entries of ``ids [B, K]``
    inside it (-1 entries are none)."""
    kept = ids >= 0
    rows = torch.arange(ids.size(0), device=ids.device).view(-1, 1).expand_as(ids)[kept]
    ids = ids[kept]
    starts = torch.tensor([begin for begin, _ in bounds], device=ids.device)
    tile = torch.bucketize(ids, starts[1:], right=True)
    order = torch.argsort(tile, stable=True)
    sizes = torch.bincount(tile, minlength=len(bounds)).tolist()
    return list(zip(rows[order].split(sizes), (ids - starts[tile])[order].split(sizes)))


def _apply_rules(
    ranks: torch.Tensor,
    target_ids: torch.Tensor,
    history_ids: Optional[torch.Tensor],
    num_columns: int,
    rank_cap: Optional[int],
    repeated_target: str,
) -> torch.Tensor:
    """The repeated-target rule and the rank cap of :func:`target_ranks` applied to plain ranks."""
    if repeated_target == "miss" and history_ids is not None:
        repeated = (history_ids == target_ids.view(-1, 1)).any(dim=1)
        miss = max(REFERENCE_MISS_RANK, num_columns) if rank_cap is None else rank_cap + 1
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
