"""The project's one logging channel: ``generative_recommenders`` and its children.

Messages are plain lines on stdout (``message`` alone, no timestamps or
levels), so that a run's output reads like a report and pipes cleanly.
Third-party loggers stay at WARNING unless ``GR_VERBOSE=1``.
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


def configure_logging(level: int = logging.INFO) -> None:
    """Sends the project's messages to stdout as plain lines; idempotent."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level)
    if not any(getattr(h, "_gr_handler", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._gr_handler = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    if os.environ.get("GR_VERBOSE", "") in ("", "0"):
        for name in _QUIET_LIBRARIES:
            logging.getLogger(name).setLevel(logging.WARNING)
