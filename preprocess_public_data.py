"""Prepares datasets into the sequence format under ``tmp/<name>/``.

    python3 preprocess_public_data.py --dataset ml-100k [--dataset ml-1m ...]
    python3 preprocess_public_data.py --local_dir DIR --dataset_name NAME

Each dataset folder gets ``sasrec_format.csv``, ``data_maps.json`` and
``item_metadata.jsonl``, then ``item_texts.json`` (each item's text, by the
dataset's recipe) and ``item_text_embeddings_<model>.pt`` from the text
encoder named by ``text_embedding_model`` (``none`` skips this step). Work
already done is skipped unless ``--force`` is given; embeddings are cached per
(model, text) under ``<output_root>/text_cache`` so that an interrupted run
resumes and changed texts alone are encoded again.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pandas as pd

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
    EmbeddingFileError,
    compute_item_text_embeddings,
    load_item_text_embeddings,
    texts_hash,
    write_item_texts,
)
from generative_recommenders.text.encoders import TextEncodingError, get_text_encoder
from generative_recommenders.text.item_text import item_texts, read_item_metadata

# The item text encoder: "blair" (the paper), "blair-large", "openai"
# (text-embedding-3-large, 768-d), "minilm" (bundled, works offline),
# "hf:<name-or-path>", or "none". The --text_embedding_model flag overrides it.
text_embedding_model = "minilm"

DEFAULT_DATASET = "ml-100k"
OUTPUT_FILES = (SEQUENCE_FILE, MAPS_FILE, ITEM_METADATA_FILE)


def prepare_text_embeddings(
    out_dir: Path, recipe: str, fields: Optional[List[str]], model: str, cache_dir: Path, force: bool
) -> None:
    """Writes the item texts and their embeddings, unless they are already up to date."""
    texts = item_texts(read_item_metadata(out_dir), recipe, fields)
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


def prepare_dataset(
    name: str, load: Callable[[], Tuple[pd.DataFrame, Items]], output_root: Path, force: bool
) -> None:
    """Loads one dataset and writes its folder, or skips it if already prepared."""
    out_dir = output_root / name
    if not force and all((out_dir / f).is_file() for f in OUTPUT_FILES):
        print(f"{name}: already prepared in {out_dir}, skipping (pass --force to redo)")
        return
    start = time.perf_counter()
    interactions, items = load()
    dataset = write_sequence_dataset(out_dir, interactions)
    write_item_metadata(out_dir, items, dataset.maps["id2item"])
    stats = dataset.stats()
    print(
        f"{name}: {stats['num_users']:,} users, {stats['num_items']:,} items, "
        f"{stats['num_interactions']:,} interactions, sequence length "
        f"mean {stats['mean_sequence_length']:.1f} / median {stats['median_sequence_length']:.1f}, "
        f"{time.perf_counter() - start:.1f} s -> {out_dir}"
    )


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        action="append",
        choices=sorted(LOADERS),
        default=[],
        help=f"a public dataset to prepare (repeatable; default {DEFAULT_DATASET})",
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
        help="folder with already-downloaded raw files (default OUTPUT_ROOT/raw)",
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
        args.dataset = [DEFAULT_DATASET]
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line; returns the exit status (2 for bad input)."""
    args = parse_args(argv)
    raw_dir = args.raw_dir if args.raw_dir is not None else args.output_root / "raw"
    jobs = [
        (name, lambda name=name: load_movielens(name, raw_dir), "movielens", None)
        for name in args.dataset
    ]
    if args.local_dir is not None:
        fields = args.text_fields.split(",") if args.text_fields else None
        jobs.append((args.dataset_name, lambda: load_local_dataset(args.local_dir), "local", fields))
    try:
        for name, load, recipe, fields in jobs:
            prepare_dataset(name, load, args.output_root, args.force)
            if args.text_embedding_model != "none":
                prepare_text_embeddings(
                    args.output_root / name, recipe, fields, args.text_embedding_model,
                    args.output_root / "text_cache", args.force,
                )
    except (ValueError, DownloadError, TextEncodingError, OSError) as e:  # bad input or setup: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
