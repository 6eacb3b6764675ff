"""The local dataset format and the item metadata file of a prepared dataset.

A local dataset is a folder holding

* ``interactions.csv``: header ``user_id,item_id``, optionally ``rating``
  and/or ``timestamp`` (Unix seconds); ids are strings. Without
  ``timestamp``, each user's rows are in chronological order. Any other
  column is an error (a ``time`` column silently ignored would reorder
  every sequence).
* ``items.jsonl``: one JSON object per line with ``item_id`` and free-form
  text fields (strings or lists of strings), one line per item.

Both are UTF-8 (a byte order mark is accepted); spaces around header names
are ignored. Timestamps that look like milliseconds and rows that repeat an
earlier row exactly are kept and named in a warning with their numbers.

A prepared dataset keeps its items' metadata in ``item_metadata.jsonl``, line
``k`` describing item id ``k``, for the item text embedding step.
"""

from __future__ import annotations

import difflib
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import numpy as np
import pandas as pd

from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.data.sequence_format import (
    DatasetFormatError,
    decode_utf8,
    record_in_manifest,
)
from generative_recommenders.data.sources import note_source
from generative_recommenders.logs import get_logger

INTERACTIONS_FILE = "interactions.csv"
INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")
ITEMS_FILE = "items.jsonl"
ITEM_METADATA_FILE = "item_metadata.jsonl"

Items = Dict[str, Dict[str, Any]]

logger = get_logger(__name__)


def require_item_metadata(interactions: pd.DataFrame, items: Items, source: str) -> None:
    """Raises DatasetFormatError if an interacted item has no metadata in ``source``."""
    missing = pd.unique(interactions.loc[~interactions["item_id"].isin(list(items)), "item_id"])
    if len(missing):
        raise DatasetFormatError(
            f"{source}: {len(missing)} interacted item(s) have no metadata line, "
            f"e.g. item_id {missing[0]!r}"
        )


def numeric_column(df: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = pd.to_numeric(df[column], errors="coerce")
    bad = ~np.isfinite(values.to_numpy(np.float64, na_value=np.nan))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DatasetFormatError(
            f"{path}, line {row + 2}: {column} {df[column].iloc[row]!r} is not a number "
            f"({int(bad.sum())} bad value(s) in that column)"
        )
    return values


def _read_interactions(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found: a local dataset needs {INTERACTIONS_FILE}")
    text = decode_utf8(path.read_bytes(), path)
    try:
        # keep_default_na=False: ids such as "NA" or "null" stay ids.
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DatasetFormatError(f"{path} is empty: expected a header user_id,item_id") from None
    except pd.errors.ParserError as e:
        raise DatasetFormatError(f"{path}: not a readable CSV file ({e})") from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("user_id", "item_id") if c not in df.columns]
    if missing:
        raise DatasetFormatError(
            f"{path}: missing column(s) {', '.join(missing)}; the header is {','.join(df.columns)}"
        )
    unknown = [c for c in df.columns if c not in INTERACTION_COLUMNS]
    if unknown:
        hints = [
            f"{c} -> {match[0]}"
            for c in unknown
            if (match := difflib.get_close_matches(c, INTERACTION_COLUMNS, n=1, cutoff=0.5))
        ]
        raise DatasetFormatError(
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; the local format knows "
            f"{', '.join(INTERACTION_COLUMNS)}: rename"
            + (f" ({', '.join(hints)})" if hints else "")
            + " or remove them"
        )
    if len(df) == 0:
        raise DatasetFormatError(f"{path} holds no interactions")
    for column in ("user_id", "item_id"):
        empty = df[column].str.strip() == ""
        if empty.any():
            raise DatasetFormatError(
                f"{path}, line {int(np.flatnonzero(empty)[0]) + 2}: empty {column}"
            )

    out = df[["user_id", "item_id"]].copy()
    out["rating"] = (
        numeric_column(df, "rating", path).astype(np.float64) if "rating" in df else 1.0
    )
    if "timestamp" in df:
        # Fractional seconds are dropped: the contract stores whole seconds.
        out["timestamp"] = np.floor(numeric_column(df, "timestamp", path)).astype(np.int64)
        warn_on_milliseconds(out["timestamp"], path)
    else:
        out["timestamp"] = out.groupby("user_id", sort=False).cumcount().astype(np.int64)
    warn_on_duplicate_rows(out, path, "timestamp" in df)
    return out


# Unix times from 1973 to 2286 in milliseconds; in seconds they would be after the year 5138.
_MILLISECONDS = (1e11, 1e13)


def warn_on_milliseconds(timestamps: pd.Series, path: Path) -> None:
    """Warns, with the numbers, when the timestamps look like milliseconds, not the format's seconds:
    HSTU buckets time gaps by their logarithm, so every gap would land 1000 times further out."""
    median = float(timestamps.median())
    if not _MILLISECONDS[0] <= median < _MILLISECONDS[1]:
        return
    as_ms = pd.Timestamp(int(median), unit="ms").year
    logger.warning(
        f"warning: {path}: the timestamps look like milliseconds (median {int(median):,}: the year {as_ms} in "
        f"milliseconds, after the year 5138 in seconds); the local format reads Unix seconds, so HSTU's time "
        f"buckets see every gap 1,000 times too long: divide the column by 1000 unless that is meant"
    )


def warn_on_duplicate_rows(interactions: pd.DataFrame, path: Path, timed: bool) -> None:
    """Warns when rows repeat exactly: each counts as an interaction (kept, as a repeat may be real)."""
    if timed:
        repeated = interactions.duplicated(["user_id", "item_id", "rating", "timestamp"])
    else:  # rows in time order: only a repeat of the same user's row just before is suspect
        previous = interactions.groupby("user_id", sort=False)[["item_id", "rating"]].shift()
        repeated = (interactions[["item_id", "rating"]] == previous).all(axis=1)
    if repeated.any():
        first = int(np.flatnonzero(repeated.to_numpy())[0])
        what = "user, item, rating and timestamp" if timed else "user, item and rating as the user's row before"
        logger.warning(
            f"warning: {path}, line {first + 2}: {int(repeated.sum()):,} row(s) repeat an earlier row exactly "
            f"(same {what}); each counts as an interaction: remove them unless they are real repeats"
        )


def iter_item_records(path: Path, skip_blank_lines: bool) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(line number, object)`` per line of a UTF-8 JSONL item file; each object needs an ``item_id``.

    A byte order mark and spaces around the keys of a line are accepted.
    """
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = decode_utf8(raw, path, first_line=line_no)
            if not line.strip():
                if skip_blank_lines:
                    continue
                raise DatasetFormatError(
                    f"{path}, line {line_no}: empty line (line k must describe item id k - 1)"
                )
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetFormatError(
                    f"{path}, line {line_no}: malformed JSON ({e.msg})"
                ) from None
            if not isinstance(record, dict):
                raise DatasetFormatError(f"{path}, line {line_no}: expected a JSON object")
            record = {key.strip(): value for key, value in record.items()}
            if "item_id" not in record:
                raise DatasetFormatError(f"{path}, line {line_no}: no item_id field")
            yield line_no, record


def _read_items(path: Path) -> Items:
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found: a local dataset needs {ITEMS_FILE}")
    items: Items = {}
    for line_no, record in iter_item_records(path, skip_blank_lines=True):
        item_id = str(record.pop("item_id"))
        if item_id in items:
            raise DatasetFormatError(f"{path}, line {line_no}: item_id {item_id!r} appears twice")
        items[item_id] = record
    return items


def keep_frequent(df: pd.DataFrame, column: str, minimum: int, source: str, unit: str = "interactions") -> pd.DataFrame:
    """The rows whose ``column`` value (a user or an item) occurs at least ``minimum`` times.

    Prints what it dropped, e.g. ``steam: dropped 2 user(s) with fewer than 5
    reviews (7 reviews)``, when it drops anything.
    """
    counts = df.groupby(column, sort=False)[column].transform("size")
    kept = df[(counts >= minimum).to_numpy()]
    if len(kept) < len(df):
        noun = column.removesuffix("_id")
        logger.info(
            f"{source}: dropped {df[column].nunique() - kept[column].nunique():,} {noun}(s) with fewer than "
            f"{minimum} {unit} ({len(df) - len(kept):,} {unit})"
        )
    return kept


def load_local_dataset(
    local_dir: os.PathLike, min_sequence_length: int = 1
) -> Tuple[pd.DataFrame, Items]:
    """Reads a local-format dataset folder.

    Returns the interactions (``user_id, item_id, rating, timestamp`` in row
    order; rating 1.0 and per-user ordinal timestamps where the columns are
    absent) and the item metadata (item id -> fields without ``item_id``).
    Users with fewer than ``min_sequence_length`` interactions are dropped.
    """
    local_dir = Path(local_dir)
    interactions_path = local_dir / INTERACTIONS_FILE
    interactions = _read_interactions(interactions_path)
    items_path = local_dir / ITEMS_FILE
    items = _read_items(items_path)
    note_source(interactions_path)
    note_source(items_path)
    require_item_metadata(interactions, items, str(items_path))

    interactions = keep_frequent(interactions, "user_id", min_sequence_length, str(interactions_path))
    if len(interactions) == 0:
        raise DatasetFormatError(f"{interactions_path}: no user has {min_sequence_length} or more interactions")
    return interactions.reset_index(drop=True), items


def write_item_metadata(out_dir: os.PathLike, items: Items, id2item: List[str]) -> Path:
    """Writes ``item_metadata.jsonl``: line k is item id k's metadata with its ``item_id``.

    ``items`` maps each raw item id of ``id2item`` to its fields (without
    ``item_id``); the loaders guarantee that with :func:`require_item_metadata`.
    The file is recorded in the folder's manifest.
    """
    path = Path(out_dir) / ITEM_METADATA_FILE
    lines = [json.dumps({"item_id": item, **items[item]}, ensure_ascii=False) for item in id2item]
    atomic_write_text(path, "\n".join(lines) + "\n")
    record_in_manifest(out_dir, [ITEM_METADATA_FILE])
    return path
