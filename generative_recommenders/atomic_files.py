"""Atomic file writes: every output is written to a temp file beside it and renamed into place.

A crash, a kill or a full disk never leaves a half-written file under the
final name: the earlier file (if any) stays until the new one is complete.
Every writer of the project (sequence files, embeddings, checkpoints,
results, comparison outputs, recommendations) goes through this module.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _file_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give: 0o666 less the process umask."""
    try:  # Linux reports the umask without changing it
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere it can only be read by setting it: set it straight back
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: os.PathLike) -> Iterator[Path]:
    """Yields a temp path in ``path``'s folder to write; renames it to ``path`` on success.

    On any exception the temp file is removed and ``path`` is left as it was.
    A failed file operation (a full disk, a read-only folder) raises its
    OSError naming ``path`` (or the folder that cannot hold it), not the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        error.filename = str(path.parent)
        raise
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError) and error.filename in (None, tmp):
            error.filename = str(path)
        raise


def atomic_write_text(path: os.PathLike, text: str) -> None:
    """``text`` as UTF-8, newlines written as they are."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)


def atomic_torch_save(obj: Any, path: os.PathLike) -> None:
    import torch  # data preparation writes files without needing torch

    # Saved through a file object: torch names the archive inside after a path's file name,
    # which for a temp file would make equal objects give different bytes.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(obj, f)
        except RuntimeError as error:  # torch reports a failed write as "[enforce fail ...] unexpected pos"
            raise _failed_write(error, Path(path)) from error


# Less room than this left after a failed write: the disk is taken to be full.
_NEARLY_FULL_BYTES = 64 << 20


def _failed_write(error: RuntimeError, path: Path) -> BaseException:
    """torch's error for a write that failed, as the OSError it hides (a full disk), else as it is."""
    if "unexpected pos" not in str(error):
        return error
    if shutil.disk_usage(path.parent).free < _NEARLY_FULL_BYTES:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return OSError(errno.EIO, f"the write failed ({str(error).strip().splitlines()[0]})", str(path))
