"""Readers for the MovieLens datasets.

* ``ml100k`` comes from the example data inside the ``recbole`` wheel on
  PyPI, so it needs no host but PyPI; the wheel is only downloaded
  (``pip download``), never installed.
* ``ml1m`` and ``ml20m`` come from the GroupLens zips.

The datasets are named as the project names its datasets (no hyphen: a local
copy of MovieLens-100K prepared with ``--dataset_name ml100k`` is the same
data under the same name); GroupLens' release names ``ml-100k``, ``ml-1m``
and ``ml-20m`` are accepted for them (:data:`RELEASE_NAMES`).

Each loader takes the raw folder (where downloads are kept, or where the user
placed them by hand) and returns ``(interactions, items)``: interactions with
columns ``user_id, item_id`` (strings), ``rating`` (float) and ``timestamp``
(int seconds) in the source's row order, and item id -> ``{"title", "year",
"genres"}``. MovieLens needs no filtering: every user has >= 20 ratings.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import IO, Any, Callable, Dict, Iterator, List, Tuple, Union

import numpy as np
import pandas as pd

from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.data.download import DownloadError, RawFile, fetch_raw_files
from generative_recommenders.data.local import Items, require_item_metadata
from generative_recommenders.data.sequence_format import DatasetFormatError
from generative_recommenders.data.sources import note_source
from generative_recommenders.logs import get_logger

logger = get_logger(__name__)

RECBOLE_REQUIREMENT = "recbole==1.2.1"
RECBOLE_WHEEL = "recbole-1.2.1-py3-none-any.whl"
RECBOLE_WHEEL_SIZE = "2,130,151 bytes"
_RECBOLE_ML100K_DIR = "recbole/dataset_example/ml-100k"
ML100K_FILES = ("ml-100k.inter", "ml-100k.item")
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens/{name}.zip"
GROUPLENS_ZIP_SIZES = {"ml-1m": "about 5.9 MB", "ml-20m": "about 190 MB"}

# "Heat (1995)" -> ("Heat", "1995"); also "Fawlty Towers (1975-1979)".
_TITLE_YEAR = re.compile(r"^(.*?)\s*\((\d{4})[^()]*\)\s*$")

DatasetReader = Callable[[Path], Tuple[pd.DataFrame, Items]]


def fetch_recbole_wheel(raw_dir: Path) -> Path:
    """Returns the recbole wheel in ``raw_dir``, fetching it with ``pip download`` if absent."""
    wheel = Path(raw_dir) / RECBOLE_WHEEL
    if wheel.is_file():
        return wheel
    logger.info(f"fetching the {RECBOLE_REQUIREMENT} wheel from PyPI (it holds ml-100k) into {raw_dir}")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            RECBOLE_REQUIREMENT,
            "-d",
            str(raw_dir),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not wheel.is_file():
        last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise DownloadError(
            f"ml100k needs 1 raw file, which pip download {RECBOLE_REQUIREMENT} could not fetch "
            f"({last_line}): fetch {RECBOLE_WHEEL} ({RECBOLE_WHEEL_SIZE}, from PyPI: pip download "
            f"--no-deps {RECBOLE_REQUIREMENT} on a machine that has it) and put it at {wheel} (or pass "
            f"a folder holding it with --raw_dir)"
        )
    return wheel


@contextlib.contextmanager
def _zip_member(zip_path: Path, member: str) -> Iterator[IO[bytes]]:
    """Opens one member of a zip archive, with clear errors for a bad archive or member."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DatasetFormatError(f"{zip_path}: not a readable zip archive ({e})") from None
    with archive:
        try:
            f = archive.open(member)
        except KeyError:
            raise DatasetFormatError(f"{zip_path}: the archive has no {member}") from None
        with f:
            yield f


def _read_table(source: Union[Path, IO], name: str, **read_csv_args: Any) -> pd.DataFrame:
    try:
        return pd.read_csv(source, **read_csv_args)
    except ValueError as e:  # also pandas' ParserError and UnicodeDecodeError
        raise DatasetFormatError(f"{name}: unreadable table ({e})") from None


def _typed_interactions(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Casts raw user/item/rating/timestamp columns (in that order) to the loader types."""
    df = df.iloc[:, :4].set_axis(["user_id", "item_id", "rating", "timestamp"], axis=1)
    try:
        return df.astype(
            {"user_id": str, "item_id": str, "rating": np.float64, "timestamp": np.int64}
        )
    except (ValueError, TypeError) as e:
        raise DatasetFormatError(f"{source}: bad interaction values ({e})") from None


def _movie(title: str, year: str, genres: List[str]) -> Dict[str, object]:
    return {"title": title, "year": year, "genres": genres}


def _split_title(title: str) -> Tuple[str, str]:
    match = _TITLE_YEAR.match(title)
    return (match.group(1), match.group(2)) if match else (title.strip(), "")


def _ml100k_files(raw_dir: Path) -> Tuple[Path, Path]:
    """Returns the cached ml-100k files, extracting them from the recbole wheel once."""
    cache = raw_dir / "ml-100k"
    paths = tuple(cache / name for name in ML100K_FILES)
    if not all(p.is_file() for p in paths):
        wheel = fetch_recbole_wheel(raw_dir)
        for path in paths:
            with _zip_member(wheel, f"{_RECBOLE_ML100K_DIR}/{path.name}") as f:
                atomic_write_text(path, f.read().decode("utf-8"))
    for path in paths:
        note_source(path)
    return paths


def load_ml100k(raw_dir: Path) -> Tuple[pd.DataFrame, Items]:
    """ml-100k from the recbole wheel's example data (cached under ``raw_dir/ml-100k``)."""
    inter_path, item_path = _ml100k_files(Path(raw_dir))
    # Tab-separated with typed headers ("item_id:token"); titles may hold quotes.
    read_args = dict(sep="\t", dtype=str, keep_default_na=False, quoting=csv.QUOTE_NONE)
    interactions = _typed_interactions(
        _read_table(inter_path, str(inter_path), **read_args), str(inter_path)
    )
    movies = _read_table(item_path, str(item_path), **read_args)
    items = {
        item_id: _movie(title, year, genres.split())
        for item_id, title, year, genres in movies.iloc[:, :4].itertuples(index=False)
    }
    require_item_metadata(interactions, items, str(item_path))
    return interactions, items


def _grouplens_zip(name: str, raw_dir: Path) -> Path:
    """``raw_dir/<release name>.zip``, downloaded there if absent."""
    url = GROUPLENS_URL.format(name=name)
    (path,) = fetch_raw_files(name.replace("-", ""), [RawFile((url,), (GROUPLENS_ZIP_SIZES[name],))], raw_dir)
    return path


def load_ml1m(raw_dir: Path) -> Tuple[pd.DataFrame, Items]:
    """ml-1m from ``raw_dir/ml-1m.zip``, downloaded there if absent."""
    zip_path = _grouplens_zip("ml-1m", raw_dir)

    def read_dat(member: str) -> pd.DataFrame:
        # "::"-separated latin-1 text; a one-character separator keeps pandas' fast parser.
        with _zip_member(zip_path, member) as f:
            text = f.read().decode("latin-1").replace("::", "\t")
        return _read_table(
            io.StringIO(text),
            f"{zip_path}:{member}",
            sep="\t",
            header=None,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
        )

    interactions = _typed_interactions(
        read_dat("ml-1m/ratings.dat"), f"{zip_path}:ml-1m/ratings.dat"
    )
    movies = read_dat("ml-1m/movies.dat")
    items = {
        movie_id: _movie(*_split_title(title), genres.split("|"))
        for movie_id, title, genres in movies.iloc[:, :3].itertuples(index=False)
    }
    require_item_metadata(interactions, items, f"{zip_path}:ml-1m/movies.dat")
    return interactions, items


def load_ml20m(raw_dir: Path) -> Tuple[pd.DataFrame, Items]:
    """ml-20m from ``raw_dir/ml-20m.zip``, downloaded there if absent."""
    zip_path = _grouplens_zip("ml-20m", raw_dir)

    def read_csv(member: str, **read_csv_args) -> pd.DataFrame:
        # Streamed from the archive: ratings.csv is about 500 MB.
        with _zip_member(zip_path, member) as f:
            return _read_table(f, f"{zip_path}:{member}", encoding="utf-8", **read_csv_args)

    ratings_member = "ml-20m/ratings.csv"
    interactions = _typed_interactions(
        read_csv(ratings_member, dtype={"userId": str, "movieId": str}),
        f"{zip_path}:{ratings_member}",
    )
    movies = read_csv("ml-20m/movies.csv", dtype=str, keep_default_na=False)
    items = {
        movie_id: _movie(
            *_split_title(title), [] if genres == "(no genres listed)" else genres.split("|")
        )
        for movie_id, title, genres in movies.iloc[:, :3].itertuples(index=False)
    }
    require_item_metadata(interactions, items, f"{zip_path}:ml-20m/movies.csv")
    return interactions, items


READERS: Dict[str, DatasetReader] = {"ml100k": load_ml100k, "ml1m": load_ml1m, "ml20m": load_ml20m}
# GroupLens' names, accepted for the datasets they name.
RELEASE_NAMES: Dict[str, str] = {"ml-100k": "ml100k", "ml-1m": "ml1m", "ml-20m": "ml20m"}


def load_movielens(name: str, raw_dir: Path) -> Tuple[pd.DataFrame, Items]:
    """Loads the MovieLens dataset ``name`` (a key of :data:`READERS` or :data:`RELEASE_NAMES`)."""
    name = RELEASE_NAMES.get(name, name)
    if name not in READERS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {', '.join(READERS)}")
    return READERS[name](Path(raw_dir))
