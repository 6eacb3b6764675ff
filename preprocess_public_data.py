"""Prepares datasets into the sequence format under ``tmp/<name>/``.

    python3 preprocess_public_data.py --dataset ml-100k [--dataset ml-1m ...]
    python3 preprocess_public_data.py --local_dir DIR --dataset_name NAME

Each dataset folder gets ``sasrec_format.csv``, ``data_maps.json`` and
``item_metadata.jsonl``; a dataset whose files all exist is skipped unless
``--force`` is given.
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
    DatasetFormatError,
    write_sequence_dataset,
)

# Selects the item text encoder for the item text embedding step; the
# --text_embedding_model flag overrides it.
text_embedding_model = "minilm"

DEFAULT_DATASET = "ml-100k"
OUTPUT_FILES = (SEQUENCE_FILE, MAPS_FILE, ITEM_METADATA_FILE)


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
        help=f"item text encoder for the item text embedding step (default {text_embedding_model})",
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
    jobs = [(name, lambda name=name: load_movielens(name, raw_dir)) for name in args.dataset]
    if args.local_dir is not None:
        jobs.append((args.dataset_name, lambda: load_local_dataset(args.local_dir)))
    try:
        for name, load in jobs:
            prepare_dataset(name, load, args.output_root, args.force)
    except (DatasetFormatError, DownloadError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
