"""The click-through-rate (CTR) task's view of a :class:`SequenceDataset`.

Every interaction at position ``p >= 1`` of a user's sequence is a positive sample
(label 1): its behaviour sequence is the (at most ``max_history_length``) items before
it and its target is the item at ``p``. Each positive gets one negative sample (label 0)
with the same behaviour sequence and a target drawn uniformly from the items that are
not in the user's sequence at all (GRE-B's ``negative_sample_and_split``: never an item
the user had, before or after ``p``). Negatives are drawn once per (seed, split), so a
split is the same set of samples every epoch and on every run with the same seed.

Splits, per user of ``n`` items:

* test: the last position ``n - 1``;
* validation: the second-to-last position ``n - 2``;
* training: positions ``1 .. n - 3``; validation and test positions never train.

Position 0 has no behaviour sequence and is never a sample.

Ids are shifted by +1 so that 0 is padding; behaviour sequences are right-padded.
Item categories (when the prepared dataset's item metadata has them, see
:func:`read_item_categories`) come as one more field per item, every category of
the item (GRE-B mean-pools their embeddings); without them the view's
``has_categories`` is False and the batches have no category keys. Each sample
carries its user (``user_index``), GRE-B's user-id field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from generative_recommenders.data.local import ITEM_METADATA_FILE, iter_item_records
from generative_recommenders.data.sequence_format import DatasetFormatError, SequenceDataset

CTR_SPLITS = ("train", "valid", "test")
# Item metadata fields that hold categories (MovieLens/Steam genres, Amazon's category path);
# every entry of a list is one of the item's categories, as GRE-B's ``categories`` token sequence.
CATEGORY_FIELDS = ("genres", "categories")


@dataclass
class ItemCategories:
    """Every category of every item: row ``k + 1`` of ``ids`` holds item id k's categories
    (1-based, right-padded with 0; a row of zeros: none)."""

    ids: np.ndarray  # int64 [num_items + 1, max categories per item]; row 0 is padding
    names: List[str]  # names[c - 1] names category c
    source_field: str

    @property
    def num_categories(self) -> int:
        return len(self.names)


def _categories_of(value: Any) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    entries = [str(v).strip() for v in value if str(v).strip()]
    return list(dict.fromkeys(entries))  # each once, in order


def read_item_categories(data_dir: os.PathLike, num_items: int) -> Optional[ItemCategories]:
    """Item categories from a prepared dataset's ``item_metadata.jsonl``, or None.

    The first field of :data:`CATEGORY_FIELDS` that any item has is used, every
    entry of it; items without it have none. None when the file is absent or no
    item has a category field (e.g. Amazon 2014 Office): models then run without it.
    """
    path = Path(data_dir) / ITEM_METADATA_FILE
    if not path.is_file():
        return None
    records = [record for _, record in iter_item_records(path, skip_blank_lines=False)]
    if len(records) != num_items:
        raise DatasetFormatError(f"{path}: holds {len(records)} items, the dataset has {num_items}")
    for field in CATEGORY_FIELDS:
        categories = [_categories_of(record.get(field)) for record in records]
        if any(categories):
            names = sorted({c for entries in categories for c in entries})
            index = {name: i + 1 for i, name in enumerate(names)}
            ids = np.zeros((num_items + 1, max(len(entries) for entries in categories)), dtype=np.int64)
            for item, entries in enumerate(categories, start=1):
                ids[item, : len(entries)] = [index[c] for c in entries]
            return ItemCategories(ids, names, field)
    return None


@dataclass
class CTRSamples:
    """Labelled samples of one split, positives and their negatives interleaved."""

    user_index: np.ndarray  # int64 [N]
    history_ids: np.ndarray  # int64 [N, max_history_length], 1-based, right-padded with 0
    history_lengths: np.ndarray  # int64 [N], >= 1
    target_ids: np.ndarray  # int64 [N], 1-based
    labels: np.ndarray  # float32 [N]

    def __len__(self) -> int:
        return len(self.labels)


def _split_positions(length: int, split: str) -> np.ndarray:
    if split == "test":
        return np.arange(length - 1, length) if length >= 2 else np.zeros(0, np.int64)
    if split == "valid":
        return np.arange(length - 2, length - 1) if length >= 3 else np.zeros(0, np.int64)
    return np.arange(1, max(1, length - 2))


def _right_padded_histories(items: np.ndarray, positions: np.ndarray, width: int) -> np.ndarray:
    """Rows ``items[max(0, p - width):p] + 1`` for each position ``p``, right-padded with 0."""
    padded = np.concatenate([np.zeros(width, np.int64), items + 1])
    left_padded = np.lib.stride_tricks.sliding_window_view(padded, width)[positions]
    lengths = np.minimum(positions, width)
    columns = np.arange(width)
    source = np.minimum(columns[None, :] + (width - lengths)[:, None], width - 1)
    return np.where(columns[None, :] < lengths[:, None], np.take_along_axis(left_padded, source, 1), 0)


def draw_unseen_items(
    data: SequenceDataset, user_index: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One 1-based item per entry of ``user_index``, uniform over the items not in that user's sequence."""
    negatives = np.zeros(len(user_index), dtype=np.int64)
    order = np.argsort(user_index, kind="stable")
    users, starts, counts = np.unique(user_index[order], return_index=True, return_counts=True)
    for user, start, count in zip(users, starts, counts):
        seen = np.unique(data.item_ids[user]) + 1
        num_unseen = data.num_items - len(seen)
        if num_unseen < 1:
            raise DatasetFormatError(
                f"{data.name}: user index {user} has every item of the catalogue, so no item is left "
                "to draw as a negative; drop that user from the data"
            )
        # The k-th unseen item: draw k, then step past every seen id at or below it.
        draws = rng.integers(1, num_unseen + 1, size=count)
        shifted = draws.copy()
        for seen_id in seen:
            shifted += shifted >= seen_id
        negatives[order[start : start + count]] = shifted
    return negatives


def build_ctr_samples(
    data: SequenceDataset, split: str, max_history_length: int = 20, seed: int = 0
) -> CTRSamples:
    """The samples of one split (see the module docstring); reproducible for a given seed."""
    if split not in CTR_SPLITS:
        raise ValueError(f"split must be one of {CTR_SPLITS}, got {split!r}")
    if max_history_length < 1:
        raise ValueError(f"max_history_length must be >= 1, got {max_history_length}")
    users, histories, targets = [], [], []
    for user, items in enumerate(data.item_ids):
        positions = _split_positions(len(items), split)
        if len(positions) == 0:
            continue
        users.append(np.full(len(positions), user, dtype=np.int64))
        histories.append(_right_padded_histories(items, positions, max_history_length))
        targets.append(items[positions] + 1)
    if not users:
        raise DatasetFormatError(f"{data.name}: no user has a {split} position")
    user_index, positives = np.concatenate(users), np.concatenate(targets)
    history_ids = np.concatenate(histories)
    rng = np.random.default_rng([seed, CTR_SPLITS.index(split)])
    negatives = draw_unseen_items(data, user_index, rng)
    num_positives = len(positives)
    return CTRSamples(
        user_index=np.repeat(user_index, 2),
        history_ids=np.repeat(history_ids, 2, axis=0),
        history_lengths=np.repeat((history_ids > 0).sum(axis=1), 2),
        target_ids=np.stack([positives, negatives], axis=1).reshape(-1),
        labels=np.tile(np.array([1.0, 0.0], dtype=np.float32), num_positives),
    )


class CTRView(torch.utils.data.Dataset):
    """One split's samples as dicts; :func:`collate_ctr` pads them into a batch.

    ``has_categories`` says whether the items carry a category field; when False
    the models run without it.
    """

    def __init__(
        self,
        data: SequenceDataset,
        split: str,
        max_history_length: int = 20,
        seed: int = 0,
        categories: Optional[ItemCategories] = None,
    ) -> None:
        if categories is not None and categories.ids.shape[0] != data.num_items + 1:
            raise ValueError(
                f"categories cover {len(categories.ids) - 1} items, the dataset has {data.num_items}"
            )
        self.samples = build_ctr_samples(data, split, max_history_length, seed)
        self.categories = categories
        self.split = split

    @property
    def has_categories(self) -> bool:
        return self.categories is not None

    @property
    def num_categories(self) -> int:
        return 0 if self.categories is None else self.categories.num_categories

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        s = self.samples
        length = int(s.history_lengths[index])
        example = {
            "user_index": int(s.user_index[index]),
            "history_ids": s.history_ids[index, :length],
            "target_id": int(s.target_ids[index]),
            "label": float(s.labels[index]),
        }
        if self.categories is not None:
            example["history_categories"] = self.categories.ids[example["history_ids"]]
            example["target_categories"] = self.categories.ids[example["target_id"]]
        return example


def collate_ctr(examples: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    """Right-pads behaviour sequences to the batch's longest.

    Keys: ``user_index``, ``history_ids [B, L]``, ``history_lengths [B]``,
    ``target_ids [B]``, ``labels [B]`` (float), and with categories
    ``history_categories [B, L, C]`` and ``target_categories [B, C]`` (every
    category of the item, right-padded with 0).
    """
    lengths = torch.tensor([len(e["history_ids"]) for e in examples], dtype=torch.int64)
    width = int(lengths.max())
    with_categories = "history_categories" in examples[0]
    ids = torch.zeros(len(examples), width, dtype=torch.int64)
    per_item = examples[0]["target_categories"].shape[0] if with_categories else 0
    categories = torch.zeros(len(examples), width, per_item, dtype=torch.int64)
    for b, e in enumerate(examples):
        ids[b, : len(e["history_ids"])] = torch.from_numpy(e["history_ids"])
        if with_categories:
            categories[b, : len(e["history_ids"])] = torch.from_numpy(e["history_categories"])
    batch = {
        "user_index": torch.tensor([e["user_index"] for e in examples], dtype=torch.int64),
        "history_ids": ids,
        "history_lengths": lengths,
        "target_ids": torch.tensor([e["target_id"] for e in examples], dtype=torch.int64),
        "labels": torch.tensor([e["label"] for e in examples], dtype=torch.float32),
    }
    if with_categories:
        batch["history_categories"] = categories
        batch["target_categories"] = torch.from_numpy(np.stack([e["target_categories"] for e in examples]))
    return batch
