"""The source a dataset folder was prepared from, so that a rerun notices when it changed.

A prepared folder's manifest records ``source`` (what was asked for: a public
dataset by name, or a local folder) and ``source_files``: the path, size,
modification time and sha256 of every raw file its reader opened. The
readers say which files they open with :func:`note_source`;
:func:`recording_sources` collects them around one load.

:func:`stale_source` compares a request with that record before anything is
read: a folder prepared from another source, or a source file that changed
(a size or time that differs is confirmed by its sha256), is stale. A raw
file deleted after preparing (to save space) is not a change.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from generative_recommenders.data.identity import file_sha256

SOURCE_KEY = "source"
SOURCE_FILES_KEY = "source_files"

_reading: contextvars.ContextVar[Optional[List[Path]]] = contextvars.ContextVar("source_files", default=None)


@contextlib.contextmanager
def recording_sources() -> Iterator[List[Path]]:
    """Collects the paths :func:`note_source` is told of inside the block, each once, in order."""
    paths: List[Path] = []
    token = _reading.set(paths)
    try:
        yield paths
    finally:
        _reading.reset(token)


def note_source(path: os.PathLike) -> None:
    """Tells the recording around this load (if any) that ``path`` is one of its source files."""
    paths = _reading.get()
    if paths is not None and Path(path) not in paths:
        paths.append(Path(path))


def source_record(path: os.PathLike) -> Dict[str, Any]:
    path = Path(path).resolve()
    stat = path.stat()
    return {"path": str(path), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}


def describe_source(source: Dict[str, str]) -> str:
    if "local_dir" in source:
        return f"the local folder {source['local_dir']}"
    return f"the public dataset {source.get('public_dataset', '?')}"


def _changed(recorded: Dict[str, Any], path: Path) -> Optional[str]:
    """How ``path`` differs from its record, or None (the same, or absent: not compared)."""
    if not path.is_file():
        return None
    stat = path.stat()
    if stat.st_size == recorded.get("bytes") and stat.st_mtime_ns == recorded.get("mtime_ns"):
        return None
    digest = file_sha256(path)
    if digest == recorded.get("sha256"):
        return None
    return (
        f"{stat.st_size:,} bytes, sha256 {digest[:12]}... where the manifest records "
        f"{recorded.get('bytes', 0):,} bytes, sha256 {str(recorded.get('sha256'))[:12]}..."
    )


def stale_source(manifest: Dict[str, Any], source: Optional[Dict[str, str]]) -> Optional[str]:
    """Why a folder with ``manifest`` is not prepared from ``source`` as it is now, or None.

    ``source`` is ``{"public_dataset": name}`` or ``{"local_dir": folder}``;
    a local folder's files are compared by name, wherever the folder now is.
    A manifest that records no source (an earlier version) is not compared.
    """
    recorded = manifest.get(SOURCE_KEY)
    if not isinstance(recorded, dict) or source is None:
        return None
    if ("local_dir" in recorded) != ("local_dir" in source) or recorded.get("public_dataset") != source.get("public_dataset"):
        return f"it was prepared from {describe_source(recorded)}, not from {describe_source(source)}"
    for record in manifest.get(SOURCE_FILES_KEY) or []:
        path = Path(record.get("path", ""))
        if "local_dir" in source:
            path = Path(source["local_dir"]) / path.name
        change = _changed(record, path)
        if change is not None:
            return f"its source {path} changed since it was prepared ({change})"
    return None
