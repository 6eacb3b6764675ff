"""The GRE-B tables from hand-made results records."""

import csv

import pytest

from generative_recommenders.reports.greb_tables import markdown_text, summarize, write_greb_tables


def retrieval(encoder, model, seed, ndcg, hr, tail=None, cold=None):
    record = {"dataset": "toy", "encoder": encoder, "model": model, "seed": seed, "num_items": 400,
              "title": model.upper(), "task": "retrieval",
              "test": {"ndcg@10": ndcg, "hr@10": hr, "mrr": 0.1}}
    if tail is not None:
        record["popularity_groups"] = {"head": {"ndcg@10": 0.5}, "torso": {"ndcg@10": 0.3},
                                       "tail": {"ndcg@10": tail}, "groups": {"rule": "..."}}
    if cold is not None:
        record["cold_items"] = {"cold_items": {"ndcg@10": cold, "hr@200": 2 * cold}, "groups": {"num_items": 3}}
    return record


def ranking(encoder, seed, auc, logloss):
    return {"dataset": "toy", "encoder": encoder, "model": "din", "seed": seed, "title": "DIN", "task": "ctr",
            "test": {"auc": auc, "logloss": logloss}, "has_categories": False}


RECORDS = [
    retrieval("none", "dssm", 1, 0.10, 0.20, tail=0.02, cold=0.0),
    retrieval("none", "dssm", 2, 0.12, 0.22, tail=0.04, cold=0.0),
    retrieval("minilm", "dssm", 1, 0.11, 0.26, tail=0.05, cold=0.03),
    retrieval("minilm", "dssm", 2, 0.13, 0.28, tail=0.07, cold=0.05),
    ranking("none", 1, 0.70, 0.60),
    ranking("minilm", 1, 0.77, 0.55),
]


def test_summary_rows_hold_means_and_stds_over_seeds():
    rows = summarize(RECORDS)
    assert [(r["encoder"], r["model"]) for r in rows] == [
        ("none", "dssm"), ("none", "din"), ("minilm", "dssm"), ("minilm", "din")
    ]
    dssm_text = rows[2]
    assert dssm_text["num_seeds"] == 2
    assert dssm_text["ndcg@10"] == pytest.approx(0.12) and dssm_text["ndcg@10_std"] == pytest.approx(0.0141421356)
    assert dssm_text["tail/ndcg@10"] == pytest.approx(0.06) and dssm_text["cold_items/ndcg@10"] == pytest.approx(0.04)
    assert rows[1]["auc"] == 0.70 and rows[1]["auc_std"] == 0.0 and rows[1]["has_categories"] is False


def test_markdown_marks_the_best_and_the_change_over_none():
    text = markdown_text(summarize(RECORDS))
    assert "| Encoder | DSSM NDCG@10 | DSSM Recall@10 | DIN AUC | DIN Logloss |" in text
    minilm = next(line for line in text.splitlines() if line.startswith("| minilm") and "AUC" not in line)
    # 0.12 vs 0.11: +9.1%; Recall 0.27 vs 0.21: +28.6%; AUC +10.0%; Logloss lower is better, -8.3%.
    assert "**0.1200 ± 0.0141 (+9.1%)**" in minilm and "**0.2700 ± 0.0141 (+28.6%)**" in minilm
    assert "**0.7700 (+10.0%)**" in minilm and "**0.5500 (-8.3%)**" in minilm
    assert "no item categories" in text
    ndcg_table, hr_table = text.split("NDCG@10 by test target")[1].split("HR@200 by test target")
    assert "| Encoder | DSSM head | DSSM torso | DSSM tail | DSSM cold_items |" in ndcg_table
    # Only the cold items have HR@200 in these records: 0.0 (none) and 2 x 0.04 = 0.08 (minilm).
    assert "| Encoder | DSSM cold_items |" in hr_table and "a random ranking's HR@200: about 200/400 = 0.500" in hr_table
    assert "| none | 0.0000 ± 0.0000 |" in hr_table and "| minilm | **0.0800 ± 0.0283** |" in hr_table
    # Both encoders at 0.5 on head: a tie marks no best.
    assert "| none | 0.5000 ± 0.0000 |" in ndcg_table and "| minilm | 0.5000 ± 0.0000 (+0.0%) |" in ndcg_table


def test_writes_csv_and_markdown(tmp_path):
    csv_path, md_path, png_path = write_greb_tables(RECORDS, tmp_path / "greb")
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 4 and {"ndcg@10", "hr@10", "auc", "logloss", "tail/ndcg@10"} <= set(rows[0])
    assert md_path.read_text().startswith("# GRE-B") and png_path.stat().st_size > 0
    with pytest.raises(ValueError, match="seed listed twice"):
        summarize(RECORDS + [ranking("none", 1, 0.5, 0.7)])
