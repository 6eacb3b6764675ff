"""GRE-B's retrieval samples and evaluation mask (RecStudio's ``SeqDataset`` and ``BaseRetriever``).

Training: one sample per training position ``p >= 1`` of every user, its target the item at
``p`` and its history the (at most ``max_history_length``) items before it; the loss is
taken at that last position only. Evaluation: every item the user had before the target
(the training items, and at test also the validation item) is removed from the ranking,
and a target that is one of them scores a miss.

Examples are :class:`~generative_recommenders.data.dataset.SequenceView`'s dicts (ids
shifted by +1, 0 is padding), so ``collate_sequences`` batches them;
:func:`collate_with_seen_items` adds the evaluation mask.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np
import torch

from generative_recommenders.data.dataset import SequenceView, collate_sequences, example_at
from generative_recommenders.data.sequence_format import SequenceDataset


def training_positions(lengths: np.ndarray, ignore_last_n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(user, position)`` of every training target: positions ``1 .. n - 1 - ignore_last_n`` of each
    user of ``n`` items (position 0 has no history)."""
    counts = np.maximum(np.asarray(lengths, dtype=np.int64) - 1 - ignore_last_n, 0)
    users = np.repeat(np.arange(len(counts)), counts)
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    positions = np.arange(counts.sum()) - starts + 1
    return users, positions


class PerPositionView(torch.utils.data.Dataset):
    """One example per training position (see the module docstring), SequenceView's keys."""

    def __init__(self, data: SequenceDataset, max_history_length: int, ignore_last_n: int) -> None:
        if max_history_length < 1:
            raise ValueError(f"max_history_length must be >= 1, got {max_history_length}")
        self.data = data
        self.max_sequence_length = max_history_length
        lengths = np.array([len(items) for items in data.item_ids], dtype=np.int64)
        self.users, self.positions = training_positions(lengths, ignore_last_n)
        self.num_skipped_users = data.num_users - len(np.unique(self.users))

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return example_at(self.data, int(self.users[index]), int(self.positions[index]), self.max_sequence_length)


def seen_item_ids(items: np.ndarray, target_position: int) -> np.ndarray:
    """The 1-based ids of every item before ``target_position``: what GRE-B removes from the ranking."""
    return np.unique(items[:target_position]) + 1


class SeenItemsView(torch.utils.data.Dataset):
    """A :class:`SequenceView` (validation or test) whose examples also carry ``seen_item_ids``."""

    def __init__(self, view: SequenceView) -> None:
        self.view = view
        self.num_skipped_users = view.num_skipped_users

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        example = self.view[index]
        items = self.view.data.item_ids[example["user_index"]]
        example["seen_item_ids"] = seen_item_ids(items, len(items) - 1 - self.view.ignore_last_n)
        return example


def collate_with_seen_items(examples: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    """``collate_sequences``, plus ``seen_item_ids [B, S]`` right-padded with 0 when the examples
    carry them (evaluation; training examples do not)."""
    batch = collate_sequences(examples)
    if "seen_item_ids" not in examples[0]:
        return batch
    width = max(len(e["seen_item_ids"]) for e in examples)
    seen = torch.zeros(len(examples), max(width, 1), dtype=torch.int64)
    for b, e in enumerate(examples):
        seen[b, : len(e["seen_item_ids"])] = torch.from_numpy(e["seen_item_ids"])
    batch["seen_item_ids"] = seen
    return batch
