"""The comparison table of finished runs, in the paper's layout.

    python3 -m generative_recommenders.compare exps/ml100k exps/amzn14_office/'hstu-*'

Arguments are run folders, their ``results.json``, folders searched for
them, or globs of any of these. Runs group into one table per dataset and
protocol (runs of different datasets or protocols never share a column; a
dataset seen under several protocols is pointed out), and into one row per
model variant (the run name, i.e. the run folder without ``-s<seed>``), whose
seeds must differ in nothing but the seed. A cell is the mean over seeds (±
the sample standard deviation when there are several) of the test metric the
protocol reports: at the best validation epoch (``validated``) or the last
full evaluation (``reference``). Its second line is the % change of the
mean over the HSTU and over the SASRec row (plain ids, no text); the best
mean of each column is marked.

Besides printing, it writes ``comparison.md``, ``comparison.csv``,
``comparison_metrics.png`` (a panel per metric and table, each on its own
scale) and ``comparison_curves.png`` (validation NDCG@10 over epochs), the
figures also as ``.svg``, to ``--output_dir`` (default: the folder holding all
the runs). Under each table, a second one gives NDCG@10 and HR@10 per
target-popularity group (head / torso / tail, boundaries below it) and on the
cold items of runs trained with ``train_fn.cold_item_share``. CTR runs (DIN,
DeepFM: AUC and Logloss) are left to the GRE-B table
(``python3 -m generative_recommenders.greb``). A variant keeps one colour in every panel; error bars and bands
are ± one sample standard deviation over the row's seeds, absent for one seed.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from generative_recommenders.reports import figures
from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.data.identity import check_runs_share_data
from generative_recommenders.errors import UserError
from generative_recommenders.logs import configure_logging, get_logger
from generative_recommenders.evaluation.metrics import DEFAULT_REPORTED
from generative_recommenders.evaluation.target_groups import COLD_ITEMS, POPULARITY_GROUPS
from generative_recommenders.trainer.run_log import RESULTS_FILE

logger = get_logger(__name__)

COLUMNS = DEFAULT_REPORTED
CURVE_METRIC = "ndcg@10"
BASELINES = ("HSTU", "SASRec")
GROUP_METRICS = ("ndcg@10", "hr@10")
# Config lines that may differ between the seeds of one row.
_PER_RUN_BINDINGS = re.compile(r"^train_fn\.(random_seed|output_root|data_root) = ")


class CompareError(UserError):
    """The runs cannot be compared as asked."""


@dataclass
class Run:
    folder: Path
    results: Dict[str, Any]

    @property
    def seed(self) -> int:
        return int(self.results["seed"])

    @property
    def run_name(self) -> str:
        suffix = f"-s{self.seed}"
        name = self.folder.name
        return name[: -len(suffix)] if name.endswith(suffix) else name

    @property
    def main_module(self) -> str:
        return self.results["model"].split("-", 1)[0]

    @property
    def test_metrics(self) -> Dict[str, float]:
        """What the protocol reports: test at the best validation epoch, or the last full test."""
        if self.results["protocol"] == "validated":
            return self.results["best"]["test"]
        return self.results["last"]

    def curve(self, split: str, metric: str) -> List[Tuple[int, float]]:
        return [
            (e["epoch"], e["metrics"][metric])
            for e in self.results["evaluations"]
            if e["split"] == split and e["full"]
        ]

    def comparable_config(self) -> List[str]:
        return [line for line in self.results["gin_config"].splitlines() if not _PER_RUN_BINDINGS.match(line)]


@dataclass
class Row:
    run_name: str
    runs: List[Run]
    mean: Dict[str, float]
    std: Dict[str, float]  # NaN with a single seed
    label: str = ""  # the variant's name in the table, set once the table's rows are known

    @property
    def seeds(self) -> List[int]:
        return sorted(run.seed for run in self.runs)

    @property
    def main_module(self) -> str:
        return self.runs[0].main_module

    @property
    def text_embedding_model(self) -> Optional[str]:
        return self.runs[0].results["text_embedding_model"]


@dataclass
class Table:
    dataset: Dict[str, Any]
    protocol: str
    selection_metric: Optional[str]
    rank_cap: Optional[int]
    rows: List[Row]
    baselines: Dict[str, Optional[Row]]  # "HSTU" / "SASRec" -> its row, if the table has one

    @property
    def eval_split(self) -> str:
        return "valid" if self.protocol == "validated" else "test"

    @property
    def title(self) -> str:
        d = self.dataset
        what = (
            f"validated protocol: test metrics at the best validation {self.selection_metric} epoch"
            if self.protocol == "validated"
            else "reference protocol: the last full test evaluation (no validation split)"
        )
        cap = "" if self.rank_cap is None else f", ranks capped at {self.rank_cap}"
        return (
            f"{d['name']} ({d['num_users']:,} users, {d['num_items']:,} items, "
            f"{d['num_interactions']:,} interactions) | {what}{cap}"
        )

    def change(self, row: Row, baseline: str, metric: str) -> Optional[float]:
        """% change of ``row``'s mean over the baseline's; None where undefined."""
        base = self.baselines[baseline]
        if base is None or base is row or base.mean[metric] == 0:
            return None
        return 100.0 * (row.mean[metric] / base.mean[metric] - 1.0)

    def is_best(self, row: Row, metric: str) -> bool:
        """The best mean of its column, in a table of several rows."""
        return len(self.rows) > 1 and row.mean[metric] == max(r.mean[metric] for r in self.rows)

    @property
    def shown_baselines(self) -> List[str]:
        """The baselines the % changes are given over; none in a table of one row."""
        return [b for b in BASELINES if self.baselines[b] is not None] if len(self.rows) > 1 else []


def _expand(arguments: Iterable[str]) -> List[Path]:
    """The ``results.json`` files the arguments name, each once."""
    files: Dict[Path, None] = {}
    for argument in arguments:
        matches = sorted(glob.glob(argument)) if any(c in argument for c in "*?[") else [argument]
        if not matches or not all(Path(m).exists() for m in matches):
            raise CompareError(f"{argument}: no such file or folder")
        for match in map(Path, matches):
            found = sorted(match.rglob(RESULTS_FILE)) if match.is_dir() else [match]
            for path in found:
                files[path.resolve()] = None
    if not files:
        raise CompareError(f"no {RESULTS_FILE} under {', '.join(arguments)}")
    return list(files)


def load_runs(arguments: Iterable[os.PathLike]) -> List[Run]:
    """The finished runs the arguments name; unfinished ones are skipped with a note on stderr."""
    runs = []
    for path in _expand([str(a) for a in arguments]):
        try:
            results = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CompareError(f"{path}: not a readable results file ({e})") from e
        if not isinstance(results, dict) or "protocol" not in results or "evaluations" not in results:
            raise CompareError(f"{path}: not a results file of this trainer")
        if not results.get("finished"):
            logger.warning("skipping %s: unfinished (no final test evaluation yet)", path.parent)
            continue
        if results.get("task") == "ctr":
            logger.warning("skipping %s: a CTR run (AUC/Logloss; the GRE-B table shows it)", path.parent)
            continue
        runs.append(Run(path.parent, results))
    if not runs:
        raise CompareError("none of the runs has finished")
    check_runs_share_data([(run.folder, run.results) for run in runs])  # data/identity.py
    return runs


def _table_key(run: Run) -> Tuple:
    r = run.results
    d = r["dataset"]
    selection = r["selection_metric"] if r["protocol"] == "validated" else None
    return (d["name"], d["num_users"], d["num_items"], d["num_interactions"], r["protocol"], selection, r["rank_cap"])


def _make_row(run_name: str, runs: List[Run]) -> Row:
    seeds = [run.seed for run in runs]
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        folders = ", ".join(str(r.folder) for r in runs if r.seed in dup)
        raise CompareError(f"{run_name}: seed(s) {dup} appear more than once ({folders})")
    reference = runs[0]
    for run in runs[1:]:
        if run.comparable_config() != reference.comparable_config():
            differing = sorted(set(run.comparable_config()) ^ set(reference.comparable_config()))
            raise CompareError(
                f"{run_name}: {reference.folder} and {run.folder} differ in more than the seed, "
                f"so they cannot be one row: {'; '.join(differing)}"
            )
    metrics = pd.DataFrame([run.test_metrics for run in runs])[list(COLUMNS)]
    return Row(run_name, runs, metrics.mean().to_dict(), metrics.std().to_dict())


def _variant_label(row: Row) -> str:
    text = row.text_embedding_model
    return row.main_module if text is None else f"{row.main_module} + {text}"


def _pick_baseline(rows: List[Row], module: str, chosen: Optional[str], table: str) -> Optional[Row]:
    candidates = [r for r in rows if r.main_module == module and r.text_embedding_model is None]
    if chosen is not None and any(r.run_name == chosen for r in candidates):
        return next(r for r in candidates if r.run_name == chosen)
    if len(candidates) > 1:
        names = ", ".join(r.run_name for r in candidates)
        raise CompareError(
            f"{table}: several {module} runs without text ({names}); "
            f"choose the baseline with --{module.lower()}_baseline NAME"
        )
    return candidates[0] if candidates else None


def build_tables(runs: Sequence[Run], baselines: Optional[Dict[str, str]] = None) -> List[Table]:
    """One table per dataset and protocol, rows ordered SASRec, HSTU, then the text variants."""
    baselines = baselines or {}
    by_table: Dict[Tuple, Dict[str, List[Run]]] = {}
    for run in runs:
        by_table.setdefault(_table_key(run), {}).setdefault(run.run_name, []).append(run)
    tables = []
    # By dataset; within one, the validated protocol first.
    for key in sorted(by_table, key=lambda k: (k[0], k[4] != "validated", str(k))):
        rows = [_make_row(name, group) for name, group in by_table[key].items()]
        labels = [_variant_label(r) for r in rows]
        for row, label in zip(rows, labels):
            row.label = label if labels.count(label) == 1 else f"{label} ({row.run_name})"
        rows.sort(key=lambda r: (r.main_module != "SASRec", r.text_embedding_model is not None, r.label))
        *_, protocol, selection_metric, rank_cap = key
        table = Table(
            dataset=rows[0].runs[0].results["dataset"],
            protocol=protocol,
            selection_metric=selection_metric,
            rank_cap=rank_cap,
            rows=rows,
            baselines={},
        )
        table.baselines = {m: _pick_baseline(rows, m, baselines.get(m), table.title) for m in BASELINES}
        tables.append(table)
    return tables


def _notes(tables: Sequence[Table]) -> List[str]:
    names = [t.dataset["name"] for t in tables]
    return [
        f"note: {name} appears in {names.count(name)} tables (different protocols or settings); "
        "their numbers are not comparable across tables"
        for name in sorted(set(names))
        if names.count(name) > 1
    ]


def _value_cell(row: Row, metric: str) -> str:
    cell = f"{row.mean[metric]:.4f}"
    if not np.isnan(row.std[metric]):
        cell += f" ± {row.std[metric]:.4f}"
    return cell


def _change_cell(table: Table, row: Row, metric: str) -> str:
    changes = [table.change(row, baseline, metric) for baseline in table.shown_baselines]
    return " / ".join("—" if change is None else f"{change:+.1f}%" for change in changes)


def _legend(table: Table, best_mark: str) -> str:
    parts = ["mean ± std over seeds"]
    if table.shown_baselines:
        parts.append(f"second line: % change over {' / over '.join(table.shown_baselines)}")
    if len(table.rows) > 1:
        parts.append(f"{best_mark} best in column")
    return "; ".join(parts)


def _group_means(row: Row) -> Dict[str, Dict[str, float]]:
    """``{group: {metric: mean over the row's seeds}}`` of the groups its runs report."""
    means: Dict[str, Dict[str, float]] = {}
    for group in (*POPULARITY_GROUPS, COLD_ITEMS):
        reported = [
            groups[group]
            for run in row.runs
            for groups in (run.results.get("popularity_groups", {}), run.results.get(COLD_ITEMS, {}))
            if GROUP_METRICS[0] in groups.get(group, {})
        ]
        if reported:
            means[group] = {m: float(np.mean([r[m] for r in reported])) for m in GROUP_METRICS}
    return means


def group_table(table: Table) -> List[str]:
    """Markdown lines: NDCG@10 / HR@10 per test-target group and row; the boundaries below."""
    means = {row.label: _group_means(row) for row in table.rows}
    groups = [g for g in (*POPULARITY_GROUPS, COLD_ITEMS) if any(g in m for m in means.values())]
    if not groups:
        return []
    lines = [
        "",
        "NDCG@10 / HR@10 by test target (mean over seeds):",
        "",
        "| model | " + " | ".join(groups) + " |",
        "|---" * (len(groups) + 1) + "|",
    ]
    for label, by_group in means.items():
        cells = [
            " / ".join(f"{by_group[g][m]:.4f}" for m in GROUP_METRICS) if g in by_group else "—" for g in groups
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    described = next(
        (run.results["popularity_groups"]["groups"] for row in table.rows for run in row.runs
         if "popularity_groups" in run.results), None,
    )
    if described is not None:
        bounds = "; ".join(
            f"{g} {described[g]['num_items']} items with {described[g]['min_count']}-{described[g]['max_count']} "
            "training interactions" for g in POPULARITY_GROUPS
        )
        lines += ["", f"Groups: {described['rule']} ({bounds})."]
    cold = next((run.results.get("cold_item_split") for row in table.rows for run in row.runs
                 if run.results.get("cold_item_split")), None)
    if cold is not None:
        lines.append(
            f"{COLD_ITEMS}: {cold['num_cold_items']} items held out of training; their "
            f"{cold['num_cold_users']} test users are ranked over the full catalogue."
        )
    return lines


def format_text(tables: Sequence[Table]) -> str:
    """Fixed-width tables for a terminal."""
    blocks = []
    for table in tables:
        header = ["model", "seeds"] + [c.upper() for c in COLUMNS]
        lines = [header]
        for row in table.rows:
            values = [_value_cell(row, m) + (" *" if table.is_best(row, m) else "") for m in COLUMNS]
            lines.append([row.label, ",".join(map(str, row.seeds))] + values)
            if table.shown_baselines:
                lines.append(["", ""] + [_change_cell(table, row, m) for m in COLUMNS])
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        body = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
        blocks.append("\n".join([f"== {table.title} ==", f"({_legend(table, '*')})", "", *body, *group_table(table)]))
    return "\n\n".join(blocks + _notes(tables))


def format_markdown(tables: Sequence[Table]) -> str:
    blocks = []
    for table in tables:
        lines = [
            f"### {table.title}",
            "",
            f"{_legend(table, '**bold**:')}.",
            "",
            "| model | seeds | " + " | ".join(c.upper() for c in COLUMNS) + " |",
            "|---" * (len(COLUMNS) + 2) + "|",
        ]
        for row in table.rows:
            cells = []
            for m in COLUMNS:
                value = _value_cell(row, m)
                cell = f"**{value}**" if table.is_best(row, m) else value
                change = _change_cell(table, row, m)
                cells.append(f"{cell}<br>{change}" if change else cell)
            lines.append(f"| {row.label} | {','.join(map(str, row.seeds))} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines + group_table(table)))
    return "\n\n".join(blocks + _notes(tables)) + "\n"


def to_frame(tables: Sequence[Table]) -> pd.DataFrame:
    """One line per table row: means, stds, % changes and best flags, at full precision."""
    records = []
    for table in tables:
        for row in table.rows:
            record: Dict[str, Any] = {
                "dataset": table.dataset["name"],
                "protocol": table.protocol,
                "selection_metric": table.selection_metric,
                "rank_cap": table.rank_cap,
                "model": row.label,
                "run_name": row.run_name,
                "seeds": " ".join(map(str, row.seeds)),
            }
            for m in COLUMNS:
                record[f"{m}_mean"] = row.mean[m]
                record[f"{m}_std"] = row.std[m]
                for baseline in BASELINES:
                    record[f"{m}_vs_{baseline.lower()}_pct"] = table.change(row, baseline, m)
                record[f"{m}_best"] = table.is_best(row, m)
            records.append(record)
    return pd.DataFrame.from_records(records)


FIGURE_FORMATS = figures.FORMATS
_METRIC_NAMES = {"hr": "HR", "ndcg": "NDCG", "mrr": "MRR"}


def metric_label(metric: str) -> str:
    """``ndcg@10`` -> ``NDCG@10``."""
    name, _, k = metric.partition("@")
    return _METRIC_NAMES.get(name, name.upper()) + (f"@{k}" if k else "")


def variant_colours(tables: Sequence[Table]) -> Dict[str, Any]:
    """One colour per variant label, the same in every panel of every figure."""
    from matplotlib import colormaps

    labels = list(dict.fromkeys(row.label for table in tables for row in table.rows))
    palette = colormaps["tab10"].colors
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _legend_label(row: Row) -> str:
    return f"{row.label} ({len(row.runs)} seed{'s' if len(row.runs) > 1 else ''})"


def _spread_note(table: Table, what: str) -> str:
    seeds = sorted({len(row.runs) for row in table.rows})
    if seeds == [1]:
        return "one seed each: no " + what
    counts = "/".join(str(n) for n in seeds if n > 1)
    return f"{what}: ± sample std over {counts} seeds" + (", none for a single seed" if 1 in seeds else "")


def plot_metrics(tables: Sequence[Table], path: Path) -> None:
    """Each variant's reported metrics, a column wide (``figures.py``): a block per table, a panel
    per metric on its own scale, the variants named on the axis with their values; error bars
    are the seeds' sample std, absent for one seed."""
    colours = variant_colours(tables)
    blocks = []
    for table in tables:
        names = [_legend_label(row) for row in table.rows]
        panels = [
            figures.Panel(metric_label(metric), f"test {metric_label(metric)}", names, [figures.Series(
                "test", [row.mean[metric] for row in table.rows],
                [None if len(row.runs) == 1 else row.std[metric] for row in table.rows],
                [colours[row.label] for row in table.rows],
            )])
            for metric in COLUMNS
        ]
        blocks.append((f"{table.dataset['name']}, {table.protocol} protocol ({_spread_note(table, 'error bars')})", panels))
    _save_figure(figures.bar_figure(blocks), path)


def plot_curves(tables: Sequence[Table], path: Path, metric: str = CURVE_METRIC) -> None:
    """The metric over epochs on the split evaluated during training (mean, ± std band over seeds)."""
    colours = variant_colours(tables)
    figure = Figure(figsize=(figures.COLUMN_WIDTH_INCHES, 2.4 * len(tables)), layout="constrained")
    for ax, table in zip(figure.subplots(len(tables), 1, squeeze=False)[:, 0], tables):
        for row in table.rows:
            points = pd.DataFrame(
                [point for run in row.runs for point in run.curve(table.eval_split, metric)],
                columns=["epoch", "value"],
            )
            stats = points.groupby("epoch")["value"].agg(["mean", "std"])
            colour = colours[row.label]
            ax.plot(stats.index, stats["mean"], marker=".", color=colour, label=_legend_label(row))
            if len(row.runs) > 1:
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colour, alpha=0.2, linewidth=0)
        split = "validation" if table.protocol == "validated" else "test (reference protocol: no validation split)"
        title = f"{table.dataset['name']}: {split} {metric_label(metric)} ({_spread_note(table, 'bands')})"
        ax.set_title("\n".join(textwrap.wrap(title, figures.TITLE_WIDTH)), fontsize=figures.FONT_SIZE)
        ax.set_xlabel("epoch", fontsize=figures.FONT_SIZE)
        ax.set_ylabel(f"{'validation' if table.protocol == 'validated' else 'test'} {metric_label(metric)}",
                      fontsize=figures.FONT_SIZE)
        ax.tick_params(labelsize=figures.SMALL_FONT_SIZE)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=figures.SMALL_FONT_SIZE, frameon=False)
    _save_figure(figure, path)


def _save_figure(figure: Figure, path: Path) -> None:
    figures.save_figure(figure, path)


def write_outputs(tables: Sequence[Table], output_dir: Path) -> List[Path]:
    """Writes the tables (.md, .csv) and the figures (each as .png, .svg and .pdf); returns the paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "comparison.md", output_dir / "comparison.csv"]
    atomic_write_text(paths[0], format_markdown(tables))
    atomic_write_text(paths[1], to_frame(tables).to_csv(index=False))
    for name, plot in (("comparison_metrics", plot_metrics), ("comparison_curves", plot_curves)):
        for suffix in FIGURE_FORMATS:
            paths.append(output_dir / f"{name}{suffix}")
            plot(tables, paths[-1])
    return paths


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m generative_recommenders.compare", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", help="run folders, results.json files, folders holding them, or globs")
    parser.add_argument("--output_dir", help="where the .md, .csv and .png go (default: the runs' common folder)")
    parser.add_argument("--hstu_baseline", help="the HSTU row's run name, where several HSTU runs qualify")
    parser.add_argument("--sasrec_baseline", help="the SASRec row's run name, where several SASRec runs qualify")
    args = parser.parse_args(argv)
    configure_logging()
    runs = load_runs(args.runs)
    tables = build_tables(runs, {"HSTU": args.hstu_baseline, "SASRec": args.sasrec_baseline})
    print(format_text(tables))
    output_dir = Path(args.output_dir or os.path.commonpath([str(run.folder.parent) for run in runs]))
    for path in write_outputs(tables, output_dir):
        print(f"wrote {path}")
    return 0
