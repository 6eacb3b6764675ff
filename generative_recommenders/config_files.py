"""Finds a gin config by its path or by its name, in a checkout or in an installed package.

A name is a config's path under ``configs/`` without ``.gin``:
``amzn23_game/hstu-sampled-softmax-n512-blair`` or ``greb/hstu-text``.
A path that exists is taken as it is; ``configs/<name>.gin`` (the reference's
commands) is found from any folder. An installed package carries the configs
as package data (``setup.py`` maps the top-level ``configs/`` folder to
``generative_recommenders/configs``); a checkout reads its ``configs/``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import List, Union

from generative_recommenders.errors import UserError

PACKAGE_DIR = Path(__file__).resolve().parent
SUFFIX = ".gin"
PREFIX = "configs/"


class ConfigNotFoundError(UserError):
    """A gin config that is neither a file nor the name of a shipped config."""


def config_roots() -> List[Path]:
    """Where shipped configs live: the installed package data, else the checkout's ``configs/``."""
    candidates = [PACKAGE_DIR / "configs", PACKAGE_DIR.parent / "configs"]
    return [root for root in candidates if root.is_dir()]


def available_configs() -> List[str]:
    """The names of every shipped config, sorted (the first root's, where two hold one name)."""
    names = set()
    for root in config_roots():
        names.update(path.relative_to(root).with_suffix("").as_posix() for path in root.rglob(f"*{SUFFIX}"))
    return sorted(names)


def _name(text: str) -> str:
    name = text.replace(os.sep, "/")
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def resolve_config(config: Union[str, os.PathLike]) -> Path:
    """The gin file ``config`` names: an existing path, else a shipped config of that name."""
    path = Path(config)
    if path.is_file():
        return path
    name = _name(str(config))
    for root in config_roots():
        candidate = root / f"{name}{SUFFIX}"
        if candidate.is_file():
            return candidate
    names = available_configs()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigNotFoundError(
        f"gin config {config} not found: not a file, nor the name of a shipped config; {hint}"
        f"the shipped configs are {', '.join(names) if names else '(none: this installation has no configs)'}"
    )
