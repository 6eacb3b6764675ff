"""The column-wide figures: panels, names, values, titles and their printed size."""

import struct

import pytest
from matplotlib.container import BarContainer

from generative_recommenders.reports import figures
from generative_recommenders.reports.greb_tables import plot_greb, summarize
from test_greb_tables import RECORDS


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header.startswith(b"\x89PNG\r\n\x1a\n")
    return struct.unpack(">II", header[16:24])


def test_a_figure_is_a_column_wide_at_300_dpi_with_its_vector_twins(tmp_path):
    panel = figures.Panel("HR@10", "test HR@10", ["SASRec", "HSTU"],
                          [figures.Series("test", [0.1, 0.2], [None, 0.01], ["C0", "C1"])])
    figure = figures.bar_figure([("toy", [panel, panel, panel])])
    written = figures.save_figures(figure, tmp_path / "toy")
    assert [p.name for p in written] == ["toy.png", "toy.svg", "toy.pdf"]
    width, height = _png_size(written[0])
    assert width == pytest.approx(8 / 2.54 * 300, abs=2)  # 8 cm at 300 dpi
    # Three panels in a grid of two columns: two rows, each as tall as its two bars need.
    rows = figure.subfigs[0].subfigs
    assert [sum(ax.get_visible() for ax in row.axes) for row in rows] == [2, 1]
    expected_inches = 2 * (2 * figures.BAR_INCHES + figures.PANEL_INCHES) + figures.TITLE_INCHES
    assert height == pytest.approx(expected_inches * 300, abs=2)
    assert b"<svg" in written[1].read_bytes()[:1000] and written[2].read_bytes().startswith(b"%PDF")
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_gre_b_figure_names_models_shows_values_and_titles_its_metric_and_encoders(tmp_path, monkeypatch):
    captured = []
    monkeypatch.setattr(figures, "save_figures", lambda figure, stem: captured.append((figure, stem)) or [])
    rows = summarize(RECORDS)
    plot_greb(rows, tmp_path / "greb.png")
    (figure, stem), = captured
    assert stem == tmp_path / "greb"
    (block,) = figure.subfigs
    assert block._suptitle.get_text().replace("\n", " ") == (
        "GRE-B on toy: test NDCG@10 and AUC by text encoder (none, minilm)"
    )
    retrieval, ranking = [ax for row in block.subfigs for ax in row.axes]
    assert [t.get_text() for t in retrieval.get_yticklabels()] == ["DSSM"]
    assert [t.get_text() for t in ranking.get_yticklabels()] == ["DIN"]
    assert (retrieval.get_title(), retrieval.get_xlabel()) == ("NDCG@10", "test NDCG@10")
    # One bar per encoder, its value beside it: the mean over seeds.
    by_encoder = {(r["encoder"], r["model"]): r for r in rows}
    bars = [c for c in retrieval.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["none", "minilm"]
    for bar, encoder in zip(bars, ("none", "minilm")):
        assert bar.patches[0].get_width() == pytest.approx(by_encoder[(encoder, "dssm")]["ndcg@10"])
    assert [t.get_text().strip() for t in retrieval.texts] == ["0.110", "0.120"]
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["none", "minilm"]
