"""A run knows its data: other data of the same counts is refused wherever the run is served,
continued or compared; a run's results are never trained over without --overwrite."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Dict, List

import pytest

import preprocess_public_data
from generative_recommenders.reports import compare
from generative_recommenders.data.identity import IDENTITY_KEY, DataIdentityError, data_identity
from generative_recommenders.errors import one_line, run_command
from generative_recommenders.recommend import PROGRAM, main as recommend_main
from generative_recommenders.recommender import Recommender
from generative_recommenders.trainer.run_folder import RunFolderError
from test_recommend import _train

NUM_USERS, NUM_ITEMS, STEPS = 60, 20, 8
REFUSED_RECOMMEND_FIX = (
    "pass the run's prepared folder (data_dir=..., --data_dir), or prepare that dataset again as it was"
)


def _rows(seed: int) -> List[tuple]:
    """Users walk the catalogue from a start drawn by ``seed``: one row per interaction, in time order."""
    import numpy as np

    starts = np.random.default_rng(seed).integers(NUM_ITEMS, size=NUM_USERS)
    return [
        (f"u{user}", f"i{(int(start) + step) % NUM_ITEMS}", 1000 * step + user)
        for user, start in enumerate(starts)
        for step in range(STEPS)
    ]


def write_local(folder: Path, rows: List[tuple], labels: Dict[str, str] = {}) -> None:
    """A local-format folder of ``rows`` (user, item, timestamp), item labels renamed by ``labels``."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "user_id,item_id,timestamp\n" + "".join(f"{u},{labels.get(i, i)},{t}\n" for u, i, t in rows)
    (folder / "interactions.csv").write_text(text, encoding="utf-8")
    items = [{"item_id": f"i{k}", "title": f"Item {k}"} for k in range(NUM_ITEMS)]
    (folder / "items.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")


def prepare(local: Path, root: Path, name: str = "cyclic", *extra: str) -> None:
    argv = ["--local_dir", str(local), "--dataset_name", name, "--data_root", str(root / "data"),
            "--text_embedding_model", "none", *extra]
    with pytest.raises(SystemExit) as exit_:
        run_command("preprocess_public_data.py", preprocess_public_data.main, argv)
    assert exit_.value.code == 0


def snapshot(folder: Path) -> Dict[str, str]:
    """sha256 of every file under ``folder`` (the run folder's lock aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def recommend(argv: List[str], capsys) -> tuple:
    capsys.readouterr()  # what came before
    with pytest.raises(SystemExit) as exit_:
        run_command(PROGRAM, recommend_main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return exit_.value.code, out, err


def expected_refusal(run_dir: Path, data_dir: Path, parts: List[str], fix: str) -> str:
    """The refusal's text, its digests taken from the run's record and from the files themselves."""
    recorded = json.loads((run_dir / "results.json").read_text())[IDENTITY_KEY]
    now = {
        "sequences": hashlib.sha256((data_dir / "sasrec_format.csv").read_bytes()).hexdigest(),
        **{
            part: hashlib.sha256(json.dumps(json.loads((data_dir / "data_maps.json").read_text())[key]).encode()).hexdigest()
            for part, key in (("item_map", "id2item"), ("user_map", "id2user"))
        },
    }
    names = {
        "sequences": "the sequences (sasrec_format.csv)",
        "item_map": "the item id map (id2item of data_maps.json)",
        "user_map": "the user id map (id2user of data_maps.json)",
    }
    changes = "; ".join(
        f"{names[part]}: sha256 {recorded[part][:12]}... in the run, {now[part][:12]}... in {data_dir}" for part in parts
    )
    return f"{data_dir} is not the data {run_dir} was trained on (from {recorded['data_dir']}); changed: {changes}; {fix}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained on a local dataset prepared from ``local``; its answer for u1 before any change."""
    root = tmp_path_factory.mktemp("identity")
    write_local(root / "local", _rows(0))
    prepare(root / "local", root)
    run_dir = _train(root, "cyclic", "ids", "train_fn.num_epochs = 1", "train_fn.max_sequence_length = 8")
    answer = Recommender.from_run(run_dir, device="cpu").recommend("u1", k=5)["item_id"].tolist()
    return root, run_dir, answer


def _reprepare(root: Path, rows: List[tuple], labels: Dict[str, str] = {}) -> None:
    write_local(root / "local", rows, labels)
    prepare(root / "local", root, "cyclic", "--force")


def test_the_same_interactions_in_another_row_order_are_refused_and_the_same_data_served_again(trained, capsys):
    root, run_dir, answer = trained
    data_dir = root / "data" / "cyclic"
    before = snapshot(run_dir)
    recorded = json.loads((run_dir / "results.json").read_text())[IDENTITY_KEY]
    assert recorded["sequences"] == hashlib.sha256((data_dir / "sasrec_format.csv").read_bytes()).hexdigest()
    try:
        _reprepare(root, _rows(0)[::-1])  # same interactions: items and users numbered otherwise
        code, out, err = recommend(["--run_dir", run_dir, "--user_id", "u1", "--k", "5"], capsys)
        message = expected_refusal(run_dir, data_dir, ["sequences", "item_map", "user_map"], REFUSED_RECOMMEND_FIX)
        assert (code, out, err) == (1, "", f"recommend: {message} (details: --debug)\n")
        assert snapshot(run_dir) == before
    finally:
        _reprepare(root, _rows(0))  # the run's own data prepared again: the same identity
    assert Recommender.from_run(run_dir, device="cpu").recommend("u1", k=5)["item_id"].tolist() == answer


def test_item_labels_permuted_with_every_count_and_sequence_equal_are_refused(trained):
    root, run_dir, _ = trained
    data_dir = root / "data" / "cyclic"
    sequences = (data_dir / "sasrec_format.csv").read_bytes()
    try:
        _reprepare(root, _rows(0), {"i3": "i7", "i7": "i3"})
        assert (data_dir / "sasrec_format.csv").read_bytes() == sequences  # only the labels moved
        with pytest.raises(DataIdentityError) as refused:
            Recommender.from_run(run_dir, device="cpu")
        assert str(refused.value) == expected_refusal(run_dir, data_dir, ["item_map"], REFUSED_RECOMMEND_FIX)
    finally:
        _reprepare(root, _rows(0))


def test_a_data_dir_of_other_interactions_with_the_same_counts_is_refused(trained, capsys):
    root, run_dir, _ = trained
    write_local(root / "other_local", _rows(1))
    prepare(root / "other_local", root, "other")
    other = root / "data" / "other"
    code, out, err = recommend(["--run_dir", run_dir, "--user_id", "u1", "--data_dir", other], capsys)
    message = expected_refusal(run_dir, other, ["sequences", "item_map"], REFUSED_RECOMMEND_FIX)
    assert (code, out, err) == (1, "", f"recommend: {message} (details: --debug)\n")


def test_training_again_or_resuming_on_other_data_is_refused_and_nothing_changes(trained):
    root, run_dir, _ = trained
    data_dir = root / "data" / "cyclic"
    before = snapshot(run_dir)
    fix = (
        "prepare the run's data again as it was, give this run its own train_fn.run_name, or pass "
        "--overwrite to train it again on this data"
    )
    try:
        _reprepare(root, _rows(0)[::-1])
        for epochs, resume in ((1, False), (2, True)):  # the finished run, and resuming it for more epochs
            with pytest.raises(RunFolderError) as refused:
                _train(root, "cyclic", "ids", "train_fn.max_sequence_length = 8", f"train_fn.num_epochs = {epochs}",
                       resume=resume)
            assert one_line(refused.value) == expected_refusal(run_dir, data_dir, ["sequences", "item_map", "user_map"], fix)
            assert snapshot(run_dir) == before
    finally:
        _reprepare(root, _rows(0))


def test_compare_refuses_runs_of_one_dataset_name_trained_on_different_data(trained, tmp_path):
    _, run_dir, _ = trained
    copy = tmp_path / "cyclic" / "ids-copy-s7"
    shutil.copytree(run_dir, copy)
    results = json.loads((copy / "results.json").read_text())
    results[IDENTITY_KEY]["item_map"] = "0" * 64  # as trained on the same counts with other item labels
    results["config"]["random_seed"] = 7
    (copy / "results.json").write_text(json.dumps(results))
    with pytest.raises(DataIdentityError) as refused:
        compare.load_runs([run_dir / "results.json", copy / "results.json"])
    assert str(refused.value) == (
        f"{run_dir.resolve()} and {copy.resolve()} were trained on different data named cyclic (the same counts; "
        "they differ in the item id map (id2item of data_maps.json)), so they cannot share a table: compare runs "
        "of one data, or train them again on the same prepared folder"
    )


def test_the_identity_of_the_same_data_prepared_twice_is_the_same(tmp_path):
    write_local(tmp_path / "local", _rows(3))
    prepare(tmp_path / "local", tmp_path, "a")
    prepare(tmp_path / "local", tmp_path, "b")
    first, second = (data_identity(tmp_path / "data" / name) for name in "ab")
    assert {k: v for k, v in first.items() if k != "data_dir"} == {k: v for k, v in second.items() if k != "data_dir"}
    assert first["data_dir"] == str(tmp_path / "data" / "a")


@pytest.mark.parametrize(
    "device, message",
    [
        ("cuda", "--device cuda: this machine has no usable CUDA GPU; use --device cpu (or leave it out)"),
        ("gpu0", "--device gpu0: not a device name; use cpu, or cuda where there is a GPU"),
        ("meta", "--device meta: the recommender runs on cpu or cuda"),
    ],
)
def test_recommend_on_a_device_this_machine_lacks_is_one_line(trained, capsys, monkeypatch, device, message):
    import torch

    _, run_dir, _ = trained
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, out, err = recommend(["--run_dir", run_dir, "--user_id", "u1", "--device", device], capsys)
    assert (code, out, err) == (1, "", f"recommend: {message} (details: --debug)\n")


def test_compare_into_an_output_dir_that_is_a_file_is_one_line(trained, tmp_path, capsys):
    import subprocess
    import sys

    _, run_dir, _ = trained
    blocker = tmp_path / "report"
    blocker.write_text("not a folder")
    proc = subprocess.run(
        [sys.executable, "-m", "generative_recommenders.compare", str(run_dir), "--output_dir", str(blocker)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        f"compare: {blocker}: a file stands where a folder is needed (File exists); move it or choose another path "
        "(details: --debug)\n"
    )
    assert blocker.read_text() == "not a folder"


def test_training_refuses_another_datasets_table_copied_over_the_own(tmp_path):
    import torch

    from generative_recommenders.text.embedding_store import compute_item_text_embeddings, embedding_file
    from test_train import TEXT_BINDINGS, _HashEncoder, _text_dataset, run_main, tiny_config

    data_dir = _text_dataset(tmp_path)
    texts = json.loads((data_dir / "item_texts.json").read_text())
    compute_item_text_embeddings([t + " (other shop)" for t in texts], _HashEncoder(), tmp_path / "other", tmp_path / "cache")
    own = embedding_file(data_dir, "fake")
    own.write_bytes(embedding_file(tmp_path / "other", "fake").read_bytes())  # its sidecar kept
    before = snapshot(data_dir)
    proc = run_main(tiny_config(tmp_path, "HSTU"), *TEXT_BINDINGS)
    found = hashlib.sha256(torch.load(own, weights_only=True).numpy().tobytes()).hexdigest()
    recorded = json.loads(own.with_suffix(".json").read_text())["tensor_sha256"]
    rerun = (
        f"python3 preprocess_public_data.py --dataset cyclic --data_root {tmp_path / 'data'} --text_embedding_model "
        f"fake, or for your own data --local_dir DIR --dataset_name cyclic --data_root {tmp_path / 'data'} "
        "--text_embedding_model fake"
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", (
        f"main.py: {own}: not the table its sidecar describes (tensor sha256 {found[:12]}..., "
        f"item_text_embeddings_fake.json records {recorded[:12]}...): copied from another dataset or changed; "
        f"rerun {rerun} (details: --debug)\n"
    ))
    assert snapshot(data_dir) == before and not (tmp_path / "exps").exists()
