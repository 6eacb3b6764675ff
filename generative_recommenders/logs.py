"""The project's one logging channel: ``generative_recommenders`` and its children.

Messages are plain lines on stdout (``message`` alone, no timestamps or
levels), so that a run's output reads like a report and pipes cleanly.
Third-party loggers, and the root logger they may use, stay at WARNING
unless ``GR_VERBOSE=1``.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "generative_recommenders"
_QUIET_LIBRARIES = ("absl", "fbgemm_gpu", "torch", "urllib3", "httpx", "filelock", "sentence_transformers", "transformers")


def get_logger(name: str = ROOT) -> logging.Logger:
    """The logger of a module (pass ``__name__``) or of the project."""
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (a redirected or captured stdout too)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it
        del value


def configure_logging(level: int = logging.INFO) -> None:
    """Sends the project's messages to stdout as plain lines; idempotent."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        logger.addHandler(_StdoutHandler())
    logger.propagate = False
    if os.environ.get("GR_VERBOSE", "") in ("", "0"):
        # Libraries log to the root logger too (fbgemm_gpu: a line per kernel library it loads).
        logging.getLogger().setLevel(logging.WARNING)
        for name in _QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
