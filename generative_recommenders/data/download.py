"""Streamed, resumable and integrity-checked downloads of raw dataset files.

:func:`download` fetches one URL; :func:`fetch_raw_files` gets every raw file
a dataset needs (each from the first of its mirrors that is on disk or
downloads) and, when some cannot be had, names all of them at once, with
their sizes and where to put them; :func:`open_raw_text` streams a raw
(possibly gzipped) text file back with a progress bar and turns a truncated
or corrupt gzip stream into a clear error.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, TextIO, Tuple

from tqdm import tqdm

from generative_recommenders.data.sequence_format import DatasetFormatError
from generative_recommenders.data.sources import note_source
from generative_recommenders.errors import UserError

_CHUNK_BYTES = 1 << 20


class DownloadError(UserError):
    """A raw file could not be downloaded, or the downloaded file is corrupt.

    ``reason`` is the short cause (``HTTP 404``, a network error ...), for
    messages that list several files.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


@dataclass(frozen=True)
class RawFile:
    """A raw file a dataset needs: its mirrors (URLs of one file, tried in order) with their sizes.

    ``sizes[i]`` is what a user fetching ``urls[i]`` by hand should expect
    (e.g. ``"5,917,549 bytes"`` or ``"about 25 MB"``).
    """

    urls: Tuple[str, ...]
    sizes: Tuple[str, ...]

    def describe(self) -> str:
        return " or ".join(
            f"{url_file_name(url)} ({size}) from {url}" for url, size in zip(self.urls, self.sizes)
        )


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"download it by hand from {url} and place it at {dest} "
        f"(or pass a folder holding {dest.name} with --raw_dir)"
    )


def verify_archive(path: Path, kind: str) -> None:
    """Raises DownloadError unless ``path`` is a complete archive.

    ``kind`` is the archive suffix (``.gz`` or ``.zip``); other kinds are not
    checked. It is passed separately because a download in progress lives in
    a ``.part`` file.
    """
    try:
        if kind == ".gz":
            with gzip.open(path, "rb") as f:
                while f.read(_CHUNK_BYTES):
                    pass
        elif kind == ".zip":
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            if bad is not None:
                raise DownloadError(f"{path}: corrupt member {bad} in the zip archive")
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise DownloadError(f"{path}: not a complete {kind} archive ({e})") from None


def download(url: str, dest: Path) -> Path:
    """Downloads ``url`` to ``dest`` unless ``dest`` exists already.

    Bytes go to ``dest.part`` first, which a later call resumes with an HTTP
    Range request if the transfer broke off; the file is renamed to ``dest``
    only after its integrity check passed. A corrupt file is removed.
    """
    dest = Path(dest)
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    total: Optional[int] = None
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=60
        ) as resp:
            if offset and getattr(resp, "status", None) != 206:
                offset = 0  # the server ignored the range: start over
            length = resp.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            with (
                open(part, "ab" if offset else "wb") as f,
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar,
            ):
                while chunk := resp.read(_CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        # 416: the range starts at the end, i.e. the .part file is complete.
        if not (e.code == 416 and offset):
            raise DownloadError(
                f"could not download {url} (HTTP {e.code}); {_manual_hint(url, dest)}", f"HTTP {e.code}"
            ) from None
    except (urllib.error.URLError, OSError) as e:
        resume = "rerun to resume, or " if part.exists() else ""
        reason = str(getattr(e, "reason", e))
        raise DownloadError(
            f"could not download {url} ({reason}); {resume}{_manual_hint(url, dest)}", reason
        ) from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(
            f"download of {url} stopped at {part.stat().st_size} of {total} bytes; "
            f"rerun to resume, or {_manual_hint(url, dest)}",
            f"stopped at {part.stat().st_size} of {total} bytes",
        )
    try:
        verify_archive(part, dest.suffix)
    except DownloadError as e:
        part.unlink()
        raise DownloadError(
            f"the download of {url} is corrupt ({e}); the file was removed: rerun to download it "
            f"again, or {_manual_hint(url, dest)}",
            "the download was corrupt and was removed",
        ) from None
    os.replace(part, dest)
    return dest


def url_file_name(url: str) -> str:
    """The last path segment of ``url``: the name its raw file gets on disk."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"{url} names no file")
    return name


def fetch_raw_files(dataset: str, files: Sequence[RawFile], raw_dir: Path) -> List[Path]:
    """The path of each of ``files`` in ``raw_dir``, downloading the ones not there yet.

    A file already in ``raw_dir`` under one of its URLs' names is used as it
    is, whichever mirror it came from; otherwise its URLs are tried in order.
    Every missing file is tried before failing, and the DownloadError names
    all those that could not be had, with their sizes, URLs and where to put
    them (a user offline fetches them all in one go).
    """
    raw_dir = Path(raw_dir)
    paths: List[Optional[Path]] = []
    failures: List[Tuple[RawFile, str]] = []
    for raw_file in files:
        on_disk = [raw_dir / url_file_name(url) for url in raw_file.urls if (raw_dir / url_file_name(url)).is_file()]
        if on_disk:
            paths.append(on_disk[0])
            continue
        reasons: List[str] = []
        for url in raw_file.urls:
            try:
                paths.append(download(url, raw_dir / url_file_name(url)))
                break
            except DownloadError as e:
                reasons.append(e.reason)
        else:
            paths.append(None)
            failures.append((raw_file, "; ".join(dict.fromkeys(reasons))))
    if failures:
        listing = "".join(f"\n  {raw_file.describe()} [{reason}]" for raw_file, reason in failures)
        raise DownloadError(
            f"{dataset} needs {len(files)} raw file(s); {len(failures)} of them are not in {raw_dir} "
            f"and could not be downloaded: fetch them by hand and put them there (or pass a folder "
            f"holding them with --raw_dir), then rerun:{listing}"
        )
    found = [path for path in paths if path is not None]
    for path in found:
        note_source(path)
    return found


@contextlib.contextmanager
def open_raw_text(path: Path) -> Iterator[TextIO]:
    """Opens a raw UTF-8 text file for streaming, gunzipping it if its name ends in ``.gz``.

    A progress bar follows the bytes read from disk. A gzip stream found
    truncated or corrupt while reading raises DownloadError, text that is
    not UTF-8 DatasetFormatError; both name the file.
    """
    path = Path(path)
    with open(path, "rb") as raw, tqdm.wrapattr(
        raw, "read", total=path.stat().st_size, desc=f"reading {path.name}",
        unit="B", unit_scale=True, unit_divisor=1024,
    ) as tracked:
        stream = gzip.GzipFile(fileobj=tracked, mode="rb") if path.suffix == ".gz" else tracked
        try:
            yield io.TextIOWrapper(stream, encoding="utf-8")
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise DownloadError(
                f"{path}: truncated or corrupt gzip file ({e}); delete it and rerun to download "
                f"it again, or replace it with a complete copy"
            ) from None
        except UnicodeDecodeError as e:
            raise DatasetFormatError(f"{path}: not UTF-8 text ({e})") from None
