"""Figures sized for a paper: one column (8 cm) wide, names on the axis, values on the bars.

A figure is a stack of blocks (a dataset, a protocol), each a grid of panels
(a metric); a panel is horizontal bars, one per name (a model, a variant), in
one series or in several side by side (the text encoders of GRE-B), each bar
labelled with its value. Fonts are 6-7 pt at the printed size, so that the
figure reads at 8 cm wide. :func:`save_figures` writes the PNG (300 dpi) and
its vector twins (SVG, PDF), each through a temp file renamed at the end.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
from matplotlib.figure import Figure, SubFigure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from generative_recommenders.atomic_files import atomic_path  # noqa: E402

COLUMN_WIDTH_INCHES = 8 / 2.54  # one column of a two-column paper
PNG_DPI = 300
FORMATS = (".png", ".svg", ".pdf")
FONT_SIZE = 7  # titles and axis labels, in points at the printed size
SMALL_FONT_SIZE = 6  # ticks, values and legends
BAR_INCHES = 0.13  # the height of one bar
PANEL_INCHES = 0.55  # a panel's title, axis and labels around its bars
TITLE_INCHES = 0.3  # a block's title line
HEADROOM = 1.25  # the value axis reaches this much past the longest bar: room for its value
TITLE_WIDTH = 44  # characters of a bold title line that fit 8 cm


@dataclass(frozen=True)
class Series:
    """One bar per name: its value, its spread (None: no error bar) and its colour."""

    name: str
    values: Sequence[float]
    errors: Sequence[Optional[float]]
    colours: Sequence[Any]


@dataclass(frozen=True)
class Panel:
    """A metric's bars: ``names`` on the axis (first on top), one bar per name in each series."""

    title: str
    value_label: str
    names: Sequence[str]
    series: Sequence[Series]


def _rows(panels: Sequence[Panel], ncols: int) -> List[Sequence[Panel]]:
    return [panels[i:i + ncols] for i in range(0, len(panels), ncols)]


def _row_inches(row: Sequence[Panel]) -> float:
    return max(len(p.names) * len(p.series) for p in row) * BAR_INCHES + PANEL_INCHES


def _block_inches(panels: Sequence[Panel], ncols: int, title: str) -> float:
    lines = len(textwrap.wrap(title, TITLE_WIDTH)) or 1
    return sum(_row_inches(row) for row in _rows(panels, ncols)) + TITLE_INCHES * lines


def _value_text(value: float) -> str:
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"


def _draw_panel(ax, panel: Panel, show_names: bool) -> None:
    count = len(panel.series)
    height = 0.8 / count
    reach = 0.0
    for s, series in enumerate(panel.series):
        # First name on top; the series of one name side by side, the first on top.
        positions = [len(panel.names) - 1 - i + 0.4 - height * (s + 0.5) for i in range(len(panel.names))]
        present = [(p, v, e, c) for p, v, e, c in zip(positions, series.values, series.errors, series.colours)
                   if v is not None and not math.isnan(v)]
        if not present:
            continue
        ys, values, errors, colours = zip(*present)
        spreads = None if all(e is None for e in errors) else [e or 0.0 for e in errors]
        ax.barh(ys, values, height, xerr=spreads, color=colours, label=series.name,
                error_kw={"elinewidth": 0.6, "capsize": 1.5, "capthick": 0.6})
        for y, value, error in zip(ys, values, errors):
            end = value + (error or 0.0)
            ax.text(end, y, " " + _value_text(value), va="center", ha="left", fontsize=SMALL_FONT_SIZE - 1)
            reach = max(reach, end)
    ax.set_yticks(range(len(panel.names)))
    ax.set_yticklabels(list(reversed(panel.names)) if show_names else [], fontsize=SMALL_FONT_SIZE)
    ax.set_ylim(-0.5, len(panel.names) - 0.5)
    ax.set_xlim(0, (reach or 1.0) * HEADROOM)
    ax.set_title(panel.title, fontsize=FONT_SIZE, pad=2)
    ax.set_xlabel(panel.value_label, fontsize=SMALL_FONT_SIZE, labelpad=1)
    ax.tick_params(axis="x", labelsize=SMALL_FONT_SIZE - 1, length=2, pad=1)
    ax.tick_params(axis="y", length=0, pad=2)
    ax.xaxis.set_major_locator(MaxNLocator(3))
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _draw_block(container: SubFigure, title: str, panels: Sequence[Panel], ncols: int, names_left_only: bool) -> None:
    rows = _rows(panels, ncols)
    grids = container.subfigures(len(rows), 1, squeeze=False, height_ratios=[_row_inches(r) for r in rows])[:, 0]
    for grid, row in zip(grids, rows):
        axes = grid.subplots(1, ncols, squeeze=False)[0]
        for column, ax in enumerate(axes):
            if column < len(row):
                _draw_panel(ax, row[column], show_names=column == 0 or not names_left_only)
            else:
                ax.set_visible(False)
    container.suptitle("\n".join(textwrap.wrap(title, TITLE_WIDTH)), fontsize=FONT_SIZE, weight="bold")


def bar_figure(
    blocks: Sequence[Tuple[str, Sequence[Panel]]],
    ncols: int = 2,
    names_left_only: bool = True,
    legend: Sequence[Tuple[str, Any]] = (),
) -> Figure:
    """A column-wide figure: each (title, panels) block a grid of ``ncols`` panels per row.

    ``names_left_only``: the panels of a block share their names, shown on the left column
    alone. ``legend``: (name, colour) of each series, shown once below everything."""
    heights = [_block_inches(panels, ncols, title) for title, panels in blocks]
    legend_inches = 0.25 if legend else 0.0
    figure = Figure(figsize=(COLUMN_WIDTH_INCHES, sum(heights) + legend_inches), layout="constrained")
    figure.get_layout_engine().set(w_pad=0.02, h_pad=0.02, hspace=0.02, wspace=0.04)
    containers = figure.subfigures(len(blocks), 1, squeeze=False, height_ratios=heights)[:, 0]
    for container, (title, panels) in zip(containers, blocks):
        _draw_block(container, title, panels, ncols, names_left_only)
    if legend:
        handles = [Patch(color=colour, label=name) for name, colour in legend]
        figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4),
                      fontsize=SMALL_FONT_SIZE, frameon=False, handlelength=1.0, columnspacing=1.0)
    return figure


def save_figure(figure: Figure, path: Path) -> Path:
    """Writes ``figure`` in the format of ``path``'s suffix (PNG at 300 dpi)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=PNG_DPI, format=path.suffix[1:])
    return path


def save_figures(figure: Figure, stem: Path) -> List[Path]:
    """Writes ``figure`` as ``stem``.png, .svg and .pdf; returns the paths."""
    return [save_figure(figure, Path(stem).with_suffix(suffix)) for suffix in FORMATS]
