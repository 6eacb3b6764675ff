"""Training item frequencies, and the cold-item split: items held out of training entirely.

Each user's last ``num_held_out`` items are held out of training (2 under the
validated protocol: validation and test targets; 1 under the reference
protocol); the rest of the sequence is the training part.

Cold-item split (``cold_item_share``): a seeded share of the catalogue whose
interactions are removed from every user's training part, so no model sees them
in training, neither as target nor in a history. The held-out tail of every
sequence is kept as it is, so the evaluation targets do not change; users whose
test target is a cold item are those on which cold-start ranking is measured,
over the full catalogue like every other user.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from generative_recommenders.data.sequence_format import SequenceDataset

VALIDATED_HELD_OUT = 2


def training_item_counts(data: SequenceDataset, num_held_out: int = VALIDATED_HELD_OUT) -> np.ndarray:
    """``counts[k + 1]``: interactions with item id k in the training parts (``counts[0] = 0``)."""
    if num_held_out < 0:
        raise ValueError(f"num_held_out must be >= 0, got {num_held_out}")
    counts = np.zeros(data.num_items + 1, dtype=np.int64)
    for items in data.item_ids:
        np.add.at(counts, items[: max(0, len(items) - num_held_out)] + 1, 1)
    return counts


@dataclass
class ColdItemSplit:
    """The training data without cold items, and who is evaluated on them."""

    training_data: SequenceDataset  # same users in the same order; training parts filtered
    cold_item_ids: np.ndarray  # int64, sorted, 1-based (as in batches)
    cold_users: np.ndarray  # int64 user indices whose test target (last item) is cold
    num_removed_interactions: int

    def summary(self) -> dict:
        return {
            "num_cold_items": int(len(self.cold_item_ids)),
            "num_cold_users": int(len(self.cold_users)),
            "num_removed_interactions": self.num_removed_interactions,
        }


def split_cold_items(
    data: SequenceDataset,
    cold_item_share: float,
    seed: int,
    num_held_out: int = VALIDATED_HELD_OUT,
) -> ColdItemSplit:
    """Draws ``round(cold_item_share * num_items)`` cold items (at least 1) with ``seed``.

    ``training_data`` keeps each user's last ``num_held_out`` items and drops
    the cold items from everything before them. Train on views of
    ``training_data``; evaluate on views of ``data``.
    """
    if not 0.0 < cold_item_share < 1.0:
        raise ValueError(f"cold_item_share must be in (0, 1), got {cold_item_share}")
    num_cold = max(1, round(cold_item_share * data.num_items))
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(data.num_items, size=num_cold, replace=False)).astype(np.int64)
    is_cold = np.zeros(data.num_items, dtype=bool)
    is_cold[cold] = True

    item_ids, ratings, timestamps, cold_users = [], [], [], []
    removed = 0
    for user, (items, rats, times) in enumerate(zip(data.item_ids, data.ratings, data.timestamps)):
        keep = np.ones(len(items), dtype=bool)
        train_end = max(0, len(items) - num_held_out)
        keep[:train_end] = ~is_cold[items[:train_end]]
        removed += int((~keep).sum())
        item_ids.append(items[keep])
        ratings.append(rats[keep])
        timestamps.append(times[keep])
        if len(items) and is_cold[items[-1]]:
            cold_users.append(user)
    training_data = replace(data, item_ids=item_ids, ratings=ratings, timestamps=timestamps)
    return ColdItemSplit(training_data, cold + 1, np.array(cold_users, dtype=np.int64), removed)
