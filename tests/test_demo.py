"""The demo end to end, on a tiny stand-in for MovieLens-100K: the comparison table, then one user's recommendations."""

import json

import gin
import numpy as np
import pandas as pd

from generative_recommenders import Recommender, demo
from generative_recommenders.data.sequence_format import write_sequence_dataset
from generative_recommenders.text.embedding_store import compute_item_text_embeddings, write_item_texts
from test_train import _HashEncoder


class _MiniLMStandIn(_HashEncoder):
    name = cache_key = "minilm"


def _tiny_movielens(root):
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"m{int(rng.integers(30))}", 4.0, 100 * step) for u in range(48) for step in range(8)]
    data_dir = root / "ml100k"
    write_sequence_dataset(data_dir, pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]))
    texts = [f"movie {name}" for name in json.loads((data_dir / "data_maps.json").read_text())["id2item"]]
    write_item_texts(data_dir, texts)
    compute_item_text_embeddings(texts, _MiniLMStandIn(), data_dir, root / "cache")


def test_demo_trains_the_three_models_and_ends_with_their_table(tmp_path, capsys):
    _tiny_movielens(tmp_path / "data")
    try:
        demo.main(["--epochs", "1", "--seeds", "7", "--data_root", str(tmp_path / "data"),
                   "--output_root", str(tmp_path / "exps")])
    finally:
        gin.clear_config()
    out = capsys.readouterr().out
    table = out[out.index("== ml100k"):out.index("NDCG@10 / HR@10 by test target")].splitlines()
    groups = out[out.index("NDCG@10 / HR@10 by test target"):out.index("User u0's last five films")]
    assert "| model | head | torso | tail |" in groups and "| HSTU + minilm |" in groups
    rows = [line for line in table if line and not line.startswith(("==", "(", " ", "wrote "))]
    assert [line.split("  ")[0] for line in rows] == ["model", "SASRec", "HSTU", "HSTU + minilm"]

    def best_test_metrics(config):
        path = tmp_path / "exps" / "ml100k" / f"demo-{config}-s7" / "results.json"
        return json.loads(path.read_text())["best"]["test"]

    sasrec = best_test_metrics("sasrec-sampled-softmax-n128-final")
    hstu = best_test_metrics("hstu-sampled-softmax-n128-final")
    text = best_test_metrics("hstu-sampled-softmax-n128-minilm")
    assert rows[3].split()[4] == f"{text['hr@10']:.4f}"  # one seed: the mean alone
    change_line = table[table.index(rows[3]) + 1].split()
    # HR@10's second line: % change over HSTU / over SASRec.
    assert change_line[:3] == [
        f"{100 * (text['hr@10'] / hstu['hr@10'] - 1):+.1f}%", "/", f"{100 * (text['hr@10'] / sasrec['hr@10'] - 1):+.1f}%"
    ]
    for name in ("comparison.md", "comparison.csv", "comparison_metrics.png", "comparison_curves.png"):
        assert (tmp_path / "exps" / "ml100k" / name).stat().st_size > 0

    # Then the first user's last five films and the best run's top 10, with titles.
    runs = [tmp_path / "exps" / "ml100k" / f"demo-{c}-s7" for c in (
        "sasrec-sampled-softmax-n128-final", "hstu-sampled-softmax-n128-final", "hstu-sampled-softmax-n128-minilm")]
    best = max(runs, key=lambda run: json.loads((run / "results.json").read_text())["best"]["valid"]["ndcg@10"])
    maps = json.loads((tmp_path / "data" / "ml100k" / "data_maps.json").read_text())
    history = pd.read_csv(tmp_path / "data" / "ml100k" / "sasrec_format.csv")["sequence_item_ids"][0]
    last_five = [maps["id2item"][int(i)] for i in history.split(",")[-5:]]
    ending = out[out.index("User u0's last five films"):].splitlines()
    assert [line.split() for line in ending[1:6]] == [[item, "movie", item] for item in last_five]
    assert ending[7] == f"Top 10 for user u0 from {best} (best validation NDCG@10 of the demo's runs):"
    expected = Recommender.from_run(best).recommend("u0", k=10)
    assert [line.split()[1] for line in ending[9:19]] == expected["item_id"].tolist() and len(ending) == 19
