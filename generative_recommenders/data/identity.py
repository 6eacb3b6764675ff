"""Which data a run was trained on: the identity a run records, and the check of data against it.

Counts alone do not tell two datasets apart: the same interactions written in
another row order number their items otherwise (ids follow first
appearance), and other interactions may have the same counts. A run
therefore records, in ``results.json``'s ``data_identity``, sha256 digests of

* ``sequences``: the sequence file ``sasrec_format.csv``;
* ``item_map`` / ``user_map``: the item and user id maps (``id2item``,
  ``id2user`` of ``data_maps.json``), in id order;
* ``item_texts``: ``item_texts.json``, and ``text_table``: the sidecar's
  digest of the text embedding tensor (text runs only).

Whatever serves or continues a run checks the data it opens against that
record (:func:`check_data_identity`) and refuses data that differs, in one
line naming what changed and both digests. The same data prepared again
(``--force``) gives the same digests, so it passes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from generative_recommenders.data.sequence_format import MAPS_FILE, SEQUENCE_FILE, decode_utf8
from generative_recommenders.errors import UserError
from generative_recommenders.logs import get_logger

IDENTITY_KEY = "data_identity"
ITEM_TEXTS_FILE = "item_texts.json"
# Each part of an identity: what it is, in a message.
PARTS = {
    "sequences": f"the sequences ({SEQUENCE_FILE})",
    "item_map": f"the item id map (id2item of {MAPS_FILE})",
    "user_map": f"the user id map (id2user of {MAPS_FILE})",
    "item_texts": f"the item texts ({ITEM_TEXTS_FILE})",
    "text_table": "the item text embeddings",
}

logger = get_logger(__name__)


class DataIdentityError(UserError):
    """The data opened for a run is not the data the run was trained on."""


def file_sha256(path: os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _ids_sha256(ids: List[Any]) -> str:
    return hashlib.sha256(json.dumps([str(i) for i in ids], ensure_ascii=False).encode("utf-8")).hexdigest()


def _text_table_sha256(data_dir: Path, model: str) -> Optional[str]:
    """The tensor digest the embedding sidecar records (None for a sidecar written before it did)."""
    from generative_recommenders.text.embedding_store import TENSOR_HASH_FIELD, embedding_file

    sidecar = embedding_file(data_dir, model).with_suffix(".json")
    try:
        value = json.loads(sidecar.read_text(encoding="utf-8")).get(TENSOR_HASH_FIELD)
    except (OSError, ValueError, AttributeError):
        return None  # the embedding loader names what is wrong with the file
    return value if isinstance(value, str) else None


def data_identity(
    data_dir: os.PathLike, text_embedding_model: Optional[str] = None, maps: Optional[Dict[str, Any]] = None
) -> Dict[str, Any]:
    """The identity of prepared folder ``data_dir`` (see the module docstring).

    ``maps`` are its already-read ``data_maps.json`` (read here otherwise);
    ``text_embedding_model`` adds the texts and that model's embedding table.
    """
    data_dir = Path(data_dir)
    if maps is None:
        maps = json.loads(decode_utf8((data_dir / MAPS_FILE).read_bytes(), data_dir / MAPS_FILE))
    identity: Dict[str, Any] = {
        "data_dir": str(data_dir),
        "sequences": file_sha256(data_dir / SEQUENCE_FILE),
        "item_map": _ids_sha256(maps.get("id2item", [])),
        "user_map": _ids_sha256(maps.get("id2user", [])),
    }
    if text_embedding_model:
        texts = data_dir / ITEM_TEXTS_FILE
        identity["item_texts"] = file_sha256(texts) if texts.is_file() else None
        identity["text_table"] = {
            "model": text_embedding_model, "sha256": _text_table_sha256(data_dir, text_embedding_model)
        }
    return identity


def _digest(part: Any) -> Optional[str]:
    return part.get("sha256") if isinstance(part, dict) else part


def identity_differences(recorded: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
    """The parts (``PARTS`` keys) whose recorded digest is not the current one; parts that either
    side does not know (an older record, an older sidecar) are not compared."""
    return [
        part for part in PARTS
        if _digest(recorded.get(part)) and _digest(current.get(part)) and _digest(recorded[part]) != _digest(current[part])
    ]


def check_same_data(recorded: Any, current: Dict[str, Any], run_dir: os.PathLike, fix: str) -> None:
    """Raises DataIdentityError unless ``current`` (a :func:`data_identity`) is the data of the run
    whose ``results.json`` recorded ``recorded``; ``fix`` ends the message.

    A run recorded before runs recorded their data (no ``recorded``) is let
    through with a warning: it cannot be checked.
    """
    if not isinstance(recorded, dict):
        logger.warning(
            f"warning: {run_dir} records no identity of its data (trained by an earlier version), so "
            f"{current['data_dir']} cannot be checked against it"
        )
        return
    differ = identity_differences(recorded, current)
    if not differ:
        return
    changes = "; ".join(
        f"{PARTS[part]}: sha256 {_digest(recorded[part])[:12]}... in the run, "
        f"{_digest(current[part])[:12]}... in {current['data_dir']}"
        for part in differ
    )
    raise DataIdentityError(
        f"{current['data_dir']} is not the data {run_dir} was trained on (from {recorded.get('data_dir', '?')}); "
        f"changed: {changes}; {fix}"
    )


def check_data_identity(
    recorded: Any, data_dir: os.PathLike, run_dir: os.PathLike, fix: str, maps: Optional[Dict[str, Any]] = None
) -> None:
    """:func:`check_same_data` of prepared folder ``data_dir`` (its text table too where the run
    recorded one)."""
    table = recorded.get("text_table") if isinstance(recorded, dict) else None
    model = table.get("model") if isinstance(table, dict) else None
    check_same_data(recorded, data_identity(data_dir, model, maps), run_dir, fix)


def check_runs_share_data(runs: Sequence[Tuple[os.PathLike, Dict[str, Any]]]) -> None:
    """Raises DataIdentityError if two of ``(run folder, results)`` name the same dataset with the
    same counts but record different data: one table would mix them (runs recorded before runs
    recorded their data are not compared)."""
    first: Dict[Tuple, Tuple[os.PathLike, Dict[str, Any]]] = {}
    for folder, results in runs:
        identity, dataset = results.get(IDENTITY_KEY), results.get("dataset")
        if not isinstance(identity, dict) or not isinstance(dataset, dict):
            continue
        key = tuple(dataset.get(count) for count in ("name", "num_users", "num_items", "num_interactions"))
        earlier_folder, earlier = first.setdefault(key, (folder, identity))
        differ = [part for part in identity_differences(earlier, identity) if part in ("sequences", "item_map", "user_map")]
        if differ:
            raise DataIdentityError(
                f"{earlier_folder} and {folder} were trained on different data named {key[0]} (the same "
                f"counts; they differ in {', '.join(PARTS[part] for part in differ)}), so they cannot share "
                "a table: compare runs of one data, or train them again on the same prepared folder"
            )
