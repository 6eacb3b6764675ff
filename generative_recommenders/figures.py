"""Figures sized for a paper: one column (8 cm) wide, models named on the axis, values shown.

Every figure is written as PNG (300 dpi) and beside it, for a paper's source, as SVG and PDF
(vector), each through a temp file renamed at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
from matplotlib.figure import Figure  # noqa: E402

from generative_recommenders.atomic_files import atomic_path  # noqa: E402

COLUMN_WIDTH_INCHES = 8 / 2.54  # one column of a two-column paper
PNG_DPI = 300
VECTOR_FORMATS = (".svg", ".pdf")


def save_figure(figure: Figure, path: Path) -> List[Path]:
    """Writes ``figure`` to ``path`` (its suffix's format) and, for a ``.png``, as SVG and PDF too;
    returns the files written."""
    path = Path(path)
    paths = [path] + ([path.with_suffix(s) for s in VECTOR_FORMATS] if path.suffix == ".png" else [])
    for target in paths:
        with atomic_path(target) as tmp:
            figure.savefig(tmp, dpi=PNG_DPI, format=target.suffix[1:], bbox_inches="tight")
    return paths
