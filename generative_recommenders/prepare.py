"""Prepares datasets into the sequence format under ``<data_root>/<name>/`` (default ``tmp``).

    gr-prepare                                   # the paper's four datasets
    gr-prepare --dataset amzn23_game [--dataset steam ...] [--data_root tmp]
    gr-prepare --local_dir DIR --dataset_name NAME

``python3 preprocess_public_data.py`` (the reference's script) runs the same.
Raw files are downloaded to ``<data_root>/raw`` (or read from ``--raw_dir``).
Each dataset folder gets ``sasrec_format.csv``, ``data_maps.json`` (with
``id2meta``, each item's text), ``item_texts.json``, ``item_metadata.jsonl``
and ``manifest.json`` (counts and checksums, written last), then
``item_text_embeddings_<model>.pt`` from the text encoder named by
``text_embedding_model`` (``none`` skips this step). A dataset whose files
check out against its manifest is skipped unless ``--force`` is given;
embeddings are cached per (model, text) under ``<data_root>/text_cache`` so
that an interrupted run resumes and changed texts alone are encoded again.
Errors are one line and exit status 1 (``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import shlex
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pandas as pd

from generative_recommenders.data import amazon2023, steam
from generative_recommenders.data.dataset import repeated_target_shares
from generative_recommenders.data.local import (
    ITEM_METADATA_FILE,
    Items,
    load_local_dataset,
    write_item_metadata,
)
from generative_recommenders.data.movielens import READERS, RELEASE_NAMES, load_movielens
from generative_recommenders.data.sequence_format import (
    MANIFEST_FILE,
    MAPS_FILE,
    SEQUENCE_FILE,
    DatasetFormatError,
    read_manifest,
    verify_recorded_file,
    write_sequence_dataset,
)
from generative_recommenders.data.sources import (
    SOURCE_FILES_KEY,
    SOURCE_KEY,
    recording_sources,
    source_record,
    stale_source,
)
from generative_recommenders.errors import run_command
from generative_recommenders.logs import configure_logging
from generative_recommenders.text.embedding_store import (
    ITEM_TEXTS_FILE,
    EmbeddingFileError,
    compute_item_text_embeddings,
    load_item_text_embeddings,
    read_item_texts,
    texts_hash,
    write_item_texts,
)
from generative_recommenders.text.encoders import check_text_encoder_name, get_text_encoder
from generative_recommenders.text.item_text import RECIPES, item_texts, read_item_metadata

# The item text encoder: "blair" (the paper), "blair-large", "gre-small", "gre-base",
# "gre-large" (GRE), "openai" (text-embedding-3-large, 768-d), "minilm" (bundled, works offline),
# "minilm-static" (its word-piece embeddings alone, offline), "hf:<name-or-path>", or "none". The --text_embedding_model flag overrides it.
text_embedding_model = "minilm"

DEFAULT_DATA_ROOT = Path("tmp")
PROGRAM = "gr-prepare"

# A folder is prepared when its manifest records each of these as it is on disk.
OUTPUT_FILES = (SEQUENCE_FILE, MAPS_FILE, ITEM_TEXTS_FILE, ITEM_METADATA_FILE)
DatasetReader = Callable[[], Tuple[pd.DataFrame, Items]]


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
        for name in READERS
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


def prepare_text_embeddings(out_dir: Path, texts: List[str], model: str, cache_dir: Path, force: bool) -> None:
    """Writes the item texts and their embeddings, unless they are already up to date."""
    try:
        unchanged = read_item_texts(out_dir) == texts
    except (EmbeddingFileError, DatasetFormatError):
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


def why_not_prepared(out_dir: Path) -> Optional[str]:
    """None if ``out_dir`` holds a prepared dataset that checks out against its manifest, else why not."""
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return "new"
    try:
        manifest = read_manifest(out_dir)
        if manifest is None:
            return f"{out_dir} has no {MANIFEST_FILE} (prepared by an earlier version or cut short)"
        for name in OUTPUT_FILES:
            verify_recorded_file(out_dir, name, manifest)
    except DatasetFormatError as error:
        return str(error).split(";")[0]
    return None


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
    load: DatasetReader,
    data_root: Path,
    force: bool,
    text_recipe: str,
    command: str,
    text_fields: Optional[List[str]] = None,
    timestamp_unit: Optional[str] = None,
    to_embed: bool = True,
    source: Optional[Dict[str, str]] = None,
) -> Tuple[List[str], Optional[int]]:
    """Loads one dataset and writes its folder, the manifest last.

    Returns the item texts and the item count (None if the folder was
    already prepared and checks out against its manifest: it is left as it is).
    ``command`` is the command line that prepares it, recorded in the manifest;
    ``to_embed`` says whether the texts will be embedded (see :func:`item_texts`).
    ``source`` (``{"public_dataset": name}`` or ``{"local_dir": folder}``) is
    recorded in the manifest with the files the reader opened; without
    ``force``, a folder prepared from another source, or from a source file
    that changed since, is refused as stale, and left as it is.
    """
    out_dir = data_root / name
    reason = why_not_prepared(out_dir)
    if not force and reason is None:
        stale = stale_source(read_manifest(out_dir), source)
        if stale is not None:
            raise DatasetFormatError(f"{out_dir} is stale: {stale}; prepare it again: {command} --force")
        print(f"{name}: already prepared in {out_dir}, skipping (pass --force to redo)")
        return item_texts(read_item_metadata(out_dir), text_recipe, text_fields, to_embed), None
    if reason not in (None, "new"):
        print(f"{name}: {reason}: preparing it again")
    start = time.perf_counter()
    with recording_sources() as source_files:
        interactions, items = load()
    # The contract numbers items in order of first appearance; the texts are needed for the maps.
    id2item = list(pd.unique(interactions["item_id"].astype(str)))
    texts = item_texts(
        [{"item_id": item, **items[item]} for item in id2item], text_recipe, text_fields, to_embed
    )
    extra_maps = {"id2meta": texts}
    if timestamp_unit is not None:
        extra_maps["timestamp_unit"] = timestamp_unit
    provenance = {SOURCE_KEY: source, SOURCE_FILES_KEY: [source_record(path) for path in source_files]}
    dataset = write_sequence_dataset(out_dir, interactions, extra_maps, command, provenance if source else None)
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
    # Over the whole history, so the share bounds that of any max_sequence_length.
    repeated = repeated_target_shares(dataset, None)
    print(
        f"{name}: users whose target repeats an earlier item of theirs (whole history): "
        f"last item {repeated['last']:.2%}, second-to-last {repeated['second_to_last']:.2%} "
        f"(the reference's evaluation counts such a target as a miss)"
    )
    return texts, stats["num_items"]


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dataset",
        action="append",
        choices=sorted(PUBLIC_DATASETS) + sorted(RELEASE_NAMES),
        default=[],
        help=f"a public dataset to prepare (repeatable; default: the paper's {', '.join(PAPER_DATASETS)}); "
        f"MovieLens' release names {', '.join(RELEASE_NAMES)} name {', '.join(RELEASE_NAMES.values())}",
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
        "(default DATA_ROOT/raw)",
    )
    parser.add_argument(
        "--data_root", "--output_root", dest="data_root", type=Path, default=DEFAULT_DATA_ROOT,
        help=f"where the prepared datasets go (default {DEFAULT_DATA_ROOT}; --output_root is its old name)",
    )
    parser.add_argument(
        "--force", action="store_true", help="redo datasets that are already prepared"
    )
    parser.add_argument(
        "--text_embedding_model",
        default=text_embedding_model,
        help=f"item text encoder, or none (default {text_embedding_model})",
    )
    parser.add_argument(
        "--text_recipe",
        choices=sorted(RECIPES),
        help="how an item's text is made from its metadata (default: the dataset's own: amazon, steam or "
        "movielens, local for --local_dir); greb_amazon is GRE-B's Amazon text: title. features description",
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
    if args.text_fields is not None and args.text_recipe not in (None, "local"):
        parser.error(f"--text_fields chooses the fields of the local recipe, not of --text_recipe {args.text_recipe}")
    if not args.dataset and args.local_dir is None:
        args.dataset = list(PAPER_DATASETS)
    args.dataset = list(dict.fromkeys(RELEASE_NAMES.get(name, name) for name in args.dataset))
    args.text_fields = (
        [field.strip() for field in args.text_fields.split(",") if field.strip()] if args.text_fields else None
    )
    return args


def _command(args: argparse.Namespace, dataset: List[str]) -> str:
    """The command line that prepares one dataset as ``args`` do, for its manifest."""
    words = ["python3", "preprocess_public_data.py", *dataset]
    if args.text_recipe is not None:
        words += ["--text_recipe", args.text_recipe]
    if args.data_root != DEFAULT_DATA_ROOT:
        words += ["--data_root", str(args.data_root)]
    return shlex.join(words)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs the command line; bad input raises a UserError (one line under :func:`run_command`)."""
    configure_logging()
    args = parse_args(argv)
    if args.text_embedding_model != "none":
        check_text_encoder_name(args.text_embedding_model)  # before any data is read
    raw_dir = args.raw_dir if args.raw_dir is not None else args.data_root / "raw"
    prepared: List[Tuple[str, List[str]]] = []
    for name in args.dataset:
        public = PUBLIC_DATASETS[name]
        raw = ["--raw_dir", str(args.raw_dir)] if args.raw_dir is not None else []
        texts, num_items = prepare_dataset(
            name, partial(public.load, raw_dir), args.data_root, args.force, args.text_recipe or public.text_recipe,
            _command(args, ["--dataset", name, *raw]), timestamp_unit=public.timestamp_unit,
            to_embed=args.text_embedding_model != "none", source={"public_dataset": name},
        )
        if num_items is not None:
            warn_on_item_count(name, num_items, public.expected_num_items, public.item_count_note)
        prepared.append((name, texts))
    if args.local_dir is not None:
        fields = ["--text_fields", ",".join(args.text_fields)] if args.text_fields else []
        texts, _ = prepare_dataset(
            args.dataset_name, partial(load_local_dataset, args.local_dir), args.data_root,
            args.force, args.text_recipe or "local",
            _command(args, ["--local_dir", str(args.local_dir), "--dataset_name", args.dataset_name, *fields]),
            args.text_fields, to_embed=args.text_embedding_model != "none",
            source={"local_dir": str(args.local_dir.resolve())},
        )
        prepared.append((args.dataset_name, texts))
    if args.text_embedding_model != "none":
        for name, texts in prepared:
            prepare_text_embeddings(
                args.data_root / name, texts, args.text_embedding_model,
                args.data_root / "text_cache", args.force,
            )
    return 0


def console_main() -> None:
    """The ``gr-prepare`` command."""
    run_command(PROGRAM, main)


if __name__ == "__main__":
    console_main()
