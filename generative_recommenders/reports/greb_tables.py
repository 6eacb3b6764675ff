"""The GRE-B tables and figure from results records (``greb.py`` writes them as its runs finish).

A record is one trained (dataset, encoder, model, seed); see ``greb.py``. ``summarize``
makes one row per (dataset, encoder, model) with means and stds over seeds;
``write_greb_tables`` writes ``greb.csv``, ``greb.md`` and ``greb.png`` (with its .svg
and .pdf).
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.evaluation.target_groups import COLD_ITEMS, POPULARITY_GROUPS

# (metric key in the records, column title, higher is better)
RETRIEVAL_METRICS = (("ndcg@10", "NDCG@10", True), ("hr@10", "Recall@10", True))
RANKING_METRICS = (("auc", "AUC", True), ("logloss", "Logloss", False))
# Per-group tables: the headline metric, and a deep cutoff where tail and cold targets first show.
GROUP_METRICS = (("ndcg@10", "NDCG@10"), ("hr@200", "HR@200"))
NAIVE = "none"
TIME_COLUMN = "seconds_per_epoch"
EPOCHS_COLUMN = "epochs_trained"  # early stopping decides it: a run's length beside its time per epoch


TASK_METRICS = {"retrieval": RETRIEVAL_METRICS, "ctr": RANKING_METRICS}


def _values(record: Dict[str, Any]) -> Dict[str, float]:
    """The record's metrics as flat columns: test metrics, then ``<group>/<metric>`` of :data:`GROUP_METRICS`."""
    out = {key: float(record["test"][key]) for key, _, _ in TASK_METRICS[record["task"]]}
    groups = {**record.get("popularity_groups", {}), **record.get("cold_items", {})}
    for metric, _ in GROUP_METRICS:
        for group in (*POPULARITY_GROUPS, COLD_ITEMS):
            if metric in groups.get(group, {}):
                out[f"{group}/{metric}"] = float(groups[group][metric])
    for column in (TIME_COLUMN, EPOCHS_COLUMN):
        if column in record:
            out[column] = float(record[column])
    return out


def summarize(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (dataset, encoder, model): ``num_seeds``, each metric's mean and ``<metric>_std``.

    The std is over seeds (sample std, 0 for a single seed). Rows are sorted by
    dataset, then encoder (``none`` first), then model: retrieval models first,
    each task's models in the order they first appear.
    """
    grouped: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[(record["dataset"], record["encoder"], record["model"])].append(record)
    order = {m: (runs[0]["task"] != "retrieval", i) for i, (m, runs) in enumerate(
        {key[2]: runs for key, runs in grouped.items()}.items())}
    rows = []
    for (dataset, encoder, model), runs in sorted(
        grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] != NAIVE, kv[0][1], order[kv[0][2]])
    ):
        seeds = sorted(run["seed"] for run in runs)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{dataset}/{encoder}/{model}: seed listed twice in {seeds}")
        values = [_values(run) for run in runs]
        row: Dict[str, Any] = {
            "dataset": dataset, "encoder": encoder, "model": model, "title": runs[0]["title"],
            "task": runs[0]["task"], "num_seeds": len(runs),
        }
        for key in values[0]:
            column = np.array([v[key] for v in values if key in v])
            row[key] = float(column.mean())
            row[f"{key}_std"] = float(column.std(ddof=1)) if len(column) > 1 else 0.0
        if "has_categories" in runs[0]:
            row["has_categories"] = bool(runs[0]["has_categories"])
        if "num_items" in runs[0]:
            row["num_items"] = int(runs[0]["num_items"])
        boundaries = runs[0].get("popularity_groups", {}).get("groups")
        if boundaries:
            row["group_boundaries"] = boundaries
        rows.append(row)
    return rows


def csv_text(rows: Sequence[Dict[str, Any]]) -> str:
    """``greb.csv``: one row per dataset, encoder and model; metric names as column headers."""
    columns: List[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns and c != "group_boundaries"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _cell(row: Optional[Dict[str, Any]], key: str, naive: Optional[Dict[str, Any]], best: bool) -> str:
    if row is None or key not in row:
        return "-"
    text = f"{row[key]:.4f}"
    if row["num_seeds"] > 1:
        text += f" ± {row[f'{key}_std']:.4f}"
    if naive is not None and row is not naive and naive.get(key):
        text += f" ({100 * (row[key] / naive[key] - 1):+.1f}%)"
    return f"**{text}**" if best else text


def _table(rows: Sequence[Dict[str, Any]], columns: Sequence[Tuple[str, str, str, bool]]) -> List[str]:
    """A markdown table, a row per encoder; ``columns``: (model, metric key, title, higher is better)."""
    encoders = list(dict.fromkeys(row["encoder"] for row in rows))
    by_key = {(row["encoder"], row["model"]): row for row in rows}
    lines = ["| Encoder | " + " | ".join(title for _, _, title, _ in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    best = {}
    for model, key, _, higher in columns:
        scores = [by_key[(e, model)][key] for e in encoders if key in by_key.get((e, model), {})]
        # No encoder is best where every encoder scores the same (e.g. 0 on cold items).
        best[(model, key)] = (max if higher else min)(scores) if len(set(scores)) > 1 else None
    for encoder in encoders:
        cells = []
        for model, key, _, _ in columns:
            row = by_key.get((encoder, model))
            is_best = row is not None and key in row and len(encoders) > 1 and row[key] == best[(model, key)]
            cells.append(_cell(row, key, by_key.get((NAIVE, model)), is_best))
        lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
    return lines


def markdown_text(rows: Sequence[Dict[str, Any]]) -> str:
    """``greb.md``: per dataset, the main table and a per-group table for each of :data:`GROUP_METRICS`."""
    lines = [
        "# GRE-B",
        "",
        "Mean ± std over seeds on the test split, (% change over the id-only `none`), best per column in bold. "
        "Recall@10 is HR@10 (one target per user). SASRec and DSSM are trained as in GRE-B (binary "
        "cross-entropy, uniform negatives); HSTU with this project's sampled softmax, the stronger training.",
    ]
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        subset = [row for row in rows if row["dataset"] == dataset]
        models = _models(subset)
        columns = [
            (model, key, f"{row['title']} {title}", higher)
            for model, row in models.items()
            for key, title, higher in TASK_METRICS[row["task"]]
        ]
        lines += ["", f"## {dataset}", ""] + _table(subset, columns)
        if any(r.get("has_categories") is False for r in subset):
            lines += ["", "This dataset has no item categories: DIN and DeepFM run without that field."]
        for metric, title in GROUP_METRICS:
            group_columns = [
                (model, f"{group}/{metric}", f"{row['title']} {group}", True)
                for model, row in models.items()
                if row["task"] == "retrieval"
                for group in (*POPULARITY_GROUPS, COLD_ITEMS)
                if any(f"{group}/{metric}" in r for r in subset if r["model"] == model)
            ]
            if group_columns:
                lines += [
                    "",
                    f"{title} by test target: popularity group (head / torso / tail by training frequency) "
                    f"and items held out of training ({COLD_ITEMS}). An id-only model knows nothing of a cold "
                    "item (its id row never trained): its cold_items column is where untrained rows land among "
                    "trained ones, not knowledge of the items; a text model can place them by their text"
                    f"{_chance(metric, subset)}.",
                    "",
                ] + _table(subset, group_columns)
        lines += _group_boundaries(subset)
        times = [
            f"{r['title']} ({r['encoder']}) {r[TIME_COLUMN]:.1f} s"
            + (f" × {r[EPOCHS_COLUMN]:.0f}" if EPOCHS_COLUMN in r else "")
            for r in subset if TIME_COLUMN in r
        ]
        if times:
            lines += ["", "Training time per epoch × epochs trained (mean over seeds; early stopping ends a run): "
                      + ", ".join(times) + "."]
    return "\n".join(lines) + "\n"


def _models(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The models of ``rows`` in table order, each with one of its rows (its title and task)."""
    models: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        models.setdefault(row["model"], row)
    return dict(sorted(models.items(), key=lambda item: item[1]["task"] != "retrieval"))


def _chance(metric: str, rows: Sequence[Dict[str, Any]]) -> str:
    """`` (a random ranking's HR@K: about K / num_items = ...)`` for an HR metric, else nothing."""
    num_items = next((r["num_items"] for r in rows if "num_items" in r), None)
    if not metric.startswith("hr@") or num_items is None:
        return ""
    k = int(metric[len("hr@"):])
    return f" (a random ranking's {metric.upper()}: about {k}/{num_items} = {k / num_items:.3f})"


def _group_boundaries(rows: Sequence[Dict[str, Any]]) -> List[str]:
    described = next((r["group_boundaries"] for r in rows if r.get("group_boundaries")), None)
    if described is None:
        return []
    parts = [
        f"{name}: {described[name]['num_items']} items, {described[name]['min_count']}-"
        f"{described[name]['max_count']} training interactions each"
        for name in POPULARITY_GROUPS if name in described
    ]
    return ["", f"Groups ({described['rule']}): " + "; ".join(parts) + "."]


def plot_greb(rows: Sequence[Dict[str, Any]], path: Path) -> List[Path]:
    """Per dataset, the first metric of every model (NDCG@10, or AUC for CTR models) per text
    encoder, a column wide (``figures.py``); writes ``path`` (.png) and its .svg and .pdf twins."""
    from matplotlib import colormaps

    from generative_recommenders.reports import figures

    encoders = list(dict.fromkeys(row["encoder"] for row in rows))
    colours = dict(zip(encoders, colormaps["tab10"].colors))
    blocks = []
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        subset = [r for r in rows if r["dataset"] == dataset]
        models = _models(subset)
        panels = []
        for task in TASK_METRICS:
            family = [m for m, row in models.items() if row["task"] == task]
            if not family:
                continue
            key, title, _ = TASK_METRICS[task][0]
            series = []
            for encoder in encoders:
                by_model = {r["model"]: r for r in subset if r["encoder"] == encoder}
                series.append(figures.Series(
                    encoder, [by_model[m][key] if m in by_model else None for m in family],
                    [by_model[m].get(f"{key}_std") if m in by_model else None for m in family],
                    [colours[encoder]] * len(family),
                ))
            panels.append(figures.Panel(title, f"test {title}", [models[m]["title"] for m in family], series))
        metrics = " and ".join(p.title for p in panels)
        blocks.append((f"GRE-B on {dataset}: test {metrics} by text encoder ({', '.join(encoders)})", panels))
    figure = figures.bar_figure(blocks, names_left_only=False, legend=list(colours.items()))
    return figures.save_figures(figure, path.with_suffix(""))


def write_greb_tables(records: Iterable[Dict[str, Any]], output_dir: os.PathLike) -> Tuple[Path, Path, Path]:
    """Writes ``greb.csv``, ``greb.md`` and ``greb.png`` to ``output_dir``; returns their paths."""
    rows = summarize(records)
    if not rows:
        raise ValueError("no GRE-B results to tabulate")
    output_dir = Path(output_dir)
    csv_path, md_path, png_path = output_dir / "greb.csv", output_dir / "greb.md", output_dir / "greb.png"
    atomic_write_text(csv_path, csv_text(rows))
    atomic_write_text(md_path, markdown_text(rows))
    plot_greb(rows, png_path)
    return csv_path, md_path, png_path
