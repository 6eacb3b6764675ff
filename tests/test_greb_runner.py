"""The GRE-B runner end to end on a tiny local dataset, and its one-line refusals."""

import csv
import json

import numpy as np
import pytest

from generative_recommenders.errors import UserError
from generative_recommenders.greb import main

RUN = ["--encoders", "none", "--seeds", "1", "--epochs", "1"]


@pytest.fixture
def local_dir(tmp_path):
    """60 users walking 30 items in order from a random start; genres make categories."""
    folder = tmp_path / "walks"
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id"]
    for user in range(60):
        start = int(rng.integers(30))
        lines += [f"u{user},i{(start + step) % 30}" for step in range(8)]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    items = [{"item_id": f"i{k}", "title": f"item {k}", "genres": [f"g{k % 3}"]} for k in range(30)]
    (folder / "items.jsonl").write_text("\n".join(json.dumps(item) for item in items) + "\n")
    return folder


def _argv(tmp_path, local_dir, *extra):
    return ["--local_dir", str(local_dir), "--data_root", str(tmp_path / "data"),
            "--output_dir", str(tmp_path / "greb"), *RUN, *extra]


def test_the_runner_trains_every_model_and_writes_the_table(tmp_path, local_dir):
    argv = _argv(tmp_path, local_dir, "--models", "dssm,din", "--gin_bindings", "train_fn.local_batch_size = 32",
                 "--cold_item_share", "0.1", "--epochs", "2", "--ctr_epochs", "1")
    assert main(argv) == 0
    rows = list(csv.DictReader((tmp_path / "greb" / "greb.csv").open()))
    assert [(r["dataset"], r["encoder"], r["model"], r["num_seeds"]) for r in rows] == [
        ("walks", "none", "dssm", "1"), ("walks", "none", "din", "1")]
    assert rows[1]["has_categories"] == "True" and float(rows[1]["auc"]) > 0
    assert float(rows[0]["seconds_per_epoch"]) > 0 and rows[0]["head/ndcg@10"] and rows[0]["cold_items/ndcg@10"]
    assert (rows[0]["epochs_trained"], rows[1]["epochs_trained"]) == ("2.0", "1.0") and rows[0]["tail/hr@200"]
    assert "cold_items/ndcg@10" not in rows[1] or not rows[1]["cold_items/ndcg@10"]  # DIN: no cold split
    text = (tmp_path / "greb" / "greb.md").read_text()
    assert "| Encoder | DSSM NDCG@10 | DSSM Recall@10 | DIN AUC | DIN Logloss |" in text and "Groups (" in text
    assert "HR@200 by test target" in text and "DSSM (none) " in text and " s × 2, DIN (none) " in text
    assert (tmp_path / "greb" / "greb.png").stat().st_size > 0
    finished = sorted(p.name for p in (tmp_path / "greb" / "runs" / "walks").iterdir())
    assert finished == ["din-none-s1", "dssm-none-s1"]
    assert main(argv) == 0  # finished runs are not trained again
    # Another invocation's table holds every finished run of the folder, not its own models alone.
    assert main(_argv(tmp_path, local_dir, "--models", "dssm", "--gin_bindings", "train_fn.local_batch_size = 32",
                      "--cold_item_share", "0.1", "--epochs", "2")) == 0
    rows = list(csv.DictReader((tmp_path / "greb" / "greb.csv").open()))
    assert [(r["model"], r["title"]) for r in rows] == [("dssm", "DSSM"), ("din", "DIN")]  # GRE-B's model order
    epochs = {name: len(json.loads((tmp_path / "greb" / "runs" / "walks" / name / "results.json").read_text())["epochs"])
              for name in finished}
    assert epochs == {"din-none-s1": 1, "dssm-none-s1": 2}
    # A run cut short (here: a finished one given a later epoch cap) goes on from its checkpoint.
    assert main([*argv, "--epochs", "3"]) == 0
    dssm = json.loads((tmp_path / "greb" / "runs" / "walks" / "dssm-none-s1" / "results.json").read_text())
    assert [e["epoch"] for e in dssm["epochs"]] == [0, 1, 2] and dssm["finished"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--models", "dssm,gru4rec"], "gru4rec is not a GRE-B model"),
        (["--models", "hstu"], "walks has 30 items, fewer than hstu's 512 negatives"),
        (["--models", "dssm", "--encoders", "none,hf:/no/such/model"],
         "Could not load the text encoder model '/no/such/model'"),
    ],
)
def test_bad_input_is_refused_before_anything_trains(tmp_path, local_dir, extra, message):
    with pytest.raises(Exception, match=message) as error:
        main(_argv(tmp_path, local_dir, *extra))
    assert isinstance(error.value, UserError)
    assert not (tmp_path / "greb").exists()


def test_finished_records_take_the_runners_folders_tuned_or_not(tmp_path):
    from generative_recommenders.greb import finished_records

    def write(folder, run_name, encoder=None, finished=True):
        path = tmp_path / "runs" / "walks" / folder
        path.mkdir(parents=True)
        results = {"config": {"run_name": run_name, "dataset_name": "walks", "random_seed": 1, "main_module": "DSSM"},
                   "text_embedding_model": encoder, "finished": finished, "task": "retrieval",
                   "best": {"test": {"ndcg@10": 0.5}}, "train_seconds": 4.0, "epochs_trained": 2,
                   "dataset": {"num_items": 30}}
        (path / "results.json").write_text(json.dumps(results))

    write("dssm-none-s1", "dssm-none")
    write("dssm-none-tuned-s1", "dssm-none-tuned")
    write("dssm-minilm-s1", "dssm-minilm", encoder="minilm")
    write("dssm-hf-x-s1", "dssm-hf-x", encoder="hf:x", finished=False)  # cut short
    write("mine-s1", "mine")  # not a folder the runner named
    plain = finished_records(tmp_path, ["dssm", "din"])
    assert [(r["model"], r["encoder"], r["title"], r["seconds_per_epoch"]) for r in plain] == [
        ("dssm", "none", "DSSM", 2.0), ("dssm", "minilm", "DSSM", 2.0)]
    assert [r["encoder"] for r in finished_records(tmp_path, ["dssm"], tuned=True)] == ["none"]
