"""Prepares datasets into the sequence format under ``tmp/<name>/``.

    python3 preprocess_public_data.py            # the paper's four datasets
    python3 preprocess_public_data.py --dataset amzn23_game [--dataset steam ...]
    python3 preprocess_public_data.py --local_dir DIR --dataset_name NAME

Raw files are downloaded to ``<output_root>/raw`` (or read from ``--raw_dir``).
Each dataset folder gets ``sasrec_format.csv``, ``data_maps.json`` (with
``id2meta``, each item's text), ``item_texts.json`` and
``item_metadata.jsonl``, then ``item_text_embeddings_<model>.pt`` from the
text encoder named by ``text_embedding_model`` (``none`` skips this step).
Work already done is skipped unless ``--force`` is given; embeddings are
cached per (model, text) under ``<output_root>/text_cache`` so that an
interrupted run resumes and changed texts alone are encoded again.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pandas as pd

from generative_recommenders.data import amazon2023, steam
from generative_recommenders.data.download import DownloadError
from generative_recommenders.data.local import (
    ITEM_METADATA_FILE,
    Items,
    load_local_dataset,
    write_item_metadata,
)
from generative_recommenders.data.movielens import LOADERS, load_movielens
from generative_recommenders.data.sequence_format import (
    MAPS_FILE,
    SEQUENCE_FILE,
    write_sequence_dataset,
)
from generative_recommenders.text.embedding_store import (
    ITEM_TEXTS_FILE,
    EmbeddingFileError,
    compute_item_text_embeddings,
    load_item_text_embeddings,
    read_item_texts,
    texts_hash,
    write_item_texts,
)
from generative_recommenders.text.encoders import TextEncodingError, get_text_encoder
from generative_recommenders.text.item_text import item_texts, read_item_metadata

# The item text encoder: "blair" (the paper), "blair-large", "gre-small", "gre-base",
# "gre-large" (GRE), "openai" (text-embedding-3-large, 768-d), "minilm" (bundled, works offline),
# "hf:<name-or-path>", or "none". The --text_embedding_model flag overrides it.
text_embedding_model = "minilm"

# item_metadata.jsonl is written last: its presence marks a folder complete.
OUTPUT_FILES = (SEQUENCE_FILE, MAPS_FILE, ITEM_TEXTS_FILE, ITEM_METADATA_FILE)
Loader = Callable[[], Tuple[pd.DataFrame, Items]]


@dataclass(frozen=True)
class PublicDataset:
    """How to load one public dataset from a raw folder, and what to expect of it."""

    load: Callable[[Path], Tuple[pd.DataFrame, Items]]
    text_recipe: str
    timestamp_unit: str
    expected_num_items: Optional[int] = None
    item_count_note: str = ""


PUBLIC_DATASETS: Dict[str, PublicDataset] = {
    **{
        name: PublicDataset(partial(load_movielens, name), "movielens", "s")
        for name in LOADERS
    },
    **{
        name: PublicDataset(
            partial(amazon2023.load_amazon2023, name), "amazon", "ms",
            amazon2023.EXPECTED_NUM_ITEMS[name], amazon2023.ITEM_COUNT_NOTE,
        )
        for name in amazon2023.CATEGORIES
    },
    "steam": PublicDataset(
        steam.load_steam, "steam", "s", steam.EXPECTED_NUM_ITEMS, steam.ITEM_COUNT_NOTE
    ),
}
# What a run without --dataset or --local_dir prepares: the paper's datasets.
PAPER_DATASETS = ("amzn23_office", "amzn23_game", "amzn23_music", "steam")


def prepare_text_embeddings(
    out_dir: Path, recipe: str, fields: Optional[List[str]], model: str, cache_dir: Path, force: bool
) -> None:
    """Writes the item texts and their embeddings, unless they are already up to date."""
    texts = item_texts(read_item_metadata(out_dir), recipe, fields)
    try:
        unchanged = read_item_texts(out_dir) == texts
    except EmbeddingFileError:
        unchanged = False
    if not unchanged:
        write_item_texts(out_dir, texts)
    if not force:
        try:
            load_item_text_embeddings(out_dir, model, len(texts), texts_hash(texts))
            print(f"{out_dir.name}: {model} item text embeddings are up to date")
            return
        except EmbeddingFileError:
            pass  # missing or stale: (re)compute, from the cache where possible
    start = time.perf_counter()
    path = compute_item_text_embeddings(texts, get_text_encoder(model), out_dir, cache_dir)
    print(f"{out_dir.name}: {model} item text embeddings in {path} ({time.perf_counter() - start:.1f} s)")


def warn_on_item_count(name: str, num_items: int, expected: Optional[int], note: str) -> None:
    """Says clearly when a dataset's item count differs from the paper's (model sizes follow the data)."""
    if expected is not None and num_items != expected:
        print(
            f"WARNING: {name} has {num_items:,} items where the paper reports {expected:,} "
            f"({num_items - expected:+,}); known causes: {note}. Models are sized from the data, "
            f"not from this number."
        )


def prepare_dataset(
    name: str,
    load: Loader,
    output_root: Path,
    force: bool,
    text_recipe: str,
    text_fields: Optional[List[str]] = None,
    timestamp_unit: Optional[str] = None,
) -> Optional[int]:
    """Loads one dataset and writes its folder; returns its item count, or None if already prepared."""
    out_dir = output_root / name
    if not force and all((out_dir / f).is_file() for f in OUTPUT_FILES):
        print(f"{name}: already prepared in {out_dir}, skipping (pass --force to redo)")
        return None
    start = time.perf_counter()
    interactions, items = load()
    # The contract numbers items in order of first appearance; the texts are needed for the maps.
    id2item = list(pd.unique(interactions["item_id"].astype(str)))
    texts = item_texts([{"item_id": item, **items[item]} for item in id2item], text_recipe, text_fields)
    extra_maps = {"id2meta": texts}
    if timestamp_unit is not None:
        extra_maps["timestamp_unit"] = timestamp_unit
    # Until every file is rewritten, the folder must not look complete.
    (out_dir / ITEM_METADATA_FILE).unlink(missing_ok=True)
    dataset = write_sequence_dataset(out_dir, interactions, extra_maps)
    if dataset.maps["id2item"] != id2item:
        raise RuntimeError(f"{name}: the item texts are not in the written item id order")
    write_item_texts(out_dir, texts)
    write_item_metadata(out_dir, items, id2item)
    stats = dataset.stats()
    print(
        f"{name}: {stats['num_users']:,} users, {stats['num_items']:,} items, "
        f"{stats['num_interactions']:,} interactions, sequence length "
        f"mean {stats['mean_sequence_length']:.1f} / median {stats['median_sequence_length']:.1f}, "
        f"{time.perf_counter() - start:.1f} s -> {out_dir}"
    )
    return stats["num_items"]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        action="append",
        choices=sorted(PUBLIC_DATASETS),
        default=[],
        help=f"a public dataset to prepare (repeatable; default: the paper's {', '.join(PAPER_DATASETS)})",
    )
    parser.add_argument(
        "--local_dir",
        type=Path,
        help="a folder in the local format (interactions.csv + items.jsonl)",
    )
    parser.add_argument("--dataset_name", help="the output folder name for --local_dir")
    parser.add_argument(
        "--raw_dir",
        type=Path,
        help="folder with the raw files, already downloaded or to download into "
        "(default OUTPUT_ROOT/raw)",
    )
    parser.add_argument("--output_root", type=Path, default=Path("tmp"))
    parser.add_argument(
        "--force", action="store_true", help="redo datasets that are already prepared"
    )
    parser.add_argument(
        "--text_embedding_model",
        default=text_embedding_model,
        help=f"item text encoder, or none (default {text_embedding_model})",
    )
    parser.add_argument(
        "--text_fields",
        help="for --local_dir: comma-separated items.jsonl fields to embed, in order "
        "(default: every field in file order)",
    )
    args = parser.parse_args(argv)
    if (args.local_dir is None) != (args.dataset_name is None):
        parser.error("--local_dir and --dataset_name go together")
    if args.dataset_name is not None and Path(args.dataset_name).name != args.dataset_name:
        parser.error(f"--dataset_name must be a plain folder name, got {args.dataset_name!r}")
    if not args.dataset and args.local_dir is None:
        args.dataset = list(PAPER_DATASETS)
    return args


def embed_unless_none(
    args: argparse.Namespace, name: str, recipe: str, fields: Optional[List[str]]
) -> None:
    """Runs :func:`prepare_text_embeddings` for a prepared dataset unless the encoder is ``none``."""
    if args.text_embedding_model != "none":
        prepare_text_embeddings(
            args.output_root / name, recipe, fields, args.text_embedding_model,
            args.output_root / "text_cache", args.force,
        )


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input)."""
    args = parse_args(argv)
    raw_dir = args.raw_dir if args.raw_dir is not None else args.output_root / "raw"
    try:
        for name in args.dataset:
            public = PUBLIC_DATASETS[name]
            num_items = prepare_dataset(
                name, partial(public.load, raw_dir), args.output_root, args.force,
                public.text_recipe, timestamp_unit=public.timestamp_unit,
            )
            if num_items is not None:
                warn_on_item_count(name, num_items, public.expected_num_items, public.item_count_note)
            embed_unless_none(args, name, public.text_recipe, None)
        if args.local_dir is not None:
            fields = args.text_fields.split(",") if args.text_fields else None
            prepare_dataset(
                args.dataset_name, partial(load_local_dataset, args.local_dir), args.output_root,
                args.force, "local", fields,
            )
            embed_unless_none(args, args.dataset_name, "local", fields)
    except (ValueError, DownloadError, TextEncodingError, OSError) as e:  # bad input or setup: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
