from generative_recommenders.demo import results_table


def test_results_table_shows_percent_change_over_the_baseline():
    base = {"hr@10": 0.1, "hr@50": 0.2, "hr@200": 0.4, "ndcg@10": 0.05, "ndcg@200": 0.08, "mrr": 0.04}
    better = {k: v * 1.1 for k, v in base.items()}
    better["mrr"] = 0.03
    lines = results_table({"HSTU": base, "HSTU + text": better}, baseline="HSTU").splitlines()
    assert lines[0] == "| model | HR@10 | HR@50 | HR@200 | NDCG@10 | NDCG@200 | MRR |"
    assert lines[2] == "| HSTU | 0.1000 | 0.2000 | 0.4000 | 0.0500 | 0.0800 | 0.0400 |"
    assert lines[3].startswith("| HSTU + text | 0.1100 (+10.0%) | 0.2200 (+10.0%)")
    assert lines[3].endswith("| 0.0300 (-25.0%) |")
