"""Steam (Kang & McAuley, ICDM 2018) prepared as HSTU-BLaIR prepares it.

Raw files: ``steam_reviews.json.gz`` (one review per line: ``username``,
``product_id``, ``date``, ...) and ``steam_games.json.gz`` (one game per
line: ``id``, ``app_name``, ``publisher``, ``developer``, ``genres``,
``tags``, ``specs``, ...). Their lines are Python literals, not JSON (single
quotes, ``u''`` prefixes, ``True``/``False``): each is read with
:func:`ast.literal_eval`, so none is lost. (The reference rewrites quotes
with string replaces and silently drops the many lines that still fail, such
as every review or game name with an apostrophe.) A line that is not a
Python dict literal is an error naming the file and line.

Steps, the reference's: a user is a ``username``, an interaction a review
(rating 1) at the review's day (UTC midnight, in seconds); reviews of games
without a metadata line are dropped, then users with fewer than 5 reviews
(the reference filters no items here). Review dates are ISO
(``2017-12-17``) or ``Posted November 5, 2011.``; a date without a year
(``Posted July 15.``) cannot be placed in time (the reference puts it in
1900), so its review is dropped and counted, as are reviews without a
username, product id or readable date.
"""

from __future__ import annotations

import ast
import datetime
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pandas as pd

from generative_recommenders.data.download import RawFile, fetch_raw_files, open_raw_text
from generative_recommenders.data.local import Items, keep_frequent
from generative_recommenders.data.sequence_format import DatasetFormatError
from generative_recommenders.logs import get_logger

logger = get_logger(__name__)

REVIEWS_URL = "https://cseweb.ucsd.edu/~wckang/steam_reviews.json.gz"
GAMES_URL = "https://cseweb.ucsd.edu/~wckang/steam_games.json.gz"
# Approximate sizes, for a user fetching the files by hand.
REVIEWS_SIZE, GAMES_SIZE = "about 1.3 GB", "about 3 MB"
# The paper's item count after its preparation.
EXPECTED_NUM_ITEMS = 11_808
ITEM_COUNT_NOTE = (
    "the reference drops every review and game line its quote-replacing parser cannot read "
    "(most lines with an apostrophe or a quote); these files are read in full"
)
MIN_USER_INTERACTIONS = 5

_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august",
           "september", "october", "november", "december")
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
# "Posted November 5, 2011." and the year-less "Posted July 15."
_MONTH_DAY_YEAR = re.compile(r"(?:Posted\s+)?([A-Za-z]+)\s+(\d{1,2})(?:,\s*(\d{4}))?\.?")


def _month_number(name: str) -> Optional[int]:
    """1..12 for a full or three-letter English month name, else None."""
    name = name.lower()
    for number, month in enumerate(_MONTHS, start=1):
        if name in (month, month[:3]):
            return number
    return None


def review_timestamp(date: str) -> Optional[int]:
    """Unix seconds of a review date's UTC midnight; None for a date without a year.

    Raises ValueError for text that is not a date in a known format.
    """
    text = date.strip()
    iso = _ISO_DATE.fullmatch(text)
    named = _MONTH_DAY_YEAR.fullmatch(text)
    if iso:
        year, month, day = map(int, iso.groups())
    elif named and _month_number(named.group(1)) is not None:
        if named.group(3) is None:
            return None
        year, month, day = int(named.group(3)), _month_number(named.group(1)), int(named.group(2))
    else:
        raise ValueError(f"not a review date: {date!r}")
    try:
        return int(datetime.datetime(year, month, day, tzinfo=datetime.timezone.utc).timestamp())
    except ValueError:
        raise ValueError(f"not a calendar date: {date!r}") from None


def iter_literal_records(path: Path) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(line number, dict)`` for each non-blank line of a file of Python dict literals."""
    with open_raw_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = ast.literal_eval(line.strip())
            except (SyntaxError, ValueError, TypeError) as e:
                raise DatasetFormatError(
                    f"{path}, line {line_no}: not a Python dict literal ({type(e).__name__}: {e})"
                ) from None
            if not isinstance(record, dict):
                raise DatasetFormatError(
                    f"{path}, line {line_no}: expected a dict, got a {type(record).__name__}"
                )
            yield line_no, record


class _Drops:
    """Counts dropped lines by reason, with the first example of each."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: Dict[str, str] = {}

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, example)

    def report(self, path: Path, what: str) -> None:
        for reason, count in self.counts.items():
            logger.info(f"{path.name}: dropped {count:,} {what} {reason} (first: {self.examples[reason]})")


def read_reviews(path: Path) -> pd.DataFrame:
    """Every review as ``user_id`` (the username), ``item_id``, ``rating`` 1.0, ``timestamp``, in file order."""
    users: List[str] = []
    items: List[str] = []
    timestamps: List[int] = []
    # Repeated ids share one string object: millions of reviews, far fewer users and games.
    shared: Dict[str, str] = {}
    drops = _Drops()
    num_reviews = 0
    for line_no, review in iter_literal_records(path):
        num_reviews += 1
        user, item, date = review.get("username"), review.get("product_id"), review.get("date")
        if user in (None, "") or item in (None, ""):
            drops.add("without a username or product_id", f"line {line_no}")
            continue
        if date is None:
            drops.add("without a date", f"line {line_no}")
            continue
        try:
            timestamp = review_timestamp(str(date))
        except ValueError:
            drops.add("with an unreadable date", f"line {line_no}: {date!r}")
            continue
        if timestamp is None:
            drops.add("with a date without a year", f"line {line_no}: {date!r}")
            continue
        users.append(shared.setdefault(str(user), str(user)))
        items.append(shared.setdefault(str(item), str(item)))
        timestamps.append(timestamp)
    logger.info(f"{path.name}: {num_reviews:,} reviews")
    drops.report(path, "review(s)")
    return pd.DataFrame(
        {"user_id": users, "item_id": items, "rating": 1.0, "timestamp": pd.Series(timestamps, dtype="int64")}
    )


def read_games(path: Path) -> Items:
    """Game metadata by ``id``; a game line without an ``id`` is skipped, a repeated id keeps its last line."""
    games: Items = {}
    drops = _Drops()
    num_lines = 0
    for line_no, game in iter_literal_records(path):
        num_lines += 1
        if game.get("id") in (None, ""):
            drops.add("without an id", f"line {line_no}")
            continue
        if str(game["id"]) in games:
            drops.add("repeating an earlier id (the last line is kept)", f"line {line_no}: {game['id']!r}")
        games[str(game["id"])] = game
    logger.info(f"{path.name}: {num_lines:,} games, {len(games):,} distinct ids")
    drops.report(path, "game line(s)")
    return games


def load_steam(raw_dir: Path) -> Tuple[pd.DataFrame, Items]:
    """Fetches (if absent), reads and filters Steam; returns ``(interactions, games)``."""
    # Both files are fetched before either is read: missing ones fail fast, named together.
    raw_files = [RawFile((REVIEWS_URL,), (REVIEWS_SIZE,)), RawFile((GAMES_URL,), (GAMES_SIZE,))]
    reviews_path, games_path = fetch_raw_files("steam", raw_files, raw_dir)
    games = read_games(games_path)
    reviews = read_reviews(reviews_path)
    with_metadata = reviews[reviews["item_id"].isin(games.keys()).to_numpy()]
    logger.info(
        f"steam: dropped {len(reviews) - len(with_metadata):,} review(s) of "
        f"{reviews['item_id'].nunique() - with_metadata['item_id'].nunique():,} game(s) without metadata"
    )
    interactions = keep_frequent(with_metadata, "user_id", MIN_USER_INTERACTIONS, "steam", unit="reviews")
    if len(interactions) == 0:
        raise DatasetFormatError(f"{reviews_path}: no reviews left after filtering")
    return interactions.reset_index(drop=True), games
