"""GRE-B: does a text encoder make recommendations better? The result tables.

A results record is one trained (dataset, encoder, model, seed)::

    {"dataset": "ml100k", "encoder": "minilm", "model": "dssm", "seed": 1,
     "test": {"ndcg@10": ..., "hr@10": ..., ...} or {"auc": ..., "logloss": ...},
     "popularity_groups": {"head": {"ndcg@10": ..., ...}, "torso": ..., "tail": ..., "groups": ...},
     "cold_items": {"cold_items": {"ndcg@10": ..., ...}, "groups": ...},   # optional
     "has_categories": true}                                               # ranking models

``encoder`` ``none`` is the id-only (naive) model. With one target per user,
Recall@10 is HR@10.
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

RETRIEVAL_MODELS = ("sasrec", "dssm", "hstu")
RANKING_MODELS = ("din", "deepfm")
MODEL_TITLES = {"sasrec": "SASRec", "dssm": "DSSM", "hstu": "HSTU", "din": "DIN", "deepfm": "DeepFM"}
# (metric key in the records, column title, higher is better)
RETRIEVAL_METRICS = (("ndcg@10", "NDCG@10", True), ("hr@10", "Recall@10", True))
RANKING_METRICS = (("auc", "AUC", True), ("logloss", "Logloss", False))
GROUP_METRIC = "ndcg@10"
NAIVE = "none"


def _metrics_of(model: str) -> Tuple[Tuple[str, str, bool], ...]:
    return RANKING_METRICS if model in RANKING_MODELS else RETRIEVAL_METRICS


def _values(record: Dict[str, Any], model: str) -> Dict[str, float]:
    """The record's metrics as flat columns: test metrics, then ``<group>/ndcg@10``."""
    out = {key: float(record["test"][key]) for key, _, _ in _metrics_of(model)}
    groups = {**record.get("popularity_groups", {}), **record.get("cold_items", {})}
    for group in (*POPULARITY_GROUPS, COLD_ITEMS):
        if GROUP_METRIC in groups.get(group, {}):
            out[f"{group}/{GROUP_METRIC}"] = float(groups[group][GROUP_METRIC])
    return out


def summarize(records: Iterable[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (dataset, encoder, model): ``num_seeds``, each metric's mean and ``<metric>_std``.

    The std is over seeds (sample std, 0 for a single seed). Rows are sorted by
    dataset, then encoder (``none`` first), then model in GRE-B's order.
    """
    grouped: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[(record["dataset"], record["encoder"], record["model"])].append(record)
    order = {m: i for i, m in enumerate(RETRIEVAL_MODELS + RANKING_MODELS)}
    rows = []
    for (dataset, encoder, model), runs in sorted(
        grouped.items(), key=lambda kv: (kv[0][0], kv[0][1] != NAIVE, kv[0][1], order.get(kv[0][2], 99))
    ):
        seeds = sorted(run["seed"] for run in runs)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{dataset}/{encoder}/{model}: seed listed twice in {seeds}")
        values = [_values(run, model) for run in runs]
        row: Dict[str, Any] = {"dataset": dataset, "encoder": encoder, "model": model, "num_seeds": len(runs)}
        for key in values[0]:
            column = np.array([v[key] for v in values if key in v])
            row[key] = float(column.mean())
            row[f"{key}_std"] = float(column.std(ddof=1)) if len(column) > 1 else 0.0
        if "has_categories" in runs[0]:
            row["has_categories"] = bool(runs[0]["has_categories"])
        rows.append(row)
    return rows


def csv_text(rows: Sequence[Dict[str, Any]]) -> str:
    """``greb.csv``: one row per dataset, encoder and model; metric names as column headers."""
    columns: List[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
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
        best[(model, key)] = (max if higher else min)(scores) if scores else None
    for encoder in encoders:
        cells = []
        for model, key, _, _ in columns:
            row = by_key.get((encoder, model))
            is_best = row is not None and key in row and len(encoders) > 1 and row[key] == best[(model, key)]
            cells.append(_cell(row, key, by_key.get((NAIVE, model)), is_best))
        lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
    return lines


def markdown_text(rows: Sequence[Dict[str, Any]]) -> str:
    """``greb.md``: per dataset, the main table and the per-group table (NDCG@10)."""
    lines = [
        "# GRE-B",
        "",
        "Mean ± std over seeds on the test split, (% change over the id-only `none`), best per column in bold. "
        "Recall@10 is HR@10 (one target per user). SASRec and DSSM are trained as in GRE-B (binary "
        "cross-entropy, uniform negatives); HSTU with this project's sampled softmax, the stronger training.",
    ]
    for dataset in dict.fromkeys(row["dataset"] for row in rows):
        subset = [row for row in rows if row["dataset"] == dataset]
        models = [m for m in RETRIEVAL_MODELS + RANKING_MODELS if any(r["model"] == m for r in subset)]
        columns = [
            (model, key, f"{MODEL_TITLES[model]} {title}", higher)
            for model in models
            for key, title, higher in _metrics_of(model)
        ]
        lines += ["", f"## {dataset}", ""] + _table(subset, columns)
        if any(r.get("has_categories") is False for r in subset):
            lines += ["", "This dataset has no item categories: DIN and DeepFM run without that field."]
        group_columns = [
            (model, f"{group}/{GROUP_METRIC}", f"{MODEL_TITLES[model]} {group}", True)
            for model in models
            if model in RETRIEVAL_MODELS
            for group in (*POPULARITY_GROUPS, COLD_ITEMS)
            if any(f"{group}/{GROUP_METRIC}" in r for r in subset if r["model"] == model)
        ]
        if group_columns:
            lines += [
                "",
                f"NDCG@10 by test target: popularity group (head / torso / tail by training frequency) "
                f"and items held out of training ({COLD_ITEMS}). Id-only models cannot rank cold items "
                "above chance.",
                "",
            ] + _table(subset, group_columns)
    return "\n".join(lines) + "\n"


def write_greb_tables(records: Iterable[Dict[str, Any]], output_dir: os.PathLike) -> Tuple[Path, Path]:
    """Writes ``greb.csv`` and ``greb.md`` to ``output_dir``; returns their paths."""
    rows = summarize(records)
    if not rows:
        raise ValueError("no GRE-B results to tabulate")
    output_dir = Path(output_dir)
    csv_path, md_path = output_dir / "greb.csv", output_dir / "greb.md"
    atomic_write_text(csv_path, csv_text(rows))
    atomic_write_text(md_path, markdown_text(rows))
    return csv_path, md_path
