"""The sequence data contract shared by every dataset.

A prepared dataset is a folder ``tmp/<name>/`` holding

* ``sasrec_format.csv``: one row per user, columns ``user_id,
  sequence_item_ids, sequence_ratings, sequence_timestamps``; each sequence is
  a comma-joined string in chronological order and item ids are ``0..n-1``;
* ``data_maps.json``: ``user2id``/``id2user``/``item2id``/``id2item`` maps and
  the counts (``num_users``, ``num_items``, ``num_interactions``);
* ``manifest.json``, written after every other file: the counts again, the
  size and sha256 of each file it covers, and the command that prepared the
  folder. Every writer of a covered file records it here (the sequence writer
  starts a new manifest, which drops the files derived from older sequences).

Every preprocessor goes through :func:`write_sequence_dataset`, every consumer
through :func:`load_sequence_dataset`, which refuses files that disagree with
the manifest or with each other (a file cut short, a count edited by hand). A
folder prepared before manifests existed loads with a warning that says how
to prepare it again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.errors import UserError
from generative_recommenders.logs import get_logger

SEQUENCE_FILE = "sasrec_format.csv"
MAPS_FILE = "data_maps.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
COUNTS = ("num_users", "num_items", "num_interactions")
SEQUENCE_COLUMNS = [
    "user_id",
    "sequence_item_ids",
    "sequence_ratings",
    "sequence_timestamps",
]

logger = get_logger(__name__)


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


def decode_utf8(data: bytes, path: os.PathLike, first_line: int = 1) -> str:
    """``data`` as UTF-8 text (a leading byte order mark dropped), or an error naming the line.

    ``first_line`` is the line number of ``data``'s first line in ``path``.
    """
    try:
        return data.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise DatasetFormatError(
            f"{path}, line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
            f"save the file as UTF-8"
        ) from None


def prepare_command(data_dir: os.PathLike, extra_arguments: str = "") -> str:
    """The command that prepares ``data_dir`` (again), with ``extra_arguments`` appended.

    The manifest's recorded command where there is one, else the command for
    a public dataset and the one for a local folder.
    """
    data_dir = Path(data_dir)
    try:
        recorded = (read_manifest(data_dir) or {}).get("prepare_command")
    except DatasetFormatError:
        recorded = None
    extra = f" {extra_arguments}" if extra_arguments else ""
    if isinstance(recorded, str) and recorded:
        return recorded + extra
    root = "" if data_dir.parent == Path("tmp") else f" --data_root {data_dir.parent}"
    return (
        f"python3 preprocess_public_data.py --dataset {data_dir.name}{root}{extra}, or for your own "
        f"data --local_dir DIR --dataset_name {data_dir.name}{root}{extra}"
    )


def read_manifest(data_dir: os.PathLike) -> Optional[Dict[str, Any]]:
    """The folder's manifest, or None for a folder prepared before manifests existed."""
    path = Path(data_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise ValueError("no files entry")
        for count in COUNTS:
            int(manifest[count])
    except (ValueError, KeyError, TypeError) as e:
        raise DatasetFormatError(
            f"{path}: not a valid manifest ({e}); prepare the dataset again"
        ) from None
    return manifest


def _file_record(path: Path) -> Dict[str, Any]:
    with open(path, "rb") as f:
        return {"bytes": path.stat().st_size, "sha256": hashlib.file_digest(f, "sha256").hexdigest()}


def _write_manifest(data_dir: Path, manifest: Dict[str, Any], names: Iterable[str]) -> None:
    for name in names:
        manifest["files"][name] = _file_record(data_dir / name)
    atomic_write_text(data_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def record_in_manifest(data_dir: os.PathLike, names: Sequence[str]) -> None:
    """Records the size and sha256 of files just written to a prepared folder in its manifest.

    A folder without a manifest (prepared before manifests existed) is left
    without one: its sequence data were never checked.
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    if manifest is not None:
        _write_manifest(data_dir, manifest, names)


def verify_recorded_file(data_dir: os.PathLike, name: str, manifest: Dict[str, Any]) -> None:
    """Raises DatasetFormatError unless file ``name`` is as ``manifest`` records it."""
    data_dir = Path(data_dir)
    path = data_dir / name
    recorded = manifest["files"].get(name)
    redo = f"prepare the dataset again: {prepare_command(data_dir)}"
    if recorded is None:
        raise DatasetFormatError(
            f"{path}: not recorded in {MANIFEST_FILE} (written before the current sequence data, "
            f"or by hand); {redo}"
        )
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found, though {MANIFEST_FILE} records it; {redo}")
    actual = _file_record(path)
    if actual != recorded:
        raise DatasetFormatError(
            f"{path}: changed since it was prepared ({actual['bytes']:,} bytes, sha256 "
            f"{actual['sha256'][:12]}... where {MANIFEST_FILE} records {recorded.get('bytes', '?'):,} "
            f"bytes, sha256 {str(recorded.get('sha256'))[:12]}...); {redo}"
        )


def _join(values: np.ndarray, fmt: str) -> str:
    return ",".join(fmt % v for v in values)


def write_sequence_dataset(
    out_dir: os.PathLike,
    interactions: pd.DataFrame,
    extra_maps: Optional[Dict[str, Any]] = None,
    prepare_command: Optional[str] = None,
    provenance: Optional[Dict[str, Any]] = None,
) -> SequenceDataset:
    """Numbers users and items and writes the contract files atomically, the manifest last.

    Args:
        out_dir: the dataset folder (``tmp/<name>``).
        interactions: columns ``user_id, item_id, rating, timestamp`` in the
            source's row order, already filtered. Users and items are numbered
            0..n-1 in order of first appearance; each user's interactions are
            sorted by timestamp with a stable sort, ties broken by item id.
        extra_maps: more entries for ``data_maps.json`` (e.g. ``id2meta``).
        prepare_command: the command that prepares this folder, for the
            manifest and the messages that suggest it.
        provenance: more manifest entries: what the folder is prepared from
            (``data/sources.py``).
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
    # The old manifest stays until both files are written: a crash in between leaves files
    # that disagree with it, which the loader refuses.
    atomic_write_text(out_dir / MAPS_FILE, json.dumps(maps))
    atomic_write_text(out_dir / SEQUENCE_FILE, buf.getvalue())
    manifest: Dict[str, Any] = {"format_version": MANIFEST_VERSION, **{c: maps[c] for c in COUNTS}, "files": {}}
    if prepare_command:
        manifest["prepare_command"] = prepare_command
    manifest.update(provenance or {})
    _write_manifest(out_dir, manifest, [MAPS_FILE, SEQUENCE_FILE])
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


def _read_maps(maps_path: Path) -> Dict[str, Any]:
    """The data maps, their counts checked against the id maps they hold."""
    try:
        maps = json.loads(decode_utf8(maps_path.read_bytes(), maps_path))
        num_items = int(maps["num_items"])
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, DatasetFormatError):
            raise
        raise DatasetFormatError(f"{maps_path}: not a valid data map file ({e})") from None
    if num_items <= 0:
        raise DatasetFormatError(f"{maps_path}: num_items must be positive, got {num_items}")
    for count, id_map in (("num_items", "id2item"), ("num_users", "id2user")):
        if id_map in maps and (count not in maps or maps[count] != len(maps[id_map])):
            raise DatasetFormatError(
                f"{maps_path}: {count} is {maps.get(count)} but {id_map} lists {len(maps[id_map]):,}; "
                f"the file was edited or is damaged: {prepare_command(maps_path.parent)}"
            )
    return maps


def _check_counts(
    found: Dict[str, int], record: Dict[str, Any], what: str, seq_path: Path, keys: Sequence[str]
) -> None:
    """Raises unless ``found`` agrees with ``record`` (the maps' or the manifest's) on ``keys``."""
    differ = [k for k in keys if k in record and int(record[k]) != found[k]]
    if differ:
        ours = ", ".join(f"{found[k]:,} {k[len('num_'):]}" for k in differ)
        theirs = ", ".join(f"{int(record[k]):,} {k[len('num_'):]}" for k in differ)
        raise DatasetFormatError(
            f"{seq_path}: holds {ours} where {what} records {theirs}: the file is cut short or was "
            f"changed; prepare the dataset again: {prepare_command(seq_path.parent)}"
        )


def load_sequence_dataset(data_dir: os.PathLike) -> SequenceDataset:
    """Reads and validates a prepared dataset folder.

    Raises :class:`DatasetFormatError` naming the file, line and problem for a
    missing or malformed file, text that is not UTF-8, unknown item ids,
    mismatched sequence lengths or an empty dataset; and, naming the numbers,
    for counts that disagree between the sequence file, the maps and the
    manifest, or a file whose size or sha256 is not the manifest's.
    """
    data_dir = Path(data_dir)
    seq_path, maps_path = data_dir / SEQUENCE_FILE, data_dir / MAPS_FILE
    for p in (seq_path, maps_path):
        if not p.is_file():
            raise DatasetFormatError(f"{p} not found: prepare the dataset first ({prepare_command(data_dir)})")
    manifest = read_manifest(data_dir)
    maps = _read_maps(maps_path)
    num_items = int(maps["num_items"])

    rows = csv.reader(io.StringIO(decode_utf8(seq_path.read_bytes(), seq_path), newline=""))
    item_ids, ratings, timestamps = [], [], []
    try:
        header = next(rows, None)
        if header != SEQUENCE_COLUMNS:
            raise DatasetFormatError(
                f"{seq_path}: expected header {','.join(SEQUENCE_COLUMNS)}, got {header}"
            )
        for row in rows:
            line = rows.line_num
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
    except csv.Error as e:  # e.g. NUL bytes: a binary file
        raise DatasetFormatError(f"{seq_path}, line {rows.line_num}: not a CSV text line ({e})") from None
    if not item_ids:
        raise DatasetFormatError(f"{seq_path}: the dataset holds no users")
    dataset = SequenceDataset(data_dir.name, num_items, item_ids, ratings, timestamps, maps)
    found = {"num_users": dataset.num_users, "num_items": num_items, "num_interactions": dataset.num_interactions}
    _check_counts(found, maps, maps_path.name, seq_path, ["num_users", "num_interactions"])
    if manifest is None:
        logger.warning(
            f"warning: {data_dir} has no {MANIFEST_FILE} (prepared by an earlier version), so its "
            f"files are not verified; prepare it again to add one: {prepare_command(data_dir)}"
        )
        return dataset
    _check_counts(found, manifest, MANIFEST_FILE, seq_path, ["num_users", "num_interactions"])
    if num_items != int(manifest["num_items"]):
        raise DatasetFormatError(
            f"{maps_path}: num_items is {num_items:,} where {MANIFEST_FILE} records "
            f"{int(manifest['num_items']):,}; prepare the dataset again: {prepare_command(data_dir)}"
        )
    for name in (MAPS_FILE, SEQUENCE_FILE):
        verify_recorded_file(data_dir, name, manifest)
    return dataset
