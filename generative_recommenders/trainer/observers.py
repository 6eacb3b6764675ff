"""What a caller of the trainer may watch: each validation, and the moment before the test.

A hyper-parameter search (``tune.py``) reports each validation to its pruner,
which may stop the run by raising; and it stops each trial's run before the
test set is read, so that only the chosen trial is ever tested. An observer
is active inside :func:`observing`; the trainer calls :func:`validated` and
:func:`before_test`, which do nothing without one.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Dict, Iterator, List


class TrainingObserver:
    """Override either method; raising in it stops the run (its checkpoint stays for ``--resume``)."""

    def validated(self, run_dir: Path, epoch: int, metrics: Dict[str, float]) -> None:
        """A full validation after ``epoch`` (validated protocol)."""

    def before_test(self, run_dir: Path) -> None:
        """Training is over and saved; the test comes next."""


_active: List[TrainingObserver] = []


@contextlib.contextmanager
def observing(observer: TrainingObserver) -> Iterator[None]:
    _active.append(observer)
    try:
        yield
    finally:
        _active.remove(observer)


def validated(run_dir: Path, epoch: int, metrics: Dict[str, float]) -> None:
    for observer in list(_active):
        observer.validated(run_dir, epoch, metrics)


def before_test(run_dir: Path) -> None:
    for observer in list(_active):
        observer.before_test(run_dir)
