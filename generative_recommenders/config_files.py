"""Finds a gin config by its path or by its name, in a checkout or in an installed package.

A name is a config's path under ``configs/`` without ``.gin``:
``amzn23_game/hstu-sampled-softmax-n512-blair`` or ``greb/hstu-text``; the search
spaces of ``gr-tune`` ship there too (``ml100k/hstu-search-space.toml``).
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


def available_configs(suffix: str = SUFFIX) -> List[str]:
    """The names of every shipped file of ``suffix`` (configs: without it), sorted."""
    names = set()
    for root in config_roots():
        for path in root.rglob(f"*{suffix}"):
            name = path.relative_to(root).as_posix()
            names.add(name[: -len(SUFFIX)] if suffix == SUFFIX else name)
    return sorted(names)


def _name(text: str, suffix: str) -> str:
    name = text.replace(os.sep, "/")
    name = name[len(PREFIX):] if name.startswith(PREFIX) else name
    return name[: -len(suffix)] if name.endswith(suffix) else name


def resolve_config(config: Union[str, os.PathLike], suffix: str = SUFFIX, what: str = "gin config") -> Path:
    """The file ``config`` names: an existing path, else a shipped file of that name (``suffix`` optional)."""
    path = Path(config)
    if path.is_file():
        return path
    name = _name(str(config), suffix)
    for root in config_roots():
        candidate = root / f"{name}{suffix}"
        if candidate.is_file():
            return candidate
    raise ConfigNotFoundError(f"{what} {config} not found: not a file, nor the name of a shipped one; "
                              + _what_exists(name, suffix))


def _what_exists(name: str, suffix: str) -> str:
    """The shipped names of ``name``'s folder, or the folders (the whole list would be pages long)."""
    names = available_configs(suffix)
    shown = name if suffix == SUFFIX else f"{name}{suffix}"
    close = difflib.get_close_matches(shown, names, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    folder = name.rsplit("/", 1)[0] if "/" in name else None
    in_folder = [n.rsplit("/", 1)[1] for n in names if folder is not None and n.startswith(f"{folder}/")]
    if in_folder:
        return f"{hint}{folder}/ holds {', '.join(in_folder)}"
    folders = sorted({n.rsplit("/", 1)[0] for n in names if "/" in n})
    if not folders:
        return "this installation ships none"
    return f"{hint}name one as FOLDER/NAME; the folders are {', '.join(folders)} (e.g. {names[0]})"
