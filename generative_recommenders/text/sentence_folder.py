"""How a model folder embeds a text: pooling, normalization and length, in sentence-transformers' files.

A folder written by ``gre_train`` records the pooling it was trained with in
``1_Pooling/config.json``, L2 normalization as a ``Normalize`` entry of
``modules.json`` and its maximum length in ``sentence_bert_config.json``: the
layout sentence-transformers reads, so the folder loads there as it does
here (``hf:<folder>``).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import torch

POOLINGS = ("cls", "mean")
POOLING_FOLDER = "1_Pooling"
NORMALIZE_FOLDER = "2_Normalize"


def pool_hidden_states(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``[batch, dim]``: the CLS token's state or the attention-masked mean of the states."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


@dataclass(frozen=True)
class SentenceSettings:
    pooling: str
    normalize: bool
    max_length: Optional[int]


def read_sentence_settings(folder: str) -> Optional[SentenceSettings]:
    """The settings a local model folder records, or None where it records no CLS or mean pooling."""
    pooling_file = Path(folder) / POOLING_FOLDER / "config.json"
    if not pooling_file.is_file():
        return None
    config = json.loads(pooling_file.read_text(encoding="utf-8"))
    modes = [mode for mode, key in (("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens")) if config.get(key)]
    if len(modes) != 1 or any(v for k, v in config.items() if k.startswith("pooling_mode_") and k not in (
            "pooling_mode_cls_token", "pooling_mode_mean_tokens")):
        return None
    modules_file = Path(folder) / "modules.json"
    modules = json.loads(modules_file.read_text(encoding="utf-8")) if modules_file.is_file() else []
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    sentence_config = Path(folder) / "sentence_bert_config.json"
    max_length = json.loads(sentence_config.read_text(encoding="utf-8")).get("max_seq_length") if sentence_config.is_file() else None
    return SentenceSettings(modes[0], normalize, max_length)


def write_sentence_settings(folder: Path, settings: SentenceSettings, dim: int) -> None:
    """Writes the sentence-transformers files that record ``settings`` into ``folder``."""
    if settings.pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {settings.pooling!r}")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_FOLDER, "type": "sentence_transformers.models.Pooling"},
    ]
    if settings.normalize:
        modules.append({"idx": 2, "name": "2", "path": NORMALIZE_FOLDER, "type": "sentence_transformers.models.Normalize"})
        (folder / NORMALIZE_FOLDER).mkdir(exist_ok=True)
    (folder / POOLING_FOLDER).mkdir(exist_ok=True)
    pooling = {
        "word_embedding_dimension": dim,
        "pooling_mode_cls_token": settings.pooling == "cls",
        "pooling_mode_mean_tokens": settings.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    files = {
        folder / "modules.json": modules,
        folder / POOLING_FOLDER / "config.json": pooling,
        folder / "sentence_bert_config.json": {"max_seq_length": settings.max_length, "do_lower_case": False},
    }
    for path, content in files.items():
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def weights_sha256(folder: str) -> Optional[str]:
    """sha256 over a local model folder's weight files (``*.safetensors``, ``pytorch_model*.bin``: names
    and bytes, in name order), or None where it has none. Embeddings computed with a folder are tied to
    it, so that a folder trained again under the same path is not taken for the old one."""
    files = sorted(
        path for path in Path(folder).iterdir()
        if path.is_file() and (path.suffix == ".safetensors" or (path.name.startswith("pytorch_model") and path.suffix == ".bin"))
    )
    if not files:
        return None
    return _files_sha256(tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files))


@functools.lru_cache(maxsize=16)
def _files_sha256(files: Tuple[Tuple[str, int, int], ...]) -> str:
    """The digest of ``files`` (path, size, modification time): read once per process while they are
    unchanged (every dataset and run of a benchmark loads the same encoder's embeddings)."""
    digest = hashlib.sha256()
    for path, _, _ in files:
        digest.update(Path(path).name.encode() + b"\0")
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
