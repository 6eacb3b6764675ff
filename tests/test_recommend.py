"""The Recommender API and the recommend command line on tiny trained runs."""

import dataclasses
import json
import shutil
import sys
from pathlib import Path

import gin
import numpy as np
import pandas as pd
import pytest
import torch

from generative_recommenders import Recommender
from generative_recommenders.data.ctr import CTRView, collate_ctr
from generative_recommenders.data.local import load_local_dataset
from generative_recommenders.data.sequence_format import write_sequence_dataset
from generative_recommenders.errors import run_command
from generative_recommenders.evaluation.ranking import candidate_embeddings, user_target_ranks
from generative_recommenders.recommend import PROGRAM, main
from generative_recommenders.recommender import RecommenderError
from generative_recommenders.text.embedding_store import compute_item_text_embeddings, write_item_texts
from generative_recommenders.trainer.protocol import protocol_views
from generative_recommenders.trainer.train import create_data_loader, train_fn
from test_train import NUM_ITEMS, _HashEncoder

NEW_ITEM = "i_new"  # only ever the last item of one user: cold under the validated protocol


def _dataset(data_dir: Path, with_new_item: bool) -> None:
    """Users walk the catalogue in order from a random start (as test_train's), items with two-line texts."""
    rng = np.random.default_rng(0)
    rows = [
        (f"u{user}", f"i{(start + step) % NUM_ITEMS}", 1.0, 1000 * step + user)
        for user, start in enumerate(rng.integers(NUM_ITEMS, size=320))
        for step in range(12)
    ]
    if with_new_item:
        rows += [("u_new", f"i{step}", 1.0, 1000 * step) for step in range(4)] + [("u_new", NEW_ITEM, 1.0, 4000)]
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    write_sequence_dataset(data_dir, df)
    names = json.loads((data_dir / "data_maps.json").read_text())["id2item"]
    texts = [f"Item {name}\nmade of part {name[1:]}" for name in names]
    write_item_texts(data_dir, texts)
    compute_item_text_embeddings(texts, _HashEncoder(), data_dir, data_dir.parent / "cache")


def _train(root: Path, dataset: str, run_name: str, *extra: str, resume: bool = False) -> Path:
    gin.clear_config()
    gin.parse_config(
        [
            f'train_fn.dataset_name = "{dataset}"',
            f'train_fn.data_root = "{root / "data"}"',
            f'train_fn.output_root = "{root / "exps"}"',
            f'train_fn.run_name = "{run_name}"',
            "train_fn.max_sequence_length = 16",
            "train_fn.local_batch_size = 32",
            "train_fn.item_embedding_dim = 16",
            "train_fn.num_negatives = 16",
            "train_fn.learning_rate = 1e-2",
            "train_fn.dropout_rate = 0.0",
            "train_fn.num_epochs = 2",
            "train_fn.deterministic = True",
            "hstu_encoder.num_blocks = 1",
            "hstu_encoder.num_heads = 1",
            "hstu_encoder.dqk = 16",
            "hstu_encoder.dv = 16",
            *extra,
        ]
    )
    try:
        return Path(train_fn(resume=resume)["run_dir"])
    finally:
        gin.clear_config()
        torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("recommend")
    _dataset(root / "data" / "cyclic", with_new_item=False)
    _dataset(root / "data" / "cyclic_new", with_new_item=True)
    ids = _train(root, "cyclic", "ids")
    text = _train(
        root, "cyclic_new", "text",
        'train_fn.embedding_module_type = "local_and_text"', 'train_fn.text_embedding_model = "fake"',
    )
    ctr = (
        'train_fn.loss_module = "BinaryCrossEntropyLoss"', 'train_fn.selection_metric = "auc"',
        "train_fn.num_epochs = 3", "train_fn.max_sequence_length = 10",
    )
    din = _train(root, "cyclic", "din", 'train_fn.main_module = "DIN"', *ctr)
    # Dropout 0 (GRE-B's MovieLens setting): its Amazon 0.5 before every layer needs more than 3 epochs here.
    deepfm_text = _train(
        root, "cyclic_new", "deepfm-text", 'train_fn.main_module = "DeepFM"', *ctr, "deepfm.dropout_rate = 0.0",
        'train_fn.embedding_module_type = "local_and_text"', 'train_fn.text_embedding_model = "fake"',
    )
    return {"ids": ids, "text": text, "din": din, "deepfm_text": deepfm_text}


@pytest.fixture(scope="module")
def rec(runs):
    return Recommender.from_run(runs["ids"], device="cpu")


def _evaluation_ranks(rec: Recommender) -> dict:
    test = protocol_views(rec.data, rec.max_sequence_length, "validated").test
    ranks = {}
    for users, _, user_ranks in user_target_ranks(rec.model, create_data_loader(test, 64), rec.device):
        ranks.update(zip(users.tolist(), user_ranks.tolist()))
    return ranks


def _assert_ranks_are_the_evaluations(rec: Recommender) -> None:
    """For every test user: the target's rank among recommend_for_history(history, k=all) is the evaluation's."""
    evaluation = _evaluation_ranks(rec)
    id2item = np.array(rec.data.maps["id2item"])
    test = protocol_views(rec.data, rec.max_sequence_length, "validated").test
    assert len(evaluation) == len(test) > 0
    for index in range(len(test)):
        example = test[index]
        recs = rec.recommend_for_history(
            id2item[example["history_ids"] - 1], example["history_timestamps"],
            request_time=example["target_timestamp"], k=rec.num_items,
        )
        target_score = recs.loc[recs["item_id"] == id2item[example["target_id"] - 1], "score"].item()
        rank = int((recs["score"] >= target_score).sum())  # ties ahead of the target, as the evaluation counts
        assert rank == evaluation[example["user_index"]], example["user_index"]


@pytest.mark.parametrize("run", ["ids", "text"])
def test_target_ranks_equal_the_full_ranking_evaluation(runs, run):
    _assert_ranks_are_the_evaluations(Recommender.from_run(runs[run], device="cpu"))


def test_ranks_equal_the_evaluation_on_ml100k_with_histories_longer_than_the_window(shared_data, tmp_path):
    interactions, items = load_local_dataset(shared_data / "ml100k")
    data = write_sequence_dataset(tmp_path / "data" / "ml100k", interactions)
    write_item_texts(tmp_path / "data" / "ml100k", [items[item]["title"] for item in data.maps["id2item"]])
    run_dir = _train(
        tmp_path, "ml100k", "ml", "train_fn.num_epochs = 1", "train_fn.max_sequence_length = 50",
        "train_fn.local_batch_size = 256",
    )
    # Items before a long user's window are never trained on: cold, left out unless included.
    rec = Recommender.from_run(run_dir, device="cpu", include_cold=True)
    assert rec.max_sequence_length == 50 and max(len(items) for items in rec.data.item_ids) > 50
    assert rec.cold.sum() > 0 and not Recommender.from_run(run_dir, device="cpu").include_cold
    _assert_ranks_are_the_evaluations(rec)


def test_history_is_excluded_unless_asked_and_titles_are_the_texts_first_lines(rec, runs):
    user = "u7"
    seen = set(np.array(rec.data.maps["id2item"])[rec.data.item_ids[rec.data.maps["user2id"][user]]])
    recs = rec.recommend([user], k=rec.num_items)
    assert len(recs) == rec.num_items - len(seen) and not seen & set(recs["item_id"])
    assert recs["rank"].tolist() == list(range(1, len(recs) + 1)) and recs["score"].is_monotonic_decreasing
    everything = rec.recommend(user, k=rec.num_items, exclude_history=False)
    assert len(everything) == rec.num_items and seen <= set(everything["item_id"])
    texts = json.loads((rec.data_dir / "item_texts.json").read_text())
    item2id = rec.data.maps["item2id"]
    assert [texts[item2id[item]].split("\n")[0] for item in everything["item_id"]] == everything["title"].tolist()
    assert everything["title"].iloc[0] == f"Item {everything['item_id'].iloc[0]}"


def test_recommend_for_a_users_own_history_equals_recommend(rec):
    user = rec.data.maps["user2id"]["u3"]
    items = np.array(rec.data.maps["id2item"])[rec.data.item_ids[user]]
    own = rec.recommend_for_history(items, rec.data.timestamps[user], k=15)
    pd.testing.assert_frame_equal(own, rec.recommend("u3", k=15).drop(columns="user_id"))
    # Without timestamps the history is at positions 0..n-1: HSTU's time bias then sees other gaps.
    ordinal = rec.recommend_for_history(items, k=15)
    assert not np.allclose(ordinal["score"], own["score"])


def test_scores_and_embeddings_are_the_models(rec):
    users, items = ["u1", "u9"], ["i0", "i5", "i17"]
    scores = rec.score(users, items)
    item_ids, item_vectors = rec.item_embeddings()
    user_ids, user_vectors = rec.user_embeddings(users)
    assert item_ids.tolist() == rec.data.maps["id2item"] and user_ids.tolist() == users
    np.testing.assert_array_equal(item_vectors, candidate_embeddings(rec.model)[1:].detach().numpy())
    # User 1's query by hand: ids + 1, the request time (the last item's) in the slot after the history.
    index = rec.data.maps["user2id"]["u1"]
    ids = torch.from_numpy(np.append(rec.data.item_ids[index] + 1, 0)).unsqueeze(0)
    times = torch.from_numpy(np.append(rec.data.timestamps[index], rec.data.timestamps[index][-1])).unsqueeze(0)
    with torch.no_grad():
        query = rec.model.query_embeddings(ids, torch.tensor([ids.size(1) - 1]), times)
    np.testing.assert_allclose(user_vectors[0], query[0].numpy(), atol=1e-6)
    columns = [rec.data.maps["item2id"][item] for item in items]
    np.testing.assert_allclose(scores.scores, user_vectors @ item_vectors[columns].T, atol=1e-6)
    top = rec.recommend("u9", k=3)
    np.testing.assert_allclose(top["score"], rec.score("u9", top["item_id"]).scores[0], atol=1e-6)


def test_faiss_flat_equals_exact_and_is_saved_beside_the_weights(runs, rec):
    pytest.importorskip("faiss")
    flat = Recommender.from_run(runs["ids"], device="cpu", index="flat")
    users = rec.user_ids[:50]
    exact, approx = rec.recommend(users, k=10), flat.recommend(users, k=10)
    assert exact["item_id"].tolist() == approx["item_id"].tolist()
    np.testing.assert_allclose(exact["score"], approx["score"], atol=1e-5)
    saved = runs["ids"] / "item_index_best_flat.faiss"
    assert saved.is_file() and saved.with_suffix(".json").is_file()
    built = saved.stat().st_mtime_ns
    Recommender.from_run(runs["ids"], device="cpu", index="flat").recommend("u0", k=3)
    assert saved.stat().st_mtime_ns == built  # loaded, not rebuilt
    hnsw = Recommender.from_run(runs["ids"], device="cpu", index="hnsw").recommend(users, k=10)
    assert (hnsw.groupby("user_id").size() == 10).all()


def test_a_text_model_scores_and_recommends_cold_items(runs):
    rec = Recommender.from_run(runs["text"], device="cpu")
    assert rec.cold_item_ids == [NEW_ITEM] and rec.uses_text
    scores = rec.score("u_new", [NEW_ITEM, "i9"])
    assert np.isfinite(scores.scores).all() and scores.cold.tolist() == [True, False]
    recs = rec.recommend("u5", k=rec.num_items)
    assert recs.loc[recs["item_id"] == NEW_ITEM, "cold"].tolist() == [True]
    assert recs["cold"].sum() == 1


def test_an_id_only_model_leaves_cold_items_out(rec):
    cold = np.zeros(rec.num_items, dtype=bool)
    cold[rec.data.maps["item2id"]["i4"]] = True
    marked = dataclasses.replace(rec, cold=cold)
    recs = marked.recommend("u2", k=rec.num_items, exclude_history=False)
    assert "i4" not in set(recs["item_id"]) and len(recs) == rec.num_items - 1
    scores = marked.score("u2", ["i4", "i5"])
    assert np.isnan(scores.scores[0, 0]) and np.isfinite(scores.scores[0, 1])
    included = dataclasses.replace(marked, include_cold=True).recommend("u2", k=rec.num_items, exclude_history=False)
    assert included.loc[included["item_id"] == "i4", "cold"].tolist() == [True]


def _run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        run_command(PROGRAM, main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit.value.code, out, err


def test_cli_prints_tables_and_streams_every_user_to_csv_and_parquet(runs, rec, tmp_path, capsys):
    pytest.importorskip("pyarrow")
    code, out, _ = _run_cli(
        ["--run_dir", runs["ids"], "--user_id", "u1", "--history", "i3,i4,i5", "--k", "3",
         "--all_users", "--output", tmp_path / "recs.csv", "--chunk_size", "100"],
        capsys,
    )
    assert code == 0
    top = rec.recommend("u1", k=3)
    first = out[out.index("user u1"):].splitlines()[1:5]
    assert first[0].split() == ["rank", "item_id", "score", "title"]
    assert [line.split()[1] for line in first[1:]] == top["item_id"].tolist()
    assert first[1].split()[2] == f"{top['score'].iloc[0]:.4f}" and first[1].endswith(top["title"].iloc[0])
    history = rec.recommend_for_history(["i3", "i4", "i5"], k=3)
    assert out[out.index("history i3,i4,i5"):].splitlines()[2].split()[1] == history["item_id"].iloc[0]
    written = pd.read_csv(tmp_path / "recs.csv", dtype={"user_id": str, "item_id": str})
    expected = rec.recommend(rec.user_ids, k=3)
    assert len(written) == 3 * len(rec.user_ids)
    pd.testing.assert_frame_equal(written[["user_id", "rank", "item_id"]], expected[["user_id", "rank", "item_id"]])
    np.testing.assert_allclose(written["score"], expected["score"], atol=1e-6)

    code, _, _ = _run_cli(["--run_dir", runs["ids"], "--all_users", "--output", tmp_path / "recs.parquet", "--k", "3"], capsys)
    assert code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "recs.parquet"), expected, check_dtype=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recs.csv", "recs.parquet"]  # no temp files left


def test_cli_exports_the_models_embeddings(runs, rec, tmp_path, capsys):
    code, _, _ = _run_cli(["--run_dir", runs["ids"], "--export_embeddings", tmp_path / "emb"], capsys)
    assert code == 0
    item_ids, item_vectors = rec.item_embeddings()
    user_ids, user_vectors = rec.user_embeddings()
    assert json.loads((tmp_path / "emb" / "item_ids.json").read_text()) == item_ids.tolist()
    assert json.loads((tmp_path / "emb" / "user_ids.json").read_text()) == user_ids.tolist()
    np.testing.assert_array_equal(np.load(tmp_path / "emb" / "item_embeddings.npy"), item_vectors)
    np.testing.assert_array_equal(np.load(tmp_path / "emb" / "user_embeddings.npy"), user_vectors)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--user_id", "nobody"], "unknown user id 'nobody'"),
        (["--history", "i1,zz,i2"], "unknown item id 'zz' in the history"),
        (["--history", " , "], "--history ' , ' is empty"),
        (["--user_id", "u1", "--k", "0"], "k=0: must be a whole number from 1 to 40"),
        (["--user_id", "u1", "--k", "41"], "k=41: must be a whole number from 1 to 40"),
        (["--history", "i1,i2", "--timestamps", "5,3"], "not in order"),
        (["--history", "i1,i2", "--timestamps", "3"], "1 timestamps for 2 history items"),
        (["--all_users"], "--all_users and --output go together"),
        (["--all_users", "--output", "recs.json"], "--output recs.json: write .csv or .parquet"),
    ],
)
def test_bad_requests_are_one_line_errors(runs, capsys, argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = _run_cli(["--run_dir", runs["ids"], *argv], capsys)
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_an_empty_history_is_refused(rec):
    with pytest.raises(RecommenderError, match="the history is empty"):
        rec.recommend_for_history([])


def test_a_run_without_weights_or_with_other_data_is_refused(runs, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["ids"] / "results.json", bare / "results.json")
    code, _, err = _run_cli(["--run_dir", bare, "--user_id", "u1"], capsys)
    assert code == 1 and f"{bare / 'best_model.pt'} not found" in err and "let the training run finish" in err
    shutil.copy(runs["ids"] / "last_model.pt", bare / "last_model.pt")
    code, _, err = _run_cli(["--run_dir", bare, "--user_id", "u1"], capsys)
    assert "use weights='last' (--weights last)" in err
    other = runs["text"].parents[2] / "data" / "cyclic_new"
    code, _, err = _run_cli(["--run_dir", runs["ids"], "--user_id", "u1", "--data_dir", other], capsys)
    assert code == 1 and f"{other} is not the data run" in err and "num_users 320 vs 321" in err
    code, _, err = _run_cli(["--run_dir", tmp_path, "--user_id", "u1"], capsys)
    assert code == 1 and "results.json not found" in err and len(err.strip().splitlines()) == 1


def test_the_package_exports_the_recommender_lazily():
    import subprocess

    code = "import sys, generative_recommenders as g; assert 'torch' not in sys.modules; print(g.Recommender.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0 and proc.stdout.strip() == "Recommender", proc.stderr


# --- ranking (CTR) runs ------------------------------------------------------------------------


@pytest.mark.parametrize("run", ["din", "deepfm_text"])
def test_a_ctr_run_scores_each_pair_as_its_evaluation_and_ranks_the_next_item_high(runs, run):
    rec = Recommender.from_run(runs[run], device="cpu")
    assert rec.task == "ctr" and rec.max_sequence_length == 10
    test = CTRView(rec.data, "test", rec.max_sequence_length)
    positives = [test[i] for i in range(0, len(test), 2)]  # test samples alternate positive, negative
    batch = collate_ctr(positives)
    with torch.no_grad():
        # A typed-in history names no user: the user-id field is the padding user's zeros.
        expected = torch.sigmoid(rec.model({k: v for k, v in batch.items() if k != "user_index"})).numpy()
    id2item = np.array(rec.data.maps["id2item"])
    ranks = []
    for sample, probability in zip(positives[:40], expected):
        recs = rec.recommend_for_history(id2item[sample["history_ids"] - 1], k=rec.num_items, exclude_history=False)
        target = recs.loc[recs["item_id"] == id2item[sample["target_id"] - 1]]
        assert target["score"].item() == pytest.approx(float(probability), rel=1e-5)
        ranks.append(target["rank"].item())
    # The catalogue is walked in order: the next item is learnable (40 items: a random ranking puts it
    # at 20.5 on average; DIN's attention finds it near the top, DeepFM's mean of behaviours less so).
    assert np.mean(ranks) < {"din": 10, "deepfm_text": 14}[run]
    user_index = positives[0]["user_index"]
    user = rec.data.maps["id2user"][user_index]
    scores = rec.score(user, ["i3", "i4"])
    assert scores.scores.shape == (1, 2) and ((scores.scores > 0) & (scores.scores < 1)).all()
    # A user of the data is scored with their own user field (as the evaluation scores them),
    # after the newest max_sequence_length items of their whole sequence.
    history = torch.from_numpy(rec.data.item_ids[user_index][-rec.max_sequence_length:] + 1).expand(2, -1)
    pairs = {"history_ids": history, "history_lengths": torch.full((2,), history.size(1)),
             "target_ids": torch.tensor([rec.data.maps["item2id"][i] + 1 for i in ("i3", "i4")])}
    with torch.no_grad():
        as_user = torch.sigmoid(rec.model({**pairs, "user_index": torch.full((2,), user_index)})).numpy()
        anonymous = torch.sigmoid(rec.model(pairs)).numpy()
    assert scores.scores[0] == pytest.approx(as_user, rel=1e-5)
    assert not np.allclose(as_user, anonymous)  # the user field counts


def test_a_ctr_run_has_no_embeddings_and_no_faiss_index(runs):
    rec = Recommender.from_run(runs["din"], device="cpu")
    with pytest.raises(RecommenderError, match="ranking \\(CTR\\) model \\(DIN\\).*use recommend or score"):
        rec.item_embeddings()
    with pytest.raises(RecommenderError, match="no faiss index serves"):
        Recommender.from_run(runs["din"], device="cpu", index="flat")


def test_the_default_weights_are_the_runs_choice_and_the_data_is_found_from_another_folder(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the run's data root was given relative to nothing here
    assert Recommender.from_run(runs["ids"], device="cpu").weights == "best"
    # A run without validation (the reference protocol) has last weights alone: those are its choice.
    reference = tmp_path / "reference"
    reference.mkdir()
    results = json.loads((runs["ids"] / "results.json").read_text())
    (reference / "results.json").write_text(json.dumps(dict(results, best=None)))
    shutil.copy(runs["ids"] / "last_model.pt", reference / "last_model.pt")
    rec = Recommender.from_run(reference, device="cpu")
    assert rec.weights == "last" and rec.data_dir == Path(results["data_dir"])
