import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from generative_recommenders.data.dataset import SequenceView, collate_sequences, repeated_target_shares
from generative_recommenders.data.sequence_format import (
    DatasetFormatError,
    load_sequence_dataset,
    write_sequence_dataset,
)
from generative_recommenders.text.embedding_store import read_item_texts, write_item_texts


@pytest.fixture
def small(tmp_path):
    # User "u1": items a, b, c, d, e at times 10..50; user "u2": c, a, b with a time tie.
    df = pd.DataFrame(
        {
            "user_id": ["u1"] * 5 + ["u2"] * 3,
            "item_id": ["a", "b", "c", "d", "e", "c", "b", "a"],
            "rating": [5, 4, 3, 2, 1, 3, 3, 3],
            "timestamp": [10, 20, 30, 40, 50, 7, 9, 9],
        }
    )
    write_sequence_dataset(tmp_path / "small", df)
    return load_sequence_dataset(tmp_path / "small")


def test_contract_files(small, tmp_path):
    # Ids in order of first appearance: a0 b1 c2 d3 e4; the tie at t=9 is broken by item id.
    text = (tmp_path / "small" / "sasrec_format.csv").read_text()
    assert text.splitlines() == [
        "user_id,sequence_item_ids,sequence_ratings,sequence_timestamps",
        '0,"0,1,2,3,4","5,4,3,2,1","10,20,30,40,50"',
        '1,"2,0,1","3,3,3","7,9,9"',
    ]
    maps = json.loads((tmp_path / "small" / "data_maps.json").read_text())
    assert maps["id2item"] == ["a", "b", "c", "d", "e"] and maps["item2id"]["e"] == 4
    assert maps["num_items"] == 5 and maps["num_users"] == 2


def test_views_pick_the_right_targets(small):
    test = SequenceView(small, max_sequence_length=3, ignore_last_n=0)
    valid = SequenceView(small, max_sequence_length=3, ignore_last_n=1)
    train = SequenceView(small, max_sequence_length=3, ignore_last_n=2)
    # Ids are shifted by +1; history is the last 3 items before the target.
    assert test[0]["target_id"] == 5 and test[0]["history_ids"].tolist() == [2, 3, 4]
    assert valid[0]["target_id"] == 4 and valid[0]["history_ids"].tolist() == [1, 2, 3]
    assert train[0]["target_id"] == 3 and train[0]["history_ids"].tolist() == [1, 2]
    assert test[1]["target_id"] == 2 and test[1]["history_ids"].tolist() == [3, 1]
    # u2 has 3 items: held out two, only one is left, so no training example.
    assert len(train) == 1 and train.num_skipped_users == 1
    # The validation item never reaches training examples.
    for i in range(len(train)):
        user = int(train.users[i])
        held_out = small.item_ids[user][-2:] + 1
        assert train[i]["target_id"] not in held_out
        assert not set(train[i]["history_ids"].tolist()) & set(held_out.tolist()) - {train[i]["target_id"]}


@pytest.mark.parametrize(
    "max_sequence_length, last, second_to_last",
    [
        # Last items: u1's a (history a b), u2's d (c d e c) and u4's e (e) repeat, u3's c does not;
        # u5 has no history. Second-to-last: u2's c (c d e) repeats; u1's b and u3's b do not.
        (None, 3 / 4, 1 / 3),
        # Two items of history: u2's d no longer sees its d (e c), nor its c (d e).
        (2, 2 / 4, 0 / 3),
    ],
)
def test_repeated_target_shares(tmp_path, max_sequence_length, last, second_to_last):
    users = {"u1": "aba", "u2": "cdecd", "u3": "abc", "u4": "ee", "u5": "b"}
    df = pd.DataFrame(
        [(user, item, 5, t) for user, items in users.items() for t, item in enumerate(items)],
        columns=["user_id", "item_id", "rating", "timestamp"],
    )
    write_sequence_dataset(tmp_path / "repeats", df)
    shares = repeated_target_shares(load_sequence_dataset(tmp_path / "repeats"), max_sequence_length)
    assert shares == {"last": pytest.approx(last), "second_to_last": pytest.approx(second_to_last)}


def test_collate_pads_and_places_the_request_time(small):
    view = SequenceView(small, max_sequence_length=10, ignore_last_n=0)
    batch = collate_sequences([view[0], view[1]])
    assert batch["history_ids"].tolist() == [[1, 2, 3, 4, 0], [3, 1, 0, 0, 0]]
    assert batch["history_lengths"].tolist() == [4, 2]
    assert batch["history_timestamps"].tolist() == [[10, 20, 30, 40, 50], [7, 9, 9, 0, 0]]
    assert batch["target_ids"].tolist() == [5, 2]
    assert batch["history_ratings"][0].tolist() == [5, 4, 3, 2, 0]


def _write(folder, csv_text, num_items=3):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sasrec_format.csv").write_text(csv_text)
    (folder / "data_maps.json").write_text(json.dumps({"num_items": num_items}))
    return folder


HEADER = "user_id,sequence_item_ids,sequence_ratings,sequence_timestamps\n"


@pytest.mark.parametrize(
    "body, message",
    [
        ('0,"0,1,7","1,1,1","1,2,3"\n', "unknown item id 7"),
        ('0,"0,1","1,1,1","1,2,3"\n', "2 items, 3 ratings"),
        ('0,"0,x","1,1","1,2"\n', "not a comma-joined list"),
        ('0,"0,1","1,nan","1,2"\n', "NaN"),
        ('0,"0,1","1,1","5,2"\n', "chronological"),
        ('0,"0,1"\n', "expected 4 fields"),
        ("", "holds no users"),
    ],
)
def test_bad_sequence_files_name_the_file_and_problem(tmp_path, body, message):
    folder = _write(tmp_path / "bad", HEADER + body)
    with pytest.raises(DatasetFormatError, match=message) as err:
        load_sequence_dataset(folder)
    assert "sasrec_format.csv" in str(err.value)


def test_missing_and_garbled_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="not found: prepare the dataset"):
        load_sequence_dataset(tmp_path / "nothing")
    folder = _write(tmp_path / "garbled", "\x00\x01 garbage;;\n1,2\n")
    with pytest.raises(DatasetFormatError, match="expected header"):
        load_sequence_dataset(folder)
    (folder / "data_maps.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="data_maps.json"):
        load_sequence_dataset(folder)


def test_writer_rejects_empty_and_missing_values(tmp_path):
    empty = pd.DataFrame(columns=["user_id", "item_id", "rating", "timestamp"])
    with pytest.raises(DatasetFormatError, match="no interactions"):
        write_sequence_dataset(tmp_path / "e", empty)
    nan = pd.DataFrame({"user_id": ["u"], "item_id": ["i"], "rating": [np.nan], "timestamp": [1]})
    with pytest.raises(DatasetFormatError, match="missing ratings"):
        write_sequence_dataset(tmp_path / "n", nan)
    assert not (tmp_path / "e").exists() and not (tmp_path / "n").exists()


# --- the manifest: prepared data checks itself -------------------------------------------------


def _prepared(tmp_path):
    df = pd.DataFrame(
        {
            "user_id": ["u1"] * 5 + ["u2"] * 3,
            "item_id": ["a", "b", "c", "d", "e", "c", "b", "a"],
            "rating": [5, 4, 3, 2, 1, 3, 3, 3],
            "timestamp": [10, 20, 30, 40, 50, 7, 9, 9],
        }
    )
    folder = tmp_path / "small"
    write_sequence_dataset(folder, df, prepare_command="python3 preprocess_public_data.py --dataset small")
    return folder


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_the_manifest_records_counts_sizes_and_checksums(tmp_path):
    folder = _prepared(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {k: manifest[k] for k in ("num_users", "num_items", "num_interactions")} == {
        "num_users": 2, "num_items": 5, "num_interactions": 8
    }
    assert manifest["prepare_command"] == "python3 preprocess_public_data.py --dataset small"
    for name in ("sasrec_format.csv", "data_maps.json"):
        data = (folder / name).read_bytes()
        assert manifest["files"][name] == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert sorted(p.name for p in folder.iterdir()) == ["data_maps.json", "manifest.json", "sasrec_format.csv"]


def test_a_sequence_file_cut_at_a_line_end_is_refused_with_the_numbers(tmp_path):
    folder = _prepared(tmp_path)
    seq = folder / "sasrec_format.csv"
    seq.write_text("".join(seq.read_text().splitlines(keepends=True)[:2]))
    before = _snapshot(folder)
    with pytest.raises(DatasetFormatError) as error:
        load_sequence_dataset(folder)
    assert str(error.value) == (
        f"{seq}: holds 1 users, 5 interactions where data_maps.json records 2 users, 8 interactions: "
        "the file is cut short or was changed; prepare the dataset again: "
        "python3 preprocess_public_data.py --dataset small"
    )
    assert _snapshot(folder) == before  # nothing written or removed


def test_counts_that_disagree_with_the_maps_or_the_manifest_are_refused(tmp_path):
    folder = _prepared(tmp_path)
    maps_path = folder / "data_maps.json"
    maps = json.loads(maps_path.read_text())
    for count, value, id_map, listed in (("num_items", 4, "id2item", 5), ("num_users", 3, "id2user", 2)):
        maps_path.write_text(json.dumps({**maps, count: value}))
        with pytest.raises(DatasetFormatError, match=f"^{maps_path}: {count} is {value} but {id_map} lists {listed};"):
            load_sequence_dataset(folder)
    # Another dataset's consistent files in this folder: the manifest's counts tell.
    other = write_sequence_dataset(tmp_path / "other", pd.DataFrame(
        {"user_id": ["x", "x", "y", "y"], "item_id": ["a", "b", "a", "b"], "rating": 1.0, "timestamp": [1, 2, 1, 2]}
    ))
    for name in ("sasrec_format.csv", "data_maps.json"):
        (folder / name).write_bytes((tmp_path / "other" / name).read_bytes())
    assert other.num_interactions == 4
    with pytest.raises(DatasetFormatError, match="holds 4 interactions where manifest.json records 8 interactions"):
        load_sequence_dataset(folder)


def test_a_changed_file_with_the_same_counts_is_refused_by_its_checksum(tmp_path):
    folder = _prepared(tmp_path)
    seq = folder / "sasrec_format.csv"
    recorded = hashlib.sha256(seq.read_bytes()).hexdigest()
    seq.write_text(seq.read_text().replace('"5,4,3,2,1"', '"5,4,3,2,2"'))
    now = hashlib.sha256(seq.read_bytes()).hexdigest()
    size = seq.stat().st_size
    with pytest.raises(DatasetFormatError) as error:
        load_sequence_dataset(folder)
    assert str(error.value).startswith(
        f"{seq}: changed since it was prepared ({size} bytes, sha256 {now[:12]}... where manifest.json "
        f"records {size} bytes, sha256 {recorded[:12]}...); prepare the dataset again:"
    )


def test_binary_sequence_files_name_the_file_and_line(tmp_path):
    folder = _prepared(tmp_path)
    seq = folder / "sasrec_format.csv"
    header = b"user_id,sequence_item_ids,sequence_ratings,sequence_timestamps\n"
    seq.write_bytes(header + b'0,"0,1","5,4","1,2"\n\x89PNG\r\n\x1a\n\xff\xd8')
    with pytest.raises(DatasetFormatError, match=f"^{seq}, line 3: not UTF-8 text \\(byte 0x89\\)"):
        load_sequence_dataset(folder)
    seq.write_bytes(header + b"0,\x00\x00\x00\n")
    with pytest.raises(DatasetFormatError, match=f"^{seq}, line 2: expected 4 fields, got 2"):
        load_sequence_dataset(folder)


def test_a_folder_without_a_manifest_loads_with_a_warning(tmp_path, caplog):
    folder = _prepared(tmp_path)
    (folder / "manifest.json").unlink()
    assert load_sequence_dataset(folder).num_users == 2
    assert (
        f"warning: {folder} has no manifest.json (prepared by an earlier version), so its files are not "
        f"verified; prepare it again to add one: python3 preprocess_public_data.py --dataset small "
        f"--data_root {tmp_path}, or for your own data --local_dir DIR --dataset_name small "
        f"--data_root {tmp_path}"
    ) in caplog.text


def test_files_written_before_the_current_sequences_are_refused(tmp_path):
    folder = _prepared(tmp_path)
    write_item_texts(folder, ["a", "b", "c", "d", "e"])
    assert read_item_texts(folder) == ["a", "b", "c", "d", "e"]
    assert "item_texts.json" in json.loads((folder / "manifest.json").read_text())["files"]
    (folder / "item_texts.json").write_text(json.dumps(["A", "b", "c", "d", "e"]))
    with pytest.raises(DatasetFormatError, match="item_texts.json: changed since it was prepared"):
        read_item_texts(folder)
    # New sequences start a new manifest: the older item texts no longer count as checked.
    _prepared(tmp_path)
    with pytest.raises(DatasetFormatError, match="item_texts.json: not recorded in manifest.json"):
        read_item_texts(folder)
