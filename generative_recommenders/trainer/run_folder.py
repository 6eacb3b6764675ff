"""A run folder belongs to one run: one configuration, one process tree at a time, results never lost.

* :class:`RunFolderLock`: an exclusive ``flock`` on ``<run>/.lock`` while a
  run trains; a second process is refused, naming the holder. The kernel
  drops the lock of a process that dies, so a killed run's folder is taken
  over by the next one without ceremony.
* :func:`check_existing_run`: what a new start finds in the folder. A run of
  another configuration or of other data, a finished run, an unfinished one
  started without ``--resume``, or a run whose ``results.json`` is damaged
  is never overwritten silently.
* :func:`config_differences` / :func:`run_differences` /
  :func:`only_extends_epochs`: the lines two gin configs differ in, the
  bindings two runs differ in (where they write and read aside), and
  whether a resume merely asks for more epochs.
"""

from __future__ import annotations

import difflib
import errno
import fcntl
import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from generative_recommenders.data.identity import IDENTITY_KEY, DataIdentityError, check_same_data
from generative_recommenders.errors import UserError
from generative_recommenders.trainer.run_log import RESULTS_FILE

LOCK_FILE = ".lock"
# What a fresh start (or --overwrite) replaces in a run folder.
RUN_OUTPUTS = ("checkpoint.pt", "results.json", "best_model.pt", "last_model.pt")
_NUM_EPOCHS = re.compile(r"^train_fn\.num_epochs = (\d+)$")
_PLACE = re.compile(r"^train_fn\.(output_root|data_root) = ")
# What a run folder keeps of a run that a fresh start would lose.
_RUN_WORK = ("checkpoint.pt", "best_model.pt", "last_model.pt")


class RunFolderError(UserError):
    """The run folder holds another run, or is in use."""


def _bindings(config: str) -> List[str]:
    """The lines of a gin config, a binding that gin wrapped (``name = \\`` and its value on the next
    lines) joined into one."""
    lines: List[str] = []
    continued = False
    for line in config.splitlines():
        if continued:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line)
        continued = lines[-1].endswith("\\")
        if continued:
            lines[-1] = lines[-1][:-1].rstrip()
    return lines


def config_differences(before: str, after: str) -> List[str]:
    """The lines of gin config ``before`` (``-``) and ``after`` (``+``) that differ."""
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


def run_differences(before: str, after: str) -> List[str]:
    """The bindings of gin config ``before`` (``-``) and ``after`` (``+``) that differ, one line each,
    but for where the run writes and reads (``output_root``, ``data_root``): a run folder moved to
    another root, or its data moved, is the same run (the data itself is checked by its identity,
    ``data/identity.py``)."""
    return [line for line in config_differences("\n".join(_bindings(before)), "\n".join(_bindings(after)))
            if not _PLACE.match(line[1:])]


def same_run_config(before: str, after: str) -> bool:
    """Whether two gin configs are of one run (they may differ in where it writes and reads)."""
    return before == after or not run_differences(before, after)


def only_extends_epochs(before: str, after: str) -> bool:
    """Whether ``after`` is ``before`` with a larger ``train_fn.num_epochs`` (and nothing else changed)."""
    changes = run_differences(before, after)
    epochs = {line[0]: _NUM_EPOCHS.match(line[1:]) for line in changes}
    if len(changes) != 2 or not all(epochs.get(sign) for sign in "+-"):
        return False
    return int(epochs["+"].group(1)) > int(epochs["-"].group(1))


class RunFolderLock:
    """Holds ``<run_dir>/.lock`` exclusively while a run writes into the folder."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunFolderLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            if error.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderError(
                f"{self.path.parent} is in use by {holder}: wait for it to finish, stop it, "
                "or give this run another train_fn.run_name"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"process {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def read_results(run_dir: Path) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``(results, None)``, ``(None, None)`` without a ``results.json``, or ``(None, why)`` for a
    damaged one (cut short, not JSON, not an object)."""
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        return None, None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return None, f"{type(error).__name__}: {error}"
    return (results, None) if isinstance(results, dict) else (None, f"a JSON {type(results).__name__}, not an object")


def _check_unreadable_results(run_dir: Path, damage: Optional[str], resume: bool) -> None:
    """Refuses a folder holding a run's weights or checkpoint but no readable ``results.json``:
    a fresh start would train over that run. ``--resume`` rebuilds the results from the checkpoint."""
    work = [name for name in _RUN_WORK if (run_dir / name).is_file()]
    if not work or (resume and (run_dir / "checkpoint.pt").is_file()):
        return
    what = f"is damaged ({damage})" if damage else "is missing"
    rebuild = "pass --resume to rebuild it from checkpoint.pt, or " if "checkpoint.pt" in work else ""
    raise RunFolderError(
        f"{run_dir / RESULTS_FILE} {what}, beside the run's {', '.join(work)}; nothing was removed: restore "
        f"it from a backup, {rebuild}pass --overwrite to train the run again (replacing them)"
    )


def check_existing_run(
    run_dir: Path,
    run_config: str,
    resume: bool,
    overwrite: bool,
    data_identity: Optional[Dict[str, Any]] = None,
) -> Optional[Dict[str, Any]]:
    """Decides what a start does with what ``run_dir`` already holds.

    Returns the finished results of this very configuration (nothing is to
    be trained), or None (train: from scratch, or from the checkpoint under
    ``resume``). Raises :class:`RunFolderError` where going on would replace
    another run's results, unless ``overwrite`` asks for exactly that (the
    earlier outputs are then removed): a run of another configuration, of
    other data (``data_identity``, :func:`~generative_recommenders.data.identity.data_identity`
    of the data this start trains on), or a run whose ``results.json`` is
    damaged.
    """
    if resume and overwrite:
        raise RunFolderError(
            "--resume and --overwrite contradict each other (--resume continues the run in "
            f"{run_dir}, --overwrite deletes it): pass one of them"
        )
    results, damage = read_results(run_dir)
    if overwrite:
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        for events in run_dir.glob("events.out.tfevents.*"):
            events.unlink()
        return None
    if results is None:
        _check_unreadable_results(run_dir, damage, resume)
        return None  # nothing of a run to lose
    if "run_config" not in results:
        return None  # an older run's folder: its checkpoint check still applies
    earlier = results["run_config"]
    extends = only_extends_epochs(earlier, run_config)
    if not same_run_config(earlier, run_config) and not extends:
        changes = "; ".join(run_differences(earlier, run_config)) or "(none)"
        raise RunFolderError(
            f"{run_dir} holds a run of another configuration (- that run, + this one: {changes}); "
            "give this run its own train_fn.run_name, or pass --overwrite to replace that run"
        )
    if extends and not resume:
        raise RunFolderError(
            f"{run_dir} holds this run with fewer epochs ({'; '.join(run_differences(earlier, run_config))}): "
            "pass --resume to extend it to the larger train_fn.num_epochs, or give this run its own "
            "train_fn.run_name"
        )
    if data_identity is not None:
        try:
            check_same_data(
                results.get(IDENTITY_KEY), data_identity, run_dir,
                "prepare the run's data again as it was, give this run its own train_fn.run_name, or pass "
                "--overwrite to train it again on this data",
            )
        except DataIdentityError as error:  # refused on every rank alike, as the folder's other refusals
            raise RunFolderError(str(error)) from None
    if results.get("finished") and not extends:
        return results
    if not resume and not results.get("finished"):
        raise RunFolderError(
            f"{run_dir} holds an unfinished run of this configuration (epoch "
            f"{len(results.get('epochs', []))} of its training done): pass --resume to continue it, "
            "or --overwrite to start it again"
        )
    return None
