"""Item text embedding files: computing them with a cache, and loading them.

A dataset folder holds, per text encoder, ``item_text_embeddings_<model>.pt``:
a float32 tensor ``[num_items + 1, dim]`` whose row 0 is zeros (id 0 is
padding) and whose row k + 1 embeds the text of item id k, next to a JSON
sidecar ``item_text_embeddings_<model>.json`` describing it.

An encoder is a :class:`~generative_recommenders.text.encoders.TextEncoder`
(or any object with its members).

Embeddings are cached per (encoder cache key, text) in shard files under
``<cache_dir>/<cache key>/``, one shard written after each chunk of texts, so
an interrupted run resumes where it stopped and a rerun encodes only new texts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import torch
from tqdm import tqdm

from generative_recommenders.atomic_files import atomic_torch_save, atomic_write_text
from generative_recommenders.data.sequence_format import (
    prepare_command,
    read_manifest,
    record_in_manifest,
    verify_recorded_file,
)
from generative_recommenders.errors import UserError
from generative_recommenders.logs import get_logger
from generative_recommenders.text.encoders import TextEncoder
from generative_recommenders.text.sentence_folder import weights_sha256

# Sidecar fields that the loader checks; encoder metadata may repeat them, not change them.
_CHECKED_FIELDS = ("cache_key", "dim", "num_items", "texts_hash")
# The sidecar's sha256 of the tensor's bytes: a table copied in from elsewhere is refused.
TENSOR_HASH_FIELD = "tensor_sha256"


logger = get_logger(__name__)


class EmbeddingFileError(UserError):
    """An item text embedding file, its sidecar or a cache shard is missing, malformed or stale."""


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 hex of the texts in order; each is length-prefixed so no two lists collide."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def tensor_sha256(table: torch.Tensor) -> str:
    """sha256 hex of a CPU tensor's bytes, in row-major order."""
    return hashlib.sha256(table.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embedding_file(data_dir: os.PathLike, model_name: str) -> Path:
    """``data_dir/item_text_embeddings_<model>.pt``, the model name made file-safe.

    The JSON sidecar is the same path with the suffix ``.json``.
    """
    return Path(data_dir) / f"item_text_embeddings_{_safe_name(model_name)}.pt"


def _check_encoded(embeddings: Any, num_texts: int, encoder: TextEncoder) -> torch.Tensor:
    """The encoder's output as float32 on CPU, or an error if it is malformed or not finite."""
    expected = (num_texts, encoder.dim)
    if not isinstance(embeddings, torch.Tensor) or tuple(embeddings.shape) != expected:
        got = (
            f"shape {tuple(embeddings.shape)}"
            if isinstance(embeddings, torch.Tensor)
            else f"a {type(embeddings).__name__}"
        )
        raise EmbeddingFileError(
            f"encoder {encoder.name!r} returned {got} for {num_texts} texts, "
            f"expected a tensor of shape {expected}"
        )
    embeddings = embeddings.detach().to("cpu", torch.float32)
    if not torch.isfinite(embeddings).all():
        bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
        raise EmbeddingFileError(
            f"encoder {encoder.name!r} returned NaN or inf for {bad} of {num_texts} texts; "
            f"nothing was saved for them"
        )
    return embeddings.contiguous()


class _ShardCache:
    """Embeddings by text key for one encoder cache key, kept in shard files of one folder."""

    def __init__(self, folder: Path, cache_key: str, dim: int) -> None:
        self.folder, self.cache_key, self.dim = folder, cache_key, dim
        self._rows: Dict[str, int] = {}
        self._tables: List[torch.Tensor] = []
        self._num_rows = 0
        for shard in sorted(folder.glob("shard-*.pt")):
            self._remember(*self._read_shard(shard))

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def _read_shard(self, shard: Path) -> Tuple[List[str], torch.Tensor]:
        advice = "delete it to recompute its texts"
        try:
            content = torch.load(shard, map_location="cpu", weights_only=True)
        except Exception as e:
            raise EmbeddingFileError(
                f"{shard}: not a readable cache shard ({e}); {advice}"
            ) from None
        if not isinstance(content, dict) or not {"cache_key", "keys", "embeddings"} <= set(content):
            raise EmbeddingFileError(
                f"{shard}: not a cache shard (expected cache_key, keys, embeddings); {advice}"
            )
        keys, embeddings = content["keys"], content["embeddings"]
        if content["cache_key"] != self.cache_key:
            raise EmbeddingFileError(
                f"{shard}: holds embeddings of encoder {content['cache_key']!r}, not "
                f"{self.cache_key!r} (both map to the folder {self.folder.name}); {advice}"
            )
        if (
            not isinstance(embeddings, torch.Tensor)
            or embeddings.shape != (len(keys), self.dim)
            or not torch.isfinite(embeddings).all()
        ):
            raise EmbeddingFileError(
                f"{shard}: expected finite embeddings of shape ({len(keys)}, {self.dim}); {advice}"
            )
        return keys, embeddings.float()

    def _remember(self, keys: List[str], embeddings: torch.Tensor) -> None:
        for offset, key in enumerate(keys):
            self._rows[key] = self._num_rows + offset
        self._tables.append(embeddings)
        self._num_rows += len(keys)

    def add(self, keys: List[str], embeddings: torch.Tensor) -> None:
        """Writes one new shard, then makes its embeddings available."""
        shard = self.folder / f"shard-{time.time_ns()}-{uuid.uuid4().hex[:8]}.pt"
        atomic_torch_save(
            {"cache_key": self.cache_key, "keys": list(keys), "embeddings": embeddings}, shard
        )
        self._remember(keys, embeddings)

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        rows = torch.tensor([self._rows[k] for k in keys], dtype=torch.long)
        return torch.cat(self._tables)[rows]


def compute_item_text_embeddings(
    texts: Sequence[str],
    encoder: TextEncoder,
    data_dir: os.PathLike,
    cache_dir: os.PathLike,
    chunk_size: int = 256,
) -> Path:
    """Embeds ``texts`` (``texts[k]`` is item id k's) and writes the embedding file and sidecar.

    Only texts missing from the cache are encoded, deduplicated, sorted by
    length (similar lengths batch well) and in chunks of ``chunk_size``; each
    chunk becomes a cache shard as soon as it is encoded. Returns the path of
    the embedding file.
    """
    if not texts:
        raise ValueError("no item texts to embed")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    sidecar = {
        "model": encoder.name,
        "cache_key": encoder.cache_key,
        "dim": encoder.dim,
        "num_items": len(texts),
        "texts_hash": texts_hash(texts),
    }
    clashes = [k for k in _CHECKED_FIELDS if encoder.metadata.get(k, sidecar[k]) != sidecar[k]]
    if clashes:
        raise ValueError(f"encoder {encoder.name!r} metadata contradicts its {clashes}")
    # The metadata's "model", where given, names the underlying model instead of the encoder.
    sidecar.update(encoder.metadata)
    keys = [_text_key(text) for text in texts]
    cache_folder = Path(cache_dir) / _safe_name(encoder.cache_key)
    cache = _ShardCache(cache_folder, encoder.cache_key, encoder.dim)
    items_per_key = Counter(keys)
    missing = {key: text for key, text in zip(keys, texts) if key not in cache}
    todo = sorted(missing.items(), key=lambda key_text: len(key_text[1]))
    num_computed = sum(items_per_key[key] for key, _ in todo)

    start = time.perf_counter()
    with tqdm(
        # Off when nothing is computed, and where stderr is no terminal (nested bars would interleave).
        total=num_computed, unit="item", desc=f"embedding with {encoder.name}", disable=None if todo else True
    ) as progress:
        for begin in range(0, len(todo), chunk_size):
            chunk_keys, chunk_texts = zip(*todo[begin:begin + chunk_size])
            encoded = encoder.encode(list(chunk_texts))
            embeddings = _check_encoded(encoded, len(chunk_texts), encoder)
            cache.add(list(chunk_keys), embeddings)
            progress.update(sum(items_per_key[key] for key in chunk_keys))
    elapsed = time.perf_counter() - start

    table = torch.zeros(len(texts) + 1, encoder.dim, dtype=torch.float32)
    table[1:] = cache.lookup(keys)
    sidecar[TENSOR_HASH_FIELD] = tensor_sha256(table)
    path = embedding_file(data_dir, encoder.name)
    sidecar_path = path.with_suffix(".json")
    # The old sidecar goes first: a tensor is only trusted next to its own sidecar.
    sidecar_path.unlink(missing_ok=True)
    atomic_torch_save(table, path)
    atomic_write_text(sidecar_path, json.dumps(sidecar, indent=2) + "\n")
    rate = num_computed / elapsed if num_computed and elapsed > 0 else 0.0
    logger.info(
        f"{path}: {num_computed} item texts computed, {len(texts) - num_computed} from the cache, "
        f"{rate:.1f} items/s"
    )
    return path


def _rerun_hint(data_dir: Path, model_name: str) -> str:
    return prepare_command(data_dir, f"--text_embedding_model {model_name}")


def load_item_text_embeddings(
    data_dir: os.PathLike, model_name: str, num_items: int, texts_hash: str
) -> torch.Tensor:
    """Loads and validates ``[num_items + 1, dim]`` item text embeddings of a prepared dataset.

    ``texts_hash`` is :func:`texts_hash` of the dataset's current item texts.
    Raises :class:`EmbeddingFileError`, naming the file, for a missing file or
    sidecar, a garbled one, a tensor that is not 2-D, a wrong item count,
    item texts changed since the embeddings were computed, NaN/inf values or
    a non-zero padding row 0.
    """
    data_dir = Path(data_dir)
    path = embedding_file(data_dir, model_name)
    sidecar_path = path.with_suffix(".json")
    rerun = _rerun_hint(data_dir, model_name)
    for p in (path, sidecar_path):
        if not p.is_file():
            raise EmbeddingFileError(
                f"{p} not found: compute the item text embeddings with {rerun}"
            )
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        sidecar_items, sidecar_hash, sidecar_dim = (
            int(sidecar["num_items"]), str(sidecar["texts_hash"]), int(sidecar["dim"])
        )
    except (ValueError, KeyError, TypeError) as e:
        raise EmbeddingFileError(
            f"{sidecar_path}: not a valid embedding sidecar ({type(e).__name__}: {e}); "
            f"rerun {rerun}"
        ) from None
    try:
        table = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EmbeddingFileError(
            f"{path}: not a readable tensor file ({e}); rerun {rerun}"
        ) from None
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or not table.is_floating_point():
        described = (
            f"a {table.dim()}-D {table.dtype} tensor"
            if isinstance(table, torch.Tensor)
            else f"a {type(table).__name__}"
        )
        raise EmbeddingFileError(
            f"{path}: expected a 2-D float tensor [num_items + 1, dim], got {described}"
        )
    if table.shape[0] != num_items + 1 or sidecar_items != num_items:
        raise EmbeddingFileError(
            f"{path}: holds {table.shape[0]} rows ({sidecar_path.name} says {sidecar_items} items) "
            f"but the dataset has {num_items} items, so {num_items + 1} rows are expected; "
            f"rerun {rerun}"
        )
    folder = model_name[len("hf:"):] if model_name.startswith("hf:") else None
    if "weights_sha256" in sidecar and folder is not None and os.path.isdir(folder):
        if weights_sha256(folder) != sidecar["weights_sha256"]:
            raise EmbeddingFileError(
                f"{path}: the weights in {folder} changed since the embeddings were computed "
                f"(it was trained or replaced again); rerun {rerun}"
            )
    if sidecar_hash != texts_hash:
        raise EmbeddingFileError(
            f"{path}: the item texts changed since the embeddings were computed "
            f"(text hash {sidecar_hash[:12]}... in {sidecar_path.name}, now {texts_hash[:12]}...); "
            f"rerun {rerun}"
        )
    if table.shape[1] != sidecar_dim:
        raise EmbeddingFileError(
            f"{path}: rows have dimension {table.shape[1]} but {sidecar_path.name} says "
            f"{sidecar_dim}; rerun {rerun}"
        )
    if table[0].any():
        raise EmbeddingFileError(f"{path}: row 0 (padding) must be zeros; rerun {rerun}")
    finite = torch.isfinite(table).all(dim=1)
    if not finite.all():
        row = int((~finite).nonzero()[0])
        raise EmbeddingFileError(
            f"{path}: {int((~finite).sum())} row(s) hold NaN or inf, the first row {row} "
            f"(item id {row - 1}); rerun {rerun}"
        )
    recorded_tensor_hash = sidecar.get(TENSOR_HASH_FIELD)
    if recorded_tensor_hash is None:
        logger.warning(
            f"warning: {sidecar_path} records no hash of {path.name} (written by an earlier version), so the "
            f"table cannot be checked; add it with {prepare_command(data_dir, f'--text_embedding_model {model_name} --force')}"
        )
    elif tensor_sha256(table) != recorded_tensor_hash:
        raise EmbeddingFileError(
            f"{path}: not the table its sidecar describes (tensor sha256 {tensor_sha256(table)[:12]}..., "
            f"{sidecar_path.name} records {str(recorded_tensor_hash)[:12]}...): copied from another dataset or "
            f"changed; rerun {rerun}"
        )
    return table.float()


ITEM_TEXTS_FILE = "item_texts.json"


def write_item_texts(data_dir: os.PathLike, texts: Sequence[str]) -> Path:
    """Writes the dataset's item texts (entry k = item id k), what its embeddings encode.

    The file is recorded in the folder's manifest.
    """
    path = Path(data_dir) / ITEM_TEXTS_FILE
    atomic_write_text(path, json.dumps(list(texts), ensure_ascii=False))
    record_in_manifest(data_dir, [ITEM_TEXTS_FILE])
    return path


def read_item_texts(data_dir: os.PathLike) -> List[str]:
    """The dataset's item texts, checked against its manifest where it has one."""
    path = Path(data_dir) / ITEM_TEXTS_FILE
    if not path.is_file():
        raise EmbeddingFileError(
            f"{path} not found: compute the item texts and embeddings with {prepare_command(data_dir)}"
        )
    manifest = read_manifest(data_dir)
    if manifest is not None:
        verify_recorded_file(data_dir, ITEM_TEXTS_FILE, manifest)
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise EmbeddingFileError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise EmbeddingFileError(f"{path}: expected a JSON list of strings")
    return texts


def load_dataset_text_embeddings(data_dir: os.PathLike, model_name: str, num_items: int) -> torch.Tensor:
    """The validated embedding table of a prepared dataset's current item texts."""
    texts = read_item_texts(data_dir)
    if len(texts) != num_items:
        raise EmbeddingFileError(
            f"{Path(data_dir) / ITEM_TEXTS_FILE}: holds {len(texts)} texts for {num_items} items"
        )
    return load_item_text_embeddings(data_dir, model_name, num_items, texts_hash(texts))
