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


def test_an_encoder_per_seed_trains_each_seed_and_is_one_row_of_the_tables(tmp_path):
    from generative_recommenders.greb import encoder_for_seed, finished_records, parse_args, run_bindings

    args = parse_args(["--dataset", "walks", "--models", "dssm", "--seeds", "1,2", "--output_dir", str(tmp_path),
                       "--encoders", "none,hf:gre/walks-s{seed}"])
    assert encoder_for_seed("hf:gre/walks-s{seed}", 2) == "hf:gre/walks-s2" and encoder_for_seed("minilm", 2) == "minilm"
    bindings = run_bindings(args, "walks", "hf:gre/walks-s{seed}", "dssm", 2)
    assert 'train_fn.text_embedding_model = "hf:gre/walks-s2"' in bindings
    assert 'train_fn.run_name = "dssm-hf-gre-walks-s2"' in bindings and "train_fn.random_seed = 2" in bindings
    for seed, ndcg in ((1, 0.25), (2, 0.75)):
        path = tmp_path / "runs" / "walks" / f"dssm-hf-gre-walks-s{seed}-s{seed}"
        path.mkdir(parents=True)
        results = {"config": {"run_name": f"dssm-hf-gre-walks-s{seed}", "dataset_name": "walks", "random_seed": seed,
                              "main_module": "DSSM"},
                   "text_embedding_model": f"hf:gre/walks-s{seed}", "finished": True, "task": "retrieval",
                   "best": {"test": {"ndcg@10": ndcg}}, "train_seconds": 4.0, "epochs_trained": 2,
                   "dataset": {"num_items": 30}}
        (path / "results.json").write_text(json.dumps(results))
    records = finished_records(tmp_path, ["dssm"], encoders=args.encoders)
    assert [(r["encoder"], r["seed"]) for r in records] == [("hf:gre/walks-s{seed}", 1), ("hf:gre/walks-s{seed}", 2)]
    # Without the template each seed's encoder is its own row.
    assert [r["encoder"] for r in finished_records(tmp_path, ["dssm"])] == ["hf:gre/walks-s1", "hf:gre/walks-s2"]


def _gre_folder(path, dataset, cold_item_share, cold_item_seed):
    path.mkdir(parents=True)
    settings = {"dataset": [dataset], "cold_item_share": cold_item_share, "cold_item_seed": cold_item_seed}
    (path / "gre_training.json").write_text(json.dumps({"settings": settings}))


@pytest.mark.parametrize(
    "encoder, argv, refused",
    [
        ("gre-s{seed}", ["--seeds", "1,2"], None),  # each seed its own encoder
        ("gre-s1", ["--seeds", "1"], None),
        ("gre-s1", ["--seeds", "1,2"], "the seed-2 run holds out share 0.1 drawn with seed 2"),
        ("gre-all", ["--seeds", "1"], "cold items left out: none"),
        ("gre-all", ["--seeds", "1", "--models", "din"], None),  # no cold split in CTR runs
        ("other-s2", ["--seeds", "1"], None),  # fine-tuned on another dataset
        ("gre-s1", ["--seeds", "1", "--cold_item_share", "0.2"], "the seed-1 run holds out share 0.2 drawn with seed 1"),
    ],
)
def test_an_encoder_fine_tuned_on_a_runs_cold_items_is_refused(tmp_path, monkeypatch, encoder, argv, refused):
    from generative_recommenders.greb import GrebError, check_in_domain_encoders, parse_args

    monkeypatch.chdir(tmp_path)
    for seed in (1, 2):
        _gre_folder(tmp_path / f"gre-s{seed}", "walks", 0.1, seed)
    _gre_folder(tmp_path / "gre-all", "walks", None, 42)
    _gre_folder(tmp_path / "other-s2", "films", 0.1, 2)
    args = parse_args(["--dataset", "walks", "--models", "dssm", "--cold_item_share", "0.1",
                       "--encoders", f"none,hf:{encoder}", *argv])
    if refused is None:
        check_in_domain_encoders(args, ["walks"])
    else:
        with pytest.raises(GrebError, match=refused) as error:
            check_in_domain_encoders(args, ["walks"])
        assert "--cold_item_seed N" in str(error.value) and "{seed}" in str(error.value)


def test_the_runner_trains_each_seed_with_its_own_encoder(tmp_path, local_dir, tiny_bert):
    for seed in (1, 2):
        tiny_bert(tmp_path / f"enc-s{seed}", ["item", *map(str, range(30))])
        settings = {"dataset": ["walks"], "cold_item_share": 0.1, "cold_item_seed": seed}
        (tmp_path / f"enc-s{seed}" / "gre_training.json").write_text(json.dumps({"settings": settings}))
    template = f"hf:{tmp_path}/enc-s{{seed}}"
    argv = ["--local_dir", str(local_dir), "--data_root", str(tmp_path / "data"), "--output_dir", str(tmp_path / "greb"),
            "--encoders", template, "--seeds", "1,2", "--epochs", "1", "--models", "dssm", "--cold_item_share", "0.1",
            "--gin_bindings", "train_fn.local_batch_size = 32"]
    assert main(argv) == 0
    runs = sorted(p.name for p in (tmp_path / "greb" / "runs" / "walks").iterdir())
    assert runs == [f"dssm-hf-{str(tmp_path).strip('/').replace('/', '-')}-enc-s{s}-s{s}" for s in (1, 2)]
    for seed in (1, 2):
        results = json.loads((tmp_path / "greb" / "runs" / "walks" / runs[seed - 1] / "results.json").read_text())
        assert results["text_embedding_model"] == f"hf:{tmp_path}/enc-s{seed}" and results["config"]["random_seed"] == seed
    rows = list(csv.DictReader((tmp_path / "greb" / "greb.csv").open()))
    assert [(r["encoder"], r["num_seeds"]) for r in rows] == [(template, "2")]
