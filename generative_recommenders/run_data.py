"""Where a finished run's data is, and which of its weights it chose: found from any folder.

A run records the absolute folder of its prepared dataset (``results.json``'s
``data_dir``). Runs from before that record their roots alone, relative to the
folder they were trained from; that folder is recovered from the run's own path
(``<project>/<output_root>/<dataset>/<run>``) where it can be, else the current one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from generative_recommenders.data.sequence_format import SEQUENCE_FILE
from generative_recommenders.errors import UserError

DATA_DIR_KEY = "data_dir"


class RunDataNotFoundError(UserError):
    """The prepared dataset of a run is not where the run says, nor where it was looked for."""


def chosen_weights(results: Dict[str, Any]) -> str:
    """``best`` where validation chose an epoch, else ``last`` (the reference protocol has no validation)."""
    return "best" if results.get("best") else "last"


def _candidates(results: Dict[str, Any], run_dir: Path, data_root: str, dataset_name: str) -> List[Path]:
    recorded = results.get(DATA_DIR_KEY)
    if recorded:
        return [Path(recorded)]
    relative = Path(data_root) / dataset_name
    if relative.is_absolute():
        return [relative]
    candidates = [Path.cwd() / relative]
    recorded_run = Path(str(results.get("run_dir", "")))
    parts = run_dir.resolve().parts
    if recorded_run.parts and not recorded_run.is_absolute() and parts[-len(recorded_run.parts):] == recorded_run.parts:
        project = Path(*parts[: -len(recorded_run.parts)]) if len(parts) > len(recorded_run.parts) else Path("/")
        candidates.insert(0, project / relative)
    return list(dict.fromkeys(candidates))


def run_data_dir(
    results: Dict[str, Any], run_dir: Path, data_root: str, dataset_name: str, data_dir: Optional[os.PathLike] = None
) -> Path:
    """The prepared dataset folder of the run in ``run_dir`` (``data_dir`` where the caller names one)."""
    if data_dir is not None:
        return Path(data_dir)
    candidates = _candidates(results, run_dir, data_root, dataset_name)
    for candidate in candidates:
        if (candidate / SEQUENCE_FILE).is_file():
            return candidate
    raise RunDataNotFoundError(
        f"run {run_dir} was trained on {dataset_name}, whose prepared data is not where the run says: looked in "
        f"{', '.join(str(c) for c in candidates)}; point to it with data_dir=... (gr-recommend --data_dir DIR), "
        f"or prepare it there again (gr-prepare --dataset {dataset_name} --data_root {candidates[0].parent})"
    )
