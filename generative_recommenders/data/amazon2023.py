"""Amazon Reviews 2023: three categories prepared as HSTU-BLaIR prepares them.

Datasets (the paper's names): ``amzn23_game`` = Video_Games,
``amzn23_office`` = Office_Products, ``amzn23_music`` = Musical_Instruments.
Raw files, kept under their release names in the raw folder:

* ``<Category>.csv.gz``: the release's 5-core rating-only file, header
  ``user_id,parent_asin,rating,timestamp`` (timestamps in milliseconds);
* ``meta_<Category>.jsonl.gz`` (or the uncompressed ``.jsonl`` of the
  release's Hugging Face copy): one JSON item record per line, keyed by
  ``parent_asin``. It is streamed: only the records of rated items are kept,
  without their ``images`` and ``videos`` (URLs, most of a record's bytes).

Steps, the reference's with its defects fixed: every ratings row is kept
(the reference's ``header=1`` drops the first data row); interactions with
items that have no metadata record are dropped; then items with fewer than 5
interactions, then users with fewer than 5 (one pass each, counted after the
previous step). Numbering and time order are the sequence contract's (first
appearance; stable sort by time, ties by item id). Timestamps stay in
milliseconds, as the release and the reference have them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pandas as pd

from generative_recommenders.data.download import RawFile, fetch_raw_files, open_raw_text
from generative_recommenders.data.local import Items, keep_frequent, numeric_column
from generative_recommenders.data.sequence_format import DatasetFormatError
from generative_recommenders.logs import get_logger

logger = get_logger(__name__)

CATEGORIES: Dict[str, str] = {
    "amzn23_game": "Video_Games",
    "amzn23_office": "Office_Products",
    "amzn23_music": "Musical_Instruments",
}
# The paper's item counts after its preparation.
EXPECTED_NUM_ITEMS: Dict[str, int] = {
    "amzn23_game": 25_612,
    "amzn23_office": 77_551,
    "amzn23_music": 24_587,
}
ITEM_COUNT_NOTE = (
    "the reference drops the first data row of the ratings file and counts the items of users "
    "it drops afterwards (the count of its steps on these files is printed above)"
)
RELEASE_URL = "https://mcauleylab.ucsd.edu/public_datasets/data/amazon_2023"
RATINGS_URL = RELEASE_URL + "/benchmark/5core/rating_only/{category}.csv.gz"
# Mirrors of one metadata file, tried in order; the second is uncompressed.
METADATA_URLS = (
    RELEASE_URL + "/raw/meta_categories/meta_{category}.jsonl.gz",
    "https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/resolve/main"
    "/raw/meta_categories/meta_{category}.jsonl",
)
# Approximate sizes of the raw files (ratings .csv.gz; metadata .jsonl.gz and .jsonl), for a
# user fetching them by hand.
RAW_SIZES: Dict[str, Tuple[str, str, str]] = {
    "Video_Games": ("about 25 MB", "about 100 MB", "about 400 MB"),
    "Office_Products": ("about 55 MB", "about 250 MB", "about 1.1 GB"),
    "Musical_Instruments": ("about 15 MB", "about 80 MB", "about 350 MB"),
}
RATINGS_HEADER = ["user_id", "parent_asin", "rating", "timestamp"]
UNUSED_METADATA_FIELDS = ("images", "videos")
MIN_ITEM_INTERACTIONS = 5
MIN_USER_INTERACTIONS = 5


def read_ratings(path: Path) -> pd.DataFrame:
    """All rows of a rating-only CSV as ``user_id, item_id, rating, timestamp``, in file order."""
    with open_raw_text(path) as f:
        try:
            # keep_default_na=False: an id such as "NA" stays an id.
            df = pd.read_csv(f, dtype=str, keep_default_na=False)
        except pd.errors.EmptyDataError:
            raise DatasetFormatError(f"{path} is empty: expected {','.join(RATINGS_HEADER)}") from None
        except pd.errors.ParserError as e:
            raise DatasetFormatError(f"{path}: not a readable CSV file ({e})") from None
    if list(df.columns) != RATINGS_HEADER:
        raise DatasetFormatError(
            f"{path}: expected the header {','.join(RATINGS_HEADER)}, got {','.join(df.columns)}"
        )
    if len(df) == 0:
        raise DatasetFormatError(f"{path} holds no ratings")
    for column in ("user_id", "parent_asin"):
        empty = (df[column].str.strip() == "").to_numpy()
        if empty.any():
            raise DatasetFormatError(f"{path}, line {int(np.flatnonzero(empty)[0]) + 2}: empty {column}")
    return pd.DataFrame(
        {
            "user_id": df["user_id"],
            "item_id": df["parent_asin"],
            "rating": numeric_column(df, "rating", path).astype(np.float64),
            "timestamp": numeric_column(df, "timestamp", path).astype(np.int64),
        }
    )


def read_metadata(path: Path, wanted_items: Set[str]) -> Items:
    """The metadata records of ``wanted_items``, by ``parent_asin``, streamed from a JSONL file.

    Lines that are not a JSON object with a string ``parent_asin`` are
    skipped and counted (the reference's reader skips them too); a file with
    no record at all is an error. A repeated ``parent_asin`` keeps its last
    record, as the reference's dictionary does.
    """
    items: Items = {}
    num_records, bad_lines = 0, []
    with open_raw_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("parent_asin"), str):
                bad_lines.append(line_no)
                continue
            num_records += 1
            if record["parent_asin"] in wanted_items:
                for field in UNUSED_METADATA_FIELDS:
                    record.pop(field, None)
                items[record["parent_asin"]] = record
    if num_records == 0:
        raise DatasetFormatError(f"{path}: no JSON item record with a parent_asin")
    if bad_lines:
        logger.warning(
            f"{path}: skipped {len(bad_lines)} line(s) that are not a JSON object "
            f"with a parent_asin, the first at line {bad_lines[0]}"
        )
    logger.info(f"{path.name}: {num_records:,} item records, {len(items):,} of them rated")
    return items


def filter_interactions(ratings: pd.DataFrame, items: Items, name: str) -> pd.DataFrame:
    """Drops interactions with items lacking metadata, then rare items, then light users (one pass each)."""
    with_metadata = ratings[ratings["item_id"].isin(items.keys()).to_numpy()]
    logger.info(
        f"{name}: dropped {len(ratings) - len(with_metadata):,} interaction(s) with "
        f"{ratings['item_id'].nunique() - with_metadata['item_id'].nunique():,} item(s) without metadata"
    )
    frequent_items = keep_frequent(with_metadata, "item_id", MIN_ITEM_INTERACTIONS, name)
    interactions = keep_frequent(frequent_items, "user_id", MIN_USER_INTERACTIONS, name)
    if len(interactions) == 0:
        raise DatasetFormatError(f"{name}: no interactions left after filtering")
    return interactions.reset_index(drop=True)


def reference_item_count(ratings: pd.DataFrame, items: Items) -> int:
    """How many items the reference's steps keep from the same files, for comparison with the paper.

    It drops the first data row, drops items without metadata, then keeps
    items and users with >= 5 interactions both counted before either filter,
    and counts items before dropping the users left with fewer than 5.
    """
    df = ratings.iloc[1:]
    df = df[df["item_id"].isin(items.keys()).to_numpy()]
    item_counts, user_counts = df["item_id"].value_counts(), df["user_id"].value_counts()
    df = df[df["item_id"].isin(item_counts.index[item_counts >= MIN_ITEM_INTERACTIONS]).to_numpy()]
    df = df[df["user_id"].isin(user_counts.index[user_counts >= MIN_USER_INTERACTIONS]).to_numpy()]
    return df["item_id"].nunique()


def raw_files(name: str) -> List[RawFile]:
    """The ratings and metadata files of one category, with their mirrors and sizes."""
    category = CATEGORIES[name]
    ratings_size, *metadata_sizes = RAW_SIZES[category]
    return [
        RawFile((RATINGS_URL.format(category=category),), (ratings_size,)),
        RawFile(tuple(url.format(category=category) for url in METADATA_URLS), tuple(metadata_sizes)),
    ]


def load_amazon2023(name: str, raw_dir: Path) -> Tuple[pd.DataFrame, Items]:
    """Fetches (if absent), reads and filters one category; returns ``(interactions, items)``."""
    if name not in CATEGORIES:
        raise ValueError(f"unknown Amazon Reviews 2023 dataset {name!r}; known: {', '.join(CATEGORIES)}")
    # Both files are fetched before either is read: missing ones fail fast, named together.
    ratings_path, metadata_path = fetch_raw_files(name, raw_files(name), raw_dir)
    ratings = read_ratings(ratings_path)
    logger.info(
        f"{ratings_path.name}: {len(ratings):,} ratings of {ratings['user_id'].nunique():,} users "
        f"and {ratings['item_id'].nunique():,} items"
    )
    items = read_metadata(metadata_path, set(ratings["item_id"]))
    logger.info(
        f"{name}: the reference's steps keep {reference_item_count(ratings, items):,} items of these files "
        f"(the paper: {EXPECTED_NUM_ITEMS[name]:,})"
    )
    return filter_interactions(ratings, items, name), items
