"""Training, validation and test views of a :class:`SequenceDataset`, and their collate.

A view holds one example per user: with ``ignore_last_n`` items dropped from
the end, the newest remaining item is the target and the (at most
``max_sequence_length``) items before it are the history.

* test view: ``ignore_last_n=0`` (the last item is the target);
* validation view: ``ignore_last_n=1`` (the second-to-last item);
* training view: ``ignore_last_n=1`` for the reference protocol, ``2`` when a
  validation item is held out.

Ids are shifted by +1 so that 0 is padding.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch

from generative_recommenders.data.sequence_format import SequenceDataset


class SequenceView(torch.utils.data.Dataset):
    def __init__(self, data: SequenceDataset, max_sequence_length: int, ignore_last_n: int) -> None:
        if max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be >= 1, got {max_sequence_length}")
        self.data = data
        self.max_sequence_length = max_sequence_length
        self.ignore_last_n = ignore_last_n
        # A target needs at least one history item before it.
        self.users = np.array(
            [u for u, seq in enumerate(data.item_ids) if len(seq) - ignore_last_n >= 2],
            dtype=np.int64,
        )
        self.num_skipped_users = data.num_users - len(self.users)

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        user = int(self.users[index])
        return example_at(self.data, user, len(self.data.item_ids[user]) - 1 - self.ignore_last_n, self.max_sequence_length)


def example_at(data: SequenceDataset, user: int, target: int, max_sequence_length: int) -> Dict[str, Any]:
    """User ``user``'s example whose target is position ``target``: the (at most ``max_sequence_length``)
    items before it are the history; ids + 1."""
    start = max(0, target - max_sequence_length)
    items, times, ratings = data.item_ids[user], data.timestamps[user], data.ratings[user]
    return {
        "user_index": user,
        "history_ids": items[start:target] + 1,
        "history_timestamps": times[start:target],
        "history_ratings": ratings[start:target],
        "target_id": int(items[target]) + 1,
        "target_timestamp": int(times[target]),
        "target_rating": float(ratings[target]),
    }


def repeated_target_shares(data: SequenceDataset, max_sequence_length: Optional[int]) -> Dict[str, float]:
    """Share of users whose target repeats an item of their history, as the model sees it.

    ``"last"``: the test view's target (each user's last item);
    ``"second_to_last"``: the validation view's. The history is the view's:
    the at most ``max_sequence_length`` items before the target (``None``:
    all of them); users without a history item are not counted. Under the
    reference's evaluation such a target scores a miss.
    """
    if max_sequence_length is None:
        max_sequence_length = max([len(s) for s in data.item_ids], default=1)
    shares = {}
    for split, ignore_last_n in (("last", 0), ("second_to_last", 1)):
        view = SequenceView(data, max_sequence_length, ignore_last_n)
        examples = (view[i] for i in range(len(view)))
        repeats = sum(1 for e in examples if (e["history_ids"] == e["target_id"]).any())
        shares[split] = repeats / len(view) if len(view) else 0.0
    return shares


def collate_sequences(examples: List[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
    """Right-pads histories to the longest one + 1 position.

    The extra position lets training append the target; ``history_timestamps``
    holds the target's time there (the request time the model conditions on).
    """
    lengths = np.array([len(e["history_ids"]) for e in examples], dtype=np.int64)
    batch_size, width = len(examples), int(lengths.max()) + 1
    # Filled in numpy: a numpy slice assignment costs a fraction of a torch one, per example.
    ids = np.zeros((batch_size, width), dtype=np.int64)
    timestamps = np.zeros((batch_size, width), dtype=np.int64)
    ratings = np.zeros((batch_size, width), dtype=np.float32)
    for b, (e, n) in enumerate(zip(examples, lengths)):
        ids[b, :n] = e["history_ids"]
        timestamps[b, :n] = e["history_timestamps"]
        timestamps[b, n] = e["target_timestamp"]
        ratings[b, :n] = e["history_ratings"]
    return {
        "user_index": torch.tensor([e["user_index"] for e in examples], dtype=torch.int64),
        "history_ids": torch.from_numpy(ids),
        "history_lengths": torch.from_numpy(lengths),
        "history_timestamps": torch.from_numpy(timestamps),
        "history_ratings": torch.from_numpy(ratings),
        "target_ids": torch.tensor([e["target_id"] for e in examples], dtype=torch.int64),
        "target_timestamps": torch.tensor([e["target_timestamp"] for e in examples], dtype=torch.int64),
        "target_ratings": torch.tensor([e["target_rating"] for e in examples], dtype=torch.float32),
    }
