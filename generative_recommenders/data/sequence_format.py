"""The sequence data contract shared by every dataset.

A prepared dataset is a folder ``tmp/<name>/`` holding

* ``sasrec_format.csv``: one row per user, columns ``user_id,
  sequence_item_ids, sequence_ratings, sequence_timestamps``; each sequence is
  a comma-joined string in chronological order and item ids are ``0..n-1``;
* ``data_maps.json``: ``user2id``/``id2user``/``item2id``/``id2item`` maps and
  the counts (``num_users``, ``num_items``, ``num_interactions``).

Every preprocessor goes through :func:`write_sequence_dataset`, every consumer
through :func:`load_sequence_dataset`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import pandas as pd

from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.errors import UserError

SEQUENCE_FILE = "sasrec_format.csv"
MAPS_FILE = "data_maps.json"
SEQUENCE_COLUMNS = [
    "user_id",
    "sequence_item_ids",
    "sequence_ratings",
    "sequence_timestamps",
]




class DatasetFormatError(UserError):
    """A prepared dataset file is missing, malformed or inconsistent."""


@dataclass
class SequenceDataset:
    """All users' chronological sequences of one prepared dataset."""

    name: str
    num_items: int
    item_ids: List[np.ndarray]  # int64, 0-based item ids
    ratings: List[np.ndarray]  # float32
    timestamps: List[np.ndarray]  # int64
    maps: Dict[str, Any]

    @classmethod
    def from_item_sequences(cls, name: str, num_items: int, sequences: List[Any]) -> "SequenceDataset":
        """A dataset of the given 0-based item sequences, ratings 1 and timestamps ``0, 1, ...``."""
        item_ids = [np.asarray(s, dtype=np.int64) for s in sequences]
        return cls(
            name,
            num_items,
            item_ids,
            [np.ones(len(s), dtype=np.float32) for s in item_ids],
            [np.arange(len(s), dtype=np.int64) for s in item_ids],
            {},
        )

    @property
    def num_users(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.item_ids))

    def stats(self) -> Dict[str, Any]:
        lengths = np.array([len(s) for s in self.item_ids])
        return {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_interactions": self.num_interactions,
            "mean_sequence_length": float(lengths.mean()) if len(lengths) else 0.0,
            "median_sequence_length": float(np.median(lengths)) if len(lengths) else 0.0,
        }


def _join(values: np.ndarray, fmt: str) -> str:
    return ",".join(fmt % v for v in values)


def write_sequence_dataset(
    out_dir: os.PathLike,
    interactions: pd.DataFrame,
    extra_maps: Optional[Dict[str, Any]] = None,
) -> SequenceDataset:
    """Numbers users and items and writes the contract files atomically.

    Args:
        out_dir: the dataset folder (``tmp/<name>``).
        interactions: columns ``user_id, item_id, rating, timestamp`` in the
            source's row order, already filtered. Users and items are numbered
            0..n-1 in order of first appearance; each user's interactions are
            sorted by timestamp with a stable sort, ties broken by item id.
        extra_maps: more entries for ``data_maps.json`` (e.g. ``id2meta``).
    """
    out_dir = Path(out_dir)
    missing = {"user_id", "item_id", "rating", "timestamp"} - set(interactions.columns)
    if missing:
        raise DatasetFormatError(f"interactions lack columns {sorted(missing)}")
    if len(interactions) == 0:
        raise DatasetFormatError(f"no interactions left to write to {out_dir}")
    df = interactions[["user_id", "item_id", "rating", "timestamp"]].copy()
    if df["rating"].isna().any() or df["timestamp"].isna().any():
        raise DatasetFormatError(f"interactions for {out_dir} hold missing ratings or timestamps")
    df["user_id"] = df["user_id"].astype(str)
    df["item_id"] = df["item_id"].astype(str)
    user_codes, id2user = pd.factorize(df["user_id"], sort=False)
    item_codes, id2item = pd.factorize(df["item_id"], sort=False)
    df["uid"] = user_codes
    df["iid"] = item_codes
    df = df.sort_values(["uid", "timestamp", "iid"], kind="stable")

    item_ids, ratings, timestamps = [], [], []
    writer_rows = []
    for uid, group in df.groupby("uid", sort=True):
        items = group["iid"].to_numpy(np.int64)
        rats = group["rating"].to_numpy(np.float32)
        ts = group["timestamp"].to_numpy(np.int64)
        item_ids.append(items)
        ratings.append(rats)
        timestamps.append(ts)
        writer_rows.append(
            [uid, _join(items, "%d"), _join(rats, "%g"), _join(ts, "%d")]
        )
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SEQUENCE_COLUMNS)
    writer.writerows(writer_rows)

    maps: Dict[str, Any] = {
        "num_users": len(id2user),
        "num_items": len(id2item),
        "num_interactions": int(len(df)),
        "id2user": list(map(str, id2user)),
        "id2item": list(map(str, id2item)),
        "user2id": {u: i for i, u in enumerate(map(str, id2user))},
        "item2id": {it: i for i, it in enumerate(map(str, id2item))},
    }
    if extra_maps:
        maps.update(extra_maps)
    # The maps go first: a sequence file is only trusted next to its maps.
    atomic_write_text(out_dir / MAPS_FILE, json.dumps(maps))
    atomic_write_text(out_dir / SEQUENCE_FILE, buf.getvalue())
    return SequenceDataset(out_dir.name, len(id2item), item_ids, ratings, timestamps, maps)


def _parse_numbers(text: str, dtype: type, path: Path, line: int, column: str) -> np.ndarray:
    if not isinstance(text, str) or not text.strip():
        raise DatasetFormatError(f"{path}, line {line}: empty {column}")
    try:
        values = np.array([float(x) for x in text.split(",")], dtype=np.float64)
    except ValueError:
        raise DatasetFormatError(
            f"{path}, line {line}: {column} is not a comma-joined list of numbers: {text[:80]!r}"
        ) from None
    if not np.isfinite(values).all():
        raise DatasetFormatError(f"{path}, line {line}: {column} holds NaN or inf")
    if dtype is np.int64:
        if (values != np.round(values)).any():
            raise DatasetFormatError(f"{path}, line {line}: {column} holds non-integers")
        return values.astype(np.int64)
    return values.astype(dtype)


def _iter_rows(path: Path) -> Iterator[List[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.reader(f)


def load_sequence_dataset(data_dir: os.PathLike) -> SequenceDataset:
    """Reads and validates a prepared dataset folder.

    Raises :class:`DatasetFormatError` naming the file, line and problem for a
    missing or malformed file, unknown item ids, mismatched sequence lengths
    or an empty dataset.
    """
    data_dir = Path(data_dir)
    seq_path, maps_path = data_dir / SEQUENCE_FILE, data_dir / MAPS_FILE
    for p in (seq_path, maps_path):
        if not p.is_file():
            raise DatasetFormatError(
                f"{p} not found: prepare the dataset first "
                f"(python3 preprocess_public_data.py --dataset {data_dir.name}, or "
                f"--local_dir DIR --dataset_name {data_dir.name})"
            )
    try:
        maps = json.loads(maps_path.read_text(encoding="utf-8"))
        num_items = int(maps["num_items"])
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetFormatError(f"{maps_path}: not a valid data map file ({e})") from None
    if num_items <= 0:
        raise DatasetFormatError(f"{maps_path}: num_items must be positive, got {num_items}")

    rows = _iter_rows(seq_path)
    header = next(rows, None)
    if header != SEQUENCE_COLUMNS:
        raise DatasetFormatError(
            f"{seq_path}: expected header {','.join(SEQUENCE_COLUMNS)}, got {header}"
        )
    item_ids, ratings, timestamps = [], [], []
    for line, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != 4:
            raise DatasetFormatError(f"{seq_path}, line {line}: expected 4 fields, got {len(row)}")
        items = _parse_numbers(row[1], np.int64, seq_path, line, "sequence_item_ids")
        rats = _parse_numbers(row[2], np.float32, seq_path, line, "sequence_ratings")
        ts = _parse_numbers(row[3], np.int64, seq_path, line, "sequence_timestamps")
        if not len(items) == len(rats) == len(ts):
            raise DatasetFormatError(
                f"{seq_path}, line {line}: user {row[0]} has {len(items)} items, "
                f"{len(rats)} ratings and {len(ts)} timestamps"
            )
        bad = items[(items < 0) | (items >= num_items)]
        if len(bad):
            raise DatasetFormatError(
                f"{seq_path}, line {line}: user {row[0]} references unknown item id {int(bad[0])} "
                f"(valid ids are 0..{num_items - 1} per {maps_path.name})"
            )
        if (np.diff(ts) < 0).any():
            raise DatasetFormatError(
                f"{seq_path}, line {line}: user {row[0]}'s timestamps are not in chronological order"
            )
        item_ids.append(items)
        ratings.append(rats)
        timestamps.append(ts)
    if not item_ids:
        raise DatasetFormatError(f"{seq_path}: the dataset holds no users")
    return SequenceDataset(data_dir.name, num_items, item_ids, ratings, timestamps, maps)
