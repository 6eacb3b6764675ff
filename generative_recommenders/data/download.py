"""Streamed, resumable and integrity-checked downloads of raw dataset files.

:func:`download` fetches one URL; :func:`fetch_raw_file` picks the first of
several mirrors that is already on disk or downloads; :func:`open_raw_text`
streams a raw (possibly gzipped) text file back with a progress bar and turns
a truncated or corrupt gzip stream into a clear error.
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
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, TextIO

from tqdm import tqdm

from generative_recommenders.data.sequence_format import DatasetFormatError
from generative_recommenders.errors import UserError

_CHUNK_BYTES = 1 << 20


class DownloadError(UserError):
    """A raw file could not be downloaded, or the downloaded file is corrupt."""


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
                tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                while chunk := resp.read(_CHUNK_BYTES):
                    f.write(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        # 416: the range starts at the end, i.e. the .part file is complete.
        if not (e.code == 416 and offset):
            raise DownloadError(
                f"could not download {url} (HTTP {e.code}); {_manual_hint(url, dest)}"
            ) from None
    except (urllib.error.URLError, OSError) as e:
        resume = "rerun to resume, or " if part.exists() else ""
        raise DownloadError(
            f"could not download {url} ({getattr(e, 'reason', e)}); {resume}{_manual_hint(url, dest)}"
        ) from None
    if total is not None and part.stat().st_size != total:
        raise DownloadError(
            f"download of {url} stopped at {part.stat().st_size} of {total} bytes; "
            f"rerun to resume, or {_manual_hint(url, dest)}"
        )
    try:
        verify_archive(part, dest.suffix)
    except DownloadError as e:
        part.unlink()
        raise DownloadError(
            f"the download of {url} is corrupt ({e}); the file was removed: rerun to download it "
            f"again, or {_manual_hint(url, dest)}"
        ) from None
    os.replace(part, dest)
    return dest


def url_file_name(url: str) -> str:
    """The last path segment of ``url``: the name its raw file gets on disk."""
    name = Path(urllib.parse.urlparse(url).path).name
    if not name:
        raise ValueError(f"{url} names no file")
    return name


def fetch_raw_file(urls: Sequence[str], raw_dir: Path) -> Path:
    """The raw file of the first of ``urls`` (mirrors of one file) that is in ``raw_dir`` or downloads.

    A file already in ``raw_dir`` under its URL's name is used as it is,
    whichever mirror it came from; otherwise the URLs are tried in order.
    If none downloads, the DownloadError names every URL and why it failed.
    """
    raw_dir = Path(raw_dir)
    for url in urls:
        if (raw_dir / url_file_name(url)).is_file():
            return raw_dir / url_file_name(url)
    failures: List[str] = []
    for url in urls:
        try:
            return download(url, raw_dir / url_file_name(url))
        except DownloadError as e:
            failures.append(str(e))
    if len(failures) == 1:
        raise DownloadError(failures[0])
    raise DownloadError("no mirror could be downloaded:\n  " + "\n  ".join(failures))


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
