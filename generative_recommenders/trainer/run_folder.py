"""A run folder belongs to one run: one configuration, one process tree at a time, results never lost.

* :class:`RunFolderLock`: an exclusive ``flock`` on ``<run>/.lock`` while a
  run trains; a second process is refused, naming the holder. The kernel
  drops the lock of a process that dies, so a killed run's folder is taken
  over by the next one without ceremony.
* :func:`check_existing_run`: what a new start finds in the folder. A run of
  another configuration, a finished run, or an unfinished one started
  without ``--resume`` is never overwritten silently.
* :func:`config_differences` / :func:`only_extends_epochs`: the lines two
  gin configs differ in, and whether a resume merely asks for more epochs.
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
from typing import Any, Dict, List, Optional

from generative_recommenders.errors import UserError

LOCK_FILE = ".lock"
# What a fresh start (or --overwrite) replaces in a run folder.
RUN_OUTPUTS = ("checkpoint.pt", "results.json", "best_model.pt", "last_model.pt")
_NUM_EPOCHS = re.compile(r"^train_fn\.num_epochs = (\d+)$")


class RunFolderError(UserError):
    """The run folder holds another run, or is in use."""


def config_differences(before: str, after: str) -> List[str]:
    """The lines of gin config ``before`` (``-``) and ``after`` (``+``) that differ."""
    diff = difflib.unified_diff(before.splitlines(), after.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


def only_extends_epochs(before: str, after: str) -> bool:
    """Whether ``after`` is ``before`` with a larger ``train_fn.num_epochs`` (and nothing else changed)."""
    changes = config_differences(before, after)
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


def read_results(run_dir: Path) -> Optional[Dict[str, Any]]:
    path = run_dir / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # not a results file of a run we could continue: a fresh start replaces it
    return results if isinstance(results, dict) else None


def check_existing_run(run_dir: Path, run_config: str, resume: bool, overwrite: bool) -> Optional[Dict[str, Any]]:
    """Decides what a start does with what ``run_dir`` already holds.

    Returns the finished results of this very configuration (nothing is to
    be trained), or None (train: from scratch, or from the checkpoint under
    ``resume``). Raises :class:`RunFolderError` where going on would replace
    another run's results, unless ``overwrite`` asks for exactly that (the
    earlier outputs are then removed).
    """
    results = read_results(run_dir)
    if overwrite:
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        for events in run_dir.glob("events.out.tfevents.*"):
            events.unlink()
        return None
    if results is None or "run_config" not in results:
        return None  # nothing of a run to lose (or an older run's folder: its checkpoint check still applies)
    earlier = results["run_config"]
    if earlier != run_config and not (resume and only_extends_epochs(earlier, run_config)):
        changes = "; ".join(config_differences(earlier, run_config)) or "(none)"
        raise RunFolderError(
            f"{run_dir} holds a run of another configuration (- that run, + this one: {changes}); "
            "give this run its own train_fn.run_name, or pass --overwrite to replace that run"
        )
    if results.get("finished") and earlier == run_config:
        return results
    if not resume and not results.get("finished"):
        raise RunFolderError(
            f"{run_dir} holds an unfinished run of this configuration (epoch "
            f"{len(results.get('epochs', []))} of its training done): pass --resume to continue it, "
            "or --overwrite to start it again"
        )
    return None
