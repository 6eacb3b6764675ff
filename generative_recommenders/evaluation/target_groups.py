"""Ranking metrics per group of target items: popularity groups and cold items.

Popularity groups split the catalogue by training frequency, most popular first:

* ``head``: the most frequent items that together hold the first ``head_share``
  (default 50%) of the training interactions;
* ``torso``: the next items, up to ``torso_share`` (default 80%) cumulatively;
* ``tail``: the rest, including items never seen in training.

The boundaries are counts, so items of equal frequency always share a group; the
item whose interactions cross a share and every item as frequent as it join the
more popular group. The boundaries (counts, item numbers and interaction shares)
are part of the results.
"""

from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import torch

from generative_recommenders.evaluation.metrics import MetricAccumulator

POPULARITY_GROUPS = ("head", "torso", "tail")
HEAD_SHARE, TORSO_SHARE = 0.5, 0.8
COLD_ITEMS = "cold_items"


class TargetGroupAccumulator:
    """Per-group :class:`MetricAccumulator` s, a target's group looked up by its id.

    ``item_group[i]`` is the index in ``names`` of item id ``i``'s group, -1 for
    none (a target of no group is not counted). ``description`` (JSON-ready) is
    written next to the groups' metrics.
    """

    def __init__(self, item_group: torch.Tensor, names: Sequence[str], description: Dict[str, Any]) -> None:
        if item_group.dim() != 1 or int(item_group.max()) >= len(names) or int(item_group.min()) < -1:
            raise ValueError(f"item_group must be a 1-D tensor of group indices below {len(names)} or -1")
        self.item_group = item_group.long().cpu()
        self.names = tuple(names)
        self.description = description
        self.groups = {name: MetricAccumulator() for name in self.names}

    def add(self, ranks: torch.Tensor, target_ids: torch.Tensor) -> None:
        """``ranks [B]`` of ``target_ids [B]`` (1-based), as from ``target_ranks``."""
        ranks, group = ranks.cpu(), self.item_group[target_ids.cpu()]
        for index, name in enumerate(self.names):
            selected = group == index
            if selected.any():
                self.groups[name].add(ranks[selected])

    def merge(self, other: "TargetGroupAccumulator") -> None:
        """Adds another shard's sums (same groups)."""
        for name, acc in other.groups.items():
            mine = self.groups[name]
            mine.count += acc.count
            for metric, total in acc.sums.items():
                mine.sums[metric] += total

    def results(self) -> Dict[str, Any]:
        """``{group: {"num_users": n, metric: mean, ...}, ..., "groups": description}``.

        A group no target fell in has ``num_users`` 0 and no metrics.
        """
        out: Dict[str, Any] = {
            name: {"num_users": acc.count, **(acc.means() if acc.count else {})}
            for name, acc in self.groups.items()
        }
        out["groups"] = self.description
        return out


def _group_summary(counts: np.ndarray, selected: np.ndarray, total: int) -> Dict[str, Any]:
    chosen = counts[selected]
    return {
        "num_items": int(selected.sum()),
        "min_count": int(chosen.min()) if chosen.size else None,
        "max_count": int(chosen.max()) if chosen.size else None,
        "interaction_share": float(chosen.sum() / total),
    }


def popularity_groups(
    counts: np.ndarray, head_share: float = HEAD_SHARE, torso_share: float = TORSO_SHARE
) -> TargetGroupAccumulator:
    """Head/torso/tail groups from training counts ``[num_items + 1]`` (row 0 padding)."""
    if not 0.0 < head_share < torso_share < 1.0:
        raise ValueError(f"need 0 < head_share < torso_share < 1, got {head_share}, {torso_share}")
    counts = np.asarray(counts, dtype=np.int64)
    items = counts[1:]
    total = int(items.sum())
    if total == 0:
        raise ValueError("no training interactions to define popularity groups")
    ordered = np.sort(items)[::-1]
    cumulative = np.cumsum(ordered)

    def threshold(share: float) -> int:
        # The count of the item whose interactions reach the share.
        return int(ordered[np.searchsorted(cumulative, share * total)])

    head_min, torso_min = threshold(head_share), threshold(torso_share)
    group = np.full(len(counts), -1, dtype=np.int64)
    group[1:] = np.where(items >= head_min, 0, np.where(items >= torso_min, 1, 2))
    description = {
        "rule": (
            f"training interactions per item, most frequent first: head up to {head_share:.0%} "
            f"of them cumulatively, torso up to {torso_share:.0%}, tail the rest"
        ),
        **{
            name: _group_summary(counts, group == index, total)
            for index, name in enumerate(POPULARITY_GROUPS)
        },
    }
    return TargetGroupAccumulator(torch.from_numpy(group), POPULARITY_GROUPS, description)


def cold_item_group(cold_item_ids: np.ndarray, num_items: int) -> TargetGroupAccumulator:
    """One group, ``cold_items``: targets among ``cold_item_ids`` (1-based)."""
    group = torch.full((num_items + 1,), -1, dtype=torch.int64)
    group[torch.as_tensor(cold_item_ids, dtype=torch.int64)] = 0
    description = {"num_items": int(len(cold_item_ids))}
    return TargetGroupAccumulator(group, (COLD_ITEMS,), description)
