"""A run's data folder found from any current folder, and the weights a run chose."""

from pathlib import Path

import pytest

from generative_recommenders.data.sequence_format import SEQUENCE_FILE
from generative_recommenders.run_data import RunDataNotFoundError, chosen_weights, run_data_dir


def _prepared(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / SEQUENCE_FILE).write_text("")
    return folder


def test_the_recorded_absolute_data_folder_is_found_from_any_folder(tmp_path, monkeypatch):
    data = _prepared(tmp_path / "somewhere" / "shop")
    run = tmp_path / "exps" / "shop" / "hstu-s1"
    monkeypatch.chdir(tmp_path / "somewhere")
    results = {"data_dir": str(data), "run_dir": "exps/shop/hstu-s1"}
    assert run_data_dir(results, run, "tmp", "shop") == data


def test_an_older_runs_relative_data_is_found_beside_its_project_folder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    data = _prepared(project / "tmp" / "shop")
    run = project / "exps" / "shop" / "hstu-s1"
    run.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # No data_dir recorded: the run folder's own path, minus the recorded exps/shop/hstu-s1, is the project.
    assert run_data_dir({"run_dir": "exps/shop/hstu-s1"}, run, "tmp", "shop") == data
    # From the project folder itself, the data_root relative to it.
    monkeypatch.chdir(project)
    assert run_data_dir({"run_dir": "elsewhere/hstu-s1"}, run, "tmp", "shop") == project / "tmp" / "shop"


def test_missing_data_says_where_it_looked_and_how_to_point_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = {"data_dir": str(tmp_path / "gone" / "shop"), "run_dir": "exps/shop/hstu-s1"}
    with pytest.raises(RunDataNotFoundError) as error:
        run_data_dir(results, tmp_path / "exps" / "shop" / "hstu-s1", "tmp", "shop")
    message = str(error.value)
    assert f"looked in {tmp_path / 'gone' / 'shop'};" in message
    assert "data_dir=..." in message and "--data_dir DIR" in message and "\n" not in message
    # A folder the caller names is taken as it is (load_sequence_dataset checks it).
    assert run_data_dir(results, tmp_path, "tmp", "shop", tmp_path / "mine") == tmp_path / "mine"


def test_a_run_chose_its_best_epoch_when_validation_chose_one():
    assert chosen_weights({"best": {"epoch": 3}}) == "best"
    assert chosen_weights({"best": None}) == "last"  # the reference protocol: no validation
    assert chosen_weights({}) == "last"
