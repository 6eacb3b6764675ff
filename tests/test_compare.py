"""The comparison table tool on hand-written results.json files."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.container import BarContainer

from generative_recommenders.reports import compare

REPO = Path(__file__).resolve().parents[1]
from generative_recommenders.reports.compare import CompareError, build_tables, format_markdown, format_text, load_runs, to_frame


def _metrics(hr10: float, mrr: float) -> dict:
    return {"hr@1": hr10 / 4, "hr@10": hr10, "hr@50": 2 * hr10, "hr@100": 3 * hr10, "hr@200": 4 * hr10,
            "ndcg@10": hr10 / 2, "ndcg@50": hr10 * 0.7, "ndcg@200": hr10 * 0.8, "mrr": mrr}


def _write_run(root, run_name, seed, hr10, mrr=None, dataset="office", protocol="validated", module="HSTU",
               text=None, config="", finished=True):
    metrics = _metrics(hr10, hr10 / 3 if mrr is None else mrr)
    split = "valid" if protocol == "validated" else "test"
    curve = [{"epoch": e, "split": split, "full": True, "users": 100, "metrics": _metrics(hr10 * (e + 1) / 3, 0.1)}
             for e in range(3)]
    results = {
        "dataset": {"name": dataset, "num_users": 100, "num_items": 50, "num_interactions": 1000},
        "model": f"{module}-b2-h1-id50" + ("" if text is None else "-text8-add-linear"),
        "protocol": protocol,
        "text_embedding_model": text,
        "seed": seed,
        "selection_metric": "ndcg@10",
        "rank_cap": None,
        "gin_config": f'train_fn.main_module = "{module}"\ntrain_fn.random_seed = {seed}\n{config}',
        "epochs": [{"epoch": e, "train_loss": 1.0} for e in range(3)],
        "evaluations": curve,
    }
    if finished:
        results["best"] = {"epoch": 2, "valid": curve[-1]["metrics"], "test": metrics} if split == "valid" else None
        results["last"] = metrics
        results["finished"] = True
    folder = root / dataset / f"{run_name}-s{seed}"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def office(tmp_path):
    """SASRec, HSTU and HSTU + text, two seeds each; HSTU has the best MRR, the text variant the best HR@10."""
    for seed, (sasrec, hstu, text) in zip((1, 2), [(0.08, 0.10, 0.13), (0.10, 0.12, 0.15)]):
        _write_run(tmp_path, "sasrec", seed, sasrec, module="SASRec")
        _write_run(tmp_path, "hstu", seed, hstu, mrr=0.09)
        _write_run(tmp_path, "hstu-blair", seed, text, mrr=0.05 + 0.01 * (seed - 1), text="blair")
    return tmp_path


def _cells(line: str):
    return re.split(r"\s{2,}", line.strip())


def test_text_table_has_means_stds_changes_and_best_marks(office):
    lines = format_text(build_tables(load_runs([office]))).splitlines()
    assert lines[0] == (
        "== office (100 users, 50 items, 1,000 interactions) | validated protocol: "
        "test metrics at the best validation ndcg@10 epoch =="
    )
    assert lines[1] == "(mean ± std over seeds; second line: % change over HSTU / over SASRec; * best in column)"
    assert _cells(lines[3]) == ["model", "seeds", "HR@10", "HR@50", "HR@200", "NDCG@10", "NDCG@200", "MRR"]
    sasrec, sasrec_change, hstu, hstu_change, text, text_change = lines[4:10]
    # HR@10: means .09 / .11 / .14, sample std of two values .02 apart = .0141.
    assert _cells(sasrec)[:3] == ["SASRec", "1,2", "0.0900 ± 0.0141"]
    assert _cells(hstu)[:3] == ["HSTU", "1,2", "0.1100 ± 0.0141"]
    assert _cells(text)[:3] == ["HSTU + blair", "1,2", "0.1400 ± 0.0141 *"]
    assert _cells(sasrec_change)[0] == "-18.2% / —"  # .09 / .11 - 1
    assert _cells(hstu_change)[0] == "— / +22.2%"  # .11 / .09 - 1
    assert _cells(text_change)[0] == "+27.3% / +55.6%"  # .14 / .11 - 1, .14 / .09 - 1
    # MRR: SASRec .03 ± .0047, HSTU .09 ± 0 (the best), text .055 ± .0071.
    assert _cells(sasrec)[-1] == "0.0300 ± 0.0047"
    assert _cells(hstu)[-1] == "0.0900 ± 0.0000 *"
    assert _cells(text)[-1] == "0.0550 ± 0.0071"
    assert _cells(hstu_change)[-1] == "— / +200.0%"
    assert _cells(text_change)[-1] == "-38.9% / +83.3%"


def test_markdown_and_csv_hold_the_same_numbers(office):
    tables = build_tables(load_runs([office]))
    markdown = format_markdown(tables).splitlines()
    assert markdown[4] == "| model | seeds | HR@10 | HR@50 | HR@200 | NDCG@10 | NDCG@200 | MRR |"
    hstu = markdown[7].split(" | ")
    assert hstu[:3] == ["| HSTU", "1,2", "0.1100 ± 0.0141<br>— / +22.2%"]
    assert hstu[-1] == "**0.0900 ± 0.0000**<br>— / +200.0% |"
    frame = to_frame(tables).set_index("model")
    assert list(frame.index) == ["SASRec", "HSTU", "HSTU + blair"]
    assert frame.loc["HSTU + blair", "hr@10_mean"] == pytest.approx(0.14)
    assert frame.loc["HSTU + blair", "hr@10_std"] == pytest.approx(0.02 / 2**0.5)
    assert frame.loc["HSTU + blair", "hr@10_vs_hstu_pct"] == pytest.approx(100 * (0.14 / 0.11 - 1))
    assert frame.loc["HSTU + blair", "mrr_vs_sasrec_pct"] == pytest.approx(100 * (0.055 / 0.03 - 1))
    assert pd.isna(frame.loc["HSTU", "hr@10_vs_hstu_pct"])
    assert frame["mrr_best"].tolist() == [False, True, False]
    assert frame.loc["SASRec", "seeds"] == "1 2" and frame.loc["SASRec", "run_name"] == "sasrec"


def test_protocols_and_datasets_never_share_a_column(office):
    _write_run(office, "hstu-ref", 1, 0.2, protocol="reference")
    _write_run(office, "hstu", 1, 0.3, dataset="ml")
    text = format_text(build_tables(load_runs([office])))
    titles = [line for line in text.splitlines() if line.startswith("==")]
    assert [t.split(" | ")[1] for t in titles] == [
        "validated protocol: test metrics at the best validation ndcg@10 epoch ==",
        "validated protocol: test metrics at the best validation ndcg@10 epoch ==",
        "reference protocol: the last full test evaluation (no validation split) ==",
    ]
    assert [t.split(" (")[0] for t in titles] == ["== ml", "== office", "== office"]
    assert text.splitlines()[-1] == (
        "note: office appears in 2 tables (different protocols or settings); their numbers are not comparable "
        "across tables"
    )
    # A table of one row and one seed: no std, no % changes, no best marks.
    reference = text[text.index("reference protocol"):].splitlines()
    assert reference[1] == "(mean ± std over seeds)"
    assert _cells(reference[4]) == ["HSTU", "1", "0.2000", "0.4000", "0.8000", "0.1000", "0.1600", "0.0667"]
    assert reference[5] == ""


def test_seeds_of_a_row_must_differ_in_nothing_but_the_seed(tmp_path):
    _write_run(tmp_path, "hstu", 1, 0.1, config="train_fn.learning_rate = 0.001")
    _write_run(tmp_path, "hstu", 2, 0.1, config="train_fn.learning_rate = 0.01")
    with pytest.raises(CompareError, match=r"hstu: .*hstu-s1 and .*hstu-s2 differ in more than the seed.*"
                                           r"train_fn.learning_rate = 0.001; train_fn.learning_rate = 0.01"):
        build_tables(load_runs([tmp_path]))


def test_a_seed_twice_in_a_row_is_refused(tmp_path):
    _write_run(tmp_path / "a", "hstu", 1, 0.1)
    _write_run(tmp_path / "b", "hstu", 1, 0.1)
    with pytest.raises(CompareError, match=r"hstu: seed\(s\) \[1\] appear more than once"):
        build_tables(load_runs([tmp_path / "a", tmp_path / "b"]))


def test_unfinished_runs_are_skipped_and_said_so(tmp_path, capsys):
    compare.configure_logging()  # the project's messages go to stdout
    _write_run(tmp_path, "hstu", 1, 0.1)
    unfinished = _write_run(tmp_path, "hstu", 2, 0.5, finished=False)
    runs = load_runs([tmp_path])
    assert [r.seed for r in runs] == [1]
    assert f"skipping {unfinished}: unfinished" in capsys.readouterr().out
    with pytest.raises(CompareError, match="none of the runs has finished"):
        load_runs([unfinished])


def test_several_hstu_baselines_must_be_chosen(tmp_path):
    _write_run(tmp_path, "hstu-small", 1, 0.1)
    _write_run(tmp_path, "hstu-large", 1, 0.2)
    with pytest.raises(CompareError, match="several HSTU runs without text .* --hstu_baseline NAME"):
        build_tables(load_runs([tmp_path]))
    (table,) = build_tables(load_runs([tmp_path]), {"HSTU": "hstu-small"})
    large = next(row for row in table.rows if row.run_name == "hstu-large")
    assert large.label == "HSTU (hstu-large)"  # the same variant twice: the run names tell them apart
    assert table.change(large, "HSTU", "hr@10") == pytest.approx(100.0)


def test_bad_arguments_are_clear_errors(tmp_path):
    with pytest.raises(CompareError, match=f"{tmp_path / 'nothing'}: no such file or folder"):
        load_runs([tmp_path / "nothing"])
    with pytest.raises(CompareError, match="no results.json under"):
        load_runs([tmp_path])
    broken = tmp_path / "office" / "hstu-s1" / "results.json"
    broken.parent.mkdir(parents=True)
    broken.write_text("{")
    with pytest.raises(CompareError, match=f"{broken}: not a readable results file"):
        load_runs([tmp_path])


def test_command_line_takes_globs_and_writes_markdown_csv_and_figures(office, capsys):
    compare.main([str(office / "office" / "hstu*"), str(office / "office" / "sasrec-s1")])
    out = capsys.readouterr().out
    assert "HSTU + blair" in out and f"wrote {office / 'office' / 'comparison.md'}" in out
    assert [line.split("  ")[0] for line in out.splitlines()[4:9:2]] == ["SASRec", "HSTU", "HSTU + blair"]
    written = office / "office"
    assert (written / "comparison.md").read_text() == format_markdown(
        build_tables(load_runs([written / "hstu-s1", written / "hstu-s2", written / "hstu-blair-s1",
                                written / "hstu-blair-s2", written / "sasrec-s1"]))
    )
    assert len(pd.read_csv(written / "comparison.csv")) == 3
    for figure in ("comparison_metrics", "comparison_curves"):
        content = (written / f"{figure}.png").read_bytes()
        assert content.startswith(b"\x89PNG\r\n\x1a\n") and len(content) > 5000
        assert b"<svg" in (written / f"{figure}.svg").read_bytes()[:1000]
        assert (written / f"{figure}.pdf").read_bytes().startswith(b"%PDF")
    assert not list(written.glob(".*.tmp"))


@pytest.mark.parametrize("problem", ["no runs", "output_dir is a file"])
def test_command_line_errors_are_one_line_and_exit_1(office, tmp_path, problem):
    if problem == "no runs":
        (tmp_path / "empty").mkdir()
        argv, expected = [str(tmp_path / "empty")], f"compare: no results.json under {tmp_path / 'empty'}"
    else:
        (tmp_path / "taken").write_text("a file")
        argv = [str(office / "office" / "hstu-s1"), "--output_dir", str(tmp_path / "taken")]
        expected = f"compare: {tmp_path / 'taken'}"
    proc = subprocess.run([sys.executable, "-m", "generative_recommenders.compare", *argv],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.startswith(expected), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def _captured_figure(monkeypatch, plot, tables, tmp_path):
    figures = []
    monkeypatch.setattr(compare, "_save_figure", lambda figure, path: figures.append(figure))
    plot(tables, tmp_path / "figure.png")
    return figures[0]


def test_metric_figure_has_a_panel_per_metric_one_colour_per_model_and_honest_error_bars(
    office, tmp_path, monkeypatch
):
    _write_run(office, "hstu", 1, 0.2, dataset="movies", protocol="reference")
    _write_run(office, "sasrec", 1, 0.15, dataset="movies", protocol="reference", module="SASRec")
    tables = build_tables(load_runs([office]))
    figure = _captured_figure(monkeypatch, compare.plot_metrics, tables, tmp_path)
    blocks = [[ax for row in block.subfigs for ax in row.axes if ax.get_visible()] for block in figure.subfigs]
    panels = [ax for block in blocks for ax in block]
    assert len(panels) == 2 * len(compare.COLUMNS)
    assert [ax.get_title() for ax in panels[:6]] == ["HR@10", "HR@50", "HR@200", "NDCG@10", "NDCG@200", "MRR"]
    assert panels[3].get_xlabel() == "test NDCG@10"
    colours = {}
    for table, block in zip(tables, blocks):
        names = [f"{row.label} ({len(row.runs)} seed{'s' if len(row.runs) > 1 else ''})" for row in table.rows]
        for column, (ax, metric) in enumerate(zip(block, compare.COLUMNS)):
            # The variants named on the axis (first on top) in the left column, each bar's value beside it.
            shown = [label.get_text() for label in ax.get_yticklabels()]
            assert shown == (list(reversed(names)) if column % 2 == 0 else [""] * len(names))
            assert [t.get_text().strip() for t in ax.texts] == [f"{row.mean[metric]:.3f}" for row in table.rows]
            (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
            assert len(bars.patches) == len(table.rows)
            for row, bar in zip(table.rows, bars.patches):
                assert bar.get_width() == pytest.approx(row.mean[metric])
                colours.setdefault(row.label, bar.get_facecolor())
                assert bar.get_facecolor() == colours[row.label]  # one colour everywhere
            # Error bars: the sample std over the seeds, none for a single seed.
            if all(len(row.runs) == 1 for row in table.rows):
                assert bars.errorbar is None
            else:
                segments = bars.errorbar.lines[2][0].get_segments()
                for row, segment in zip(table.rows, segments):
                    assert segment[1][0] - segment[0][0] == pytest.approx(2 * row.std[metric])
            # Each panel on its own scale: the small metrics fill theirs.
            assert ax.get_xlim()[1] < 1.3 * max(row.mean[metric] + (row.std[metric] if len(row.runs) > 1 else 0)
                                                for row in table.rows)
    assert len(set(colours.values())) == 3
    titles = [block._suptitle.get_text().replace("\n", " ") for block in figure.subfigs]
    assert titles == ["movies, reference protocol (one seed each: no error bars)",
                      "office, validated protocol (error bars: ± sample std over 2 seeds)"]


def test_curve_figure_labels_its_axes_and_has_no_band_for_one_seed(office, tmp_path, monkeypatch):
    _write_run(office, "hstu", 1, 0.2, dataset="movies", protocol="reference")
    tables = build_tables(load_runs([office]))
    figure = _captured_figure(monkeypatch, compare.plot_curves, tables, tmp_path)
    one_seed, seeds = figure.axes
    assert (one_seed.get_xlabel(), one_seed.get_ylabel()) == ("epoch", "test NDCG@10")
    assert (seeds.get_xlabel(), seeds.get_ylabel()) == ("epoch", "validation NDCG@10")
    assert len(one_seed.collections) == 0 and len(seeds.collections) == 3  # a band per multi-seed row
    colour = {line.get_label(): line.get_color() for ax in figure.axes for line in ax.lines}
    assert colour["HSTU (1 seed)"] == colour["HSTU (2 seeds)"]
