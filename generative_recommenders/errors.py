"""The one exception base for mistakes a user can fix, and how command lines report them.

A :class:`UserError` is printed as one line (what is wrong, which file and
line or which setting, and the fix) and the command exits non-zero, without
a traceback. ``--debug`` (or ``GR_DEBUG=1``) shows the traceback too.
Every module raises its own subclass (``DatasetFormatError``,
``CheckpointError``, ...), so callers can catch one kind or all of them.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Callable, List, NoReturn, Optional, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENVIRONMENT = "GR_DEBUG"


class UserError(ValueError):
    """Bad input, a bad setting or a bad environment: reported as one line."""


class SettingError(UserError):
    """A gin setting of a model (e.g. ``hstu_encoder.num_heads``) that cannot build it."""


def require_heads(setting: str, num_heads: object, embedding_dim: int, must_divide: bool) -> None:
    """Raises SettingError unless ``num_heads`` (gin's ``setting``) is a whole number >= 1 that, where
    ``must_divide``, divides ``embedding_dim`` (train_fn.item_embedding_dim)."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise SettingError(f"{setting} must be a whole number >= 1, got {num_heads!r}")
    if must_divide and embedding_dim % num_heads:
        divisors = ", ".join(str(d) for d in range(1, embedding_dim + 1) if embedding_dim % d == 0)
        raise SettingError(
            f"{setting} = {num_heads} does not divide the embedding dimension {embedding_dim} "
            f"(train_fn.item_embedding_dim): choose one of {divisors}"
        )


def debug_requested(argv: Optional[Sequence[str]] = None) -> bool:
    argv = sys.argv if argv is None else argv
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENVIRONMENT, "") not in ("", "0")


# An OSError as gin passes it on from a configurable: rebuilt from its text, its errno and path only in there.
_OS_ERROR_TEXT = re.compile(r"^\[Errno (\d+)\] (.*?)(?:: '(.*)')?$")


def os_error_message(error: OSError) -> str:
    """One line for a failed file operation: the path, and what to do about it."""
    if error.errno is None:
        match = _OS_ERROR_TEXT.match(str(error).splitlines()[0] if str(error) else "")
        if match:
            error = OSError(int(match.group(1)), match.group(2), match.group(3))
    path = error.filename or "the output"
    if error.errno == errno.ENOSPC:
        return f"{path}: no space left on the device; free some space or write elsewhere"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: not writable ({error.strerror}); choose a folder you can write to"
    if error.errno in (errno.ENOTDIR, errno.EEXIST):
        return f"{path}: a file stands where a folder is needed ({error.strerror}); move it or choose another path"
    return f"{path}: {error.strerror or error}"


def one_line(error: BaseException) -> str:
    """The error's message, without what gin appends to it ("In call to configurable ..."):
    one line, but for the messages that list one thing per line (e.g. every missing raw file)."""
    if isinstance(error, OSError):
        return os_error_message(error)
    lines = [line for line in str(error).splitlines() if line.strip()]
    return "\n".join(line for line in lines if not line.strip().startswith("In call to configurable"))


def exit_with_error(program: str, error: BaseException, debug: bool) -> NoReturn:
    """``program: message`` on stderr (the traceback first under ``debug``), exit status 1."""
    if debug:
        traceback.print_exc()
    print(f"{program}: {one_line(error)}" + ("" if debug else f" (details: {DEBUG_FLAG})"), file=sys.stderr, flush=True)
    sys.exit(1)


def run_command(program: str, main: Callable[[List[str]], Optional[int]], argv: Optional[List[str]] = None) -> NoReturn:
    """Runs a command line's ``main(argv)`` and exits with its status.

    A :class:`UserError` or a failed file operation becomes ``program: message``
    on stderr and exit status 1 (the traceback too under ``--debug``, which is
    removed from ``argv`` before ``main`` sees it).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != DEBUG_FLAG]
    try:
        status = main(argv)
    except (UserError, OSError) as error:
        exit_with_error(program, error, debug)
    except KeyboardInterrupt:
        print(f"{program}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    sys.exit(status or 0)
