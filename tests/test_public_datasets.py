"""Amazon Reviews 2023 and Steam, prepared as the paper prepares them, on hand-written fixtures.

``tests/fixtures/raw`` holds, gzipped like the originals and in their exact formats:

* ``Video_Games.csv.gz``: a 5-core rating-only CSV (header ``user_id,parent_asin,
  rating,timestamp``, milliseconds), 33 rows of 6 users and 7 items. Item
  B00005NZ1G has no metadata; B0886P3N8Q has 4 ratings; user AGKH... has exactly 5
  ratings, the first data row among them; user AFNL... rated three items at the
  same millisecond, in the file order E, B, C.
* ``meta_Video_Games.jsonl.gz``: release metadata records (HTML entities and tags,
  raw UTF-8 and ``\\u`` escapes, list fields, tabs and newlines, images and
  videos), one of an item nobody rated.
* ``steam_reviews.json.gz``: 24 reviews as Python 3 dict literals, usernames and
  texts with apostrophes and quotes, ISO dates, ``Posted November 5, 2011.``
  dates and one year-less ``Posted July 15.``; one review of a game without
  metadata.
* ``steam_games.json.gz``: 8 games as Python 2 dict literals (``u''`` strings,
  ``\\xae`` escapes, ``u"Tom Clancy's ..."``), one line without an ``id``.
"""

from __future__ import annotations

import gzip
import http.server
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Dict, Iterator, List, Sequence

import pytest
import torch

from generative_recommenders import prepare as preprocess_public_data
from generative_recommenders.data import amazon2023, steam
from generative_recommenders.data.download import DownloadError, RawFile, download, fetch_raw_files
from generative_recommenders.errors import run_command
from generative_recommenders.data.sequence_format import DatasetFormatError, load_sequence_dataset
from generative_recommenders.text.embedding_store import load_dataset_text_embeddings

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "raw"
OFFLINE = "http://127.0.0.1:9"  # a closed port: a download attempt fails at once
DATASET_FILES = {
    "amzn23_game": ("Video_Games.csv.gz", "meta_Video_Games.jsonl.gz"),
    "steam": ("steam_reviews.json.gz", "steam_games.json.gz"),
}
SEQUENCE_HEADER = "user_id,sequence_item_ids,sequence_ratings,sequence_timestamps\n"


@pytest.fixture(autouse=True)
def offline_sources(monkeypatch) -> None:
    """Points every source URL at a closed local port: no test reaches the network."""
    monkeypatch.setattr(amazon2023, "RATINGS_URL", OFFLINE + "/{category}.csv.gz")
    monkeypatch.setattr(
        amazon2023,
        "METADATA_URLS",
        (OFFLINE + "/meta_{category}.jsonl.gz", OFFLINE + "/mirror/meta_{category}.jsonl"),
    )
    monkeypatch.setattr(steam, "REVIEWS_URL", OFFLINE + "/steam_reviews.json.gz")
    monkeypatch.setattr(steam, "GAMES_URL", OFFLINE + "/steam_games.json.gz")


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    """A writable copy of the fixtures."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "raw"))


def prepare(out_root: Path, raw: Path, *datasets: str, model: str = "none") -> int:
    args = [arg for name in datasets for arg in ("--dataset", name)]
    args += ["--raw_dir", str(raw), "--data_root", str(out_root), "--text_embedding_model", model]
    with pytest.raises(SystemExit) as exit_:
        run_command("preprocess_public_data.py", preprocess_public_data.main, args)
    return exit_.value.code


def one_error_line(capsys) -> str:
    """The script's error message on stderr (after any progress bars), checked to hold no traceback."""
    stderr = capsys.readouterr().err
    assert "preprocess_public_data.py: " in stderr and "Traceback" not in stderr
    return stderr[stderr.index("preprocess_public_data.py: "):]


def read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def check_prepared(
    out: Path, rows: str, id2user: List[str], id2item: List[str], texts: List[str], unit: str
) -> List[Dict]:
    """Checks every output file of a prepared folder; returns its item metadata records."""
    assert (out / "sasrec_format.csv").read_text() == SEQUENCE_HEADER + rows
    maps = read_json(out / "data_maps.json")
    assert (maps["id2user"], maps["id2item"], maps["id2meta"]) == (id2user, id2item, texts)
    assert maps["user2id"] == {user: k for k, user in enumerate(id2user)}
    assert maps["item2id"] == {item: k for k, item in enumerate(id2item)}
    dataset = load_sequence_dataset(out)
    assert (dataset.num_users, dataset.num_items) == (len(id2user), len(id2item))
    assert (maps["num_users"], maps["num_items"], maps["num_interactions"]) == (
        len(id2user), len(id2item), dataset.num_interactions
    )
    assert maps["timestamp_unit"] == unit
    assert read_json(out / "item_texts.json") == texts
    records = [json.loads(line) for line in (out / "item_metadata.jsonl").read_text().splitlines()]
    assert [r["item_id"] for r in records] == id2item
    return records


def test_amazon_fixture_exact_outputs(tmp_path: Path, capsys) -> None:
    assert prepare(tmp_path, FIXTURES, "amzn23_game") == 0
    out = tmp_path / "amzn23_game"
    # Kept: 4 users x 5 items. Dropped: B00005NZ1G (no metadata), which leaves AFSK... with 4;
    # then B0886P3N8Q (4 ratings), which leaves AH4E... with 4. After that pass A (B07DJWBYKP)
    # and D (B0BN942894) have 4 ratings left and stay: one pass each, no iterated k-core.
    # Items by first appearance: A row 1, B row 2, E (B07SZJZV88) row 5, D row 12, C (B08FC5L3RG)
    # row 13. Users: AGKH row 1, AEXE row 2, AEBM row 5, AFNL row 7.
    rows = (
        # AGKH: the first data row (A at 1588000000000) is kept.
        '0,"0,1,4,3,2","5,4,3,4,5","1588000000000,1589000000000,1595000000000,1598000000000,1605000000000"\n'
        '1,"0,1,4,3,2","5,4,5,3,4","1589500000000,1590000000000,1596000000000,1601000000000,1606000000000"\n'
        # AEBM's rows are in reverse time order in the file.
        '2,"0,2,4,3,1","4,5,5,4,3","1600000000000,1615000000000,1620000000000,1630000000000,1640000000000"\n'
        # AFNL's tie at 1600000000000 (file order E, B, C) goes by item id: B=1, E=2, C=4.
        '3,"0,1,2,4,3","5,1,5,5,4","1599000000000,1600000000000,1600000000000,1600000000000,1603000000000"\n'
    )
    id2user = [
        "AGKHLEW2SOWHNMFQIJGBECAF7INQ",
        "AEXEEHLZ5DTZIPZX6RZZOS7KTKZQ",
        "AEBMD4JEHTLN3O5ORCI3RDBVV2AQ",
        "AFNLDJIDA4ZPBJXAVRZFFIQ3GVXQ",
    ]
    id2item = ["B07DJWBYKP", "B01N1037CV", "B07SZJZV88", "B0BN942894", "B08FC5L3RG"]
    texts = [
        # The reference's recipe (see test_item_text.py): "é" becomes a space; "&amp;" "&"; "<br>"
        # and "<p>" go without a space; a list ends with "."; every field is followed by a space.
        "Pok mon Sword - Nintendo Switch Catch Pok mon & battle trainers, Dynamax battleswith up to 4 "
        "players. Video Games, Nintendo Switch, Games. A new generation of Pok mon.. ",
        # "&trade;" is non-ASCII once unescaped; empty features and description leave two spaces.
        "Mario Kart  8 Deluxe - Nintendo Switch  Video Games, Nintendo Switch.  ",
        # A tab and a newline become spaces.
        "The Legend of Zelda: Link's Awakening Relive a classic with a fresh look.   ",
        "Controller Charging Dock Charges 2 controllers, LED indicator. "
        "Video Games, PlayStation 5, Accessories, Chargers. Fits DualSense.. ",
        # "&quot;" unescaped; the escaped em dash is non-ASCII.
        'Xbox Wireless Headset   "Superb" sound   15 hours. ',
    ]
    records = check_prepared(out, rows, id2user, id2item, texts, "ms")
    assert all(r["parent_asin"] == r["item_id"] and "images" not in r and "videos" not in r for r in records)
    assert records[0]["title"] == "Pokémon Sword - Nintendo Switch"
    assert records[3]["details"] == {"Item Weight": "8.1 ounces", "Date First Available": "November 16, 2022"}

    printed = capsys.readouterr().out
    assert "Video_Games.csv.gz: 33 ratings of 6 users and 7 items" in printed
    assert "meta_Video_Games.jsonl.gz: 7 item records, 6 of them rated" in printed
    # The reference also drops AGKH (its header=1 drops the first row) but keeps AH4E (counted
    # before its item filter): A, B, C, D and E all stay.
    assert "amzn23_game: the reference's steps keep 5 items of these files (the paper: 25,612)" in printed
    assert "dropped 1 interaction(s) with 1 item(s) without metadata" in printed
    assert "dropped 1 item(s) with fewer than 5 interactions (4 interactions)" in printed
    assert "dropped 2 user(s) with fewer than 5 interactions (8 interactions)" in printed
    # Every kept user rated 5 distinct items.
    assert "last item 0.00%, second-to-last 0.00%" in printed
    assert "amzn23_game: 4 users, 5 items, 20 interactions, sequence length mean 5.0 / median 5.0" in printed
    assert "WARNING: amzn23_game has 5 items where the paper reports 25,612 (-25,607)" in printed


def test_steam_fixture_exact_outputs(tmp_path: Path, capsys) -> None:
    assert prepare(tmp_path, FIXTURES, "steam") == 0
    out = tmp_path / "steam"
    # Kept: Chaos Syren, Jack O'Neill (5 once the game without metadata is gone) and sunny_day.
    # Dropped: Mr. "Q" O'Brien (4 once the year-less review is gone) and lurker (3 reviews).
    # Items by first appearance: 730 (line 1), 35140 (2), 359550 (4), 620 (10), 4000 (13), 105600 (15).
    # Timestamps are UTC midnights (date -u -d 2016-05-30 +%s = 1464566400, ...).
    rows = (
        # 2017-12-17 holds 359550 (line 4) then 35140 (line 7): ties go by item id, 1 before 2.
        '0,"0,3,1,2,5","1,1,1,1,1","1464566400,1509580800,1513468800,1513468800,1515024000"\n'
        '1,"1,3,4,5,0","1,1,1,1,1","1419465600,1425168000,1425168000,1434326400,1435968000"\n'
        # "Posted November 5, 2011." ... "Posted May 5, 2012."
        '2,"2,3,5,4,1","1,1,1,1,1","1320451200,1324684800,1325376000,1330732800,1336176000"\n'
    )
    texts = [
        "Counter-Strike: Global Offensive | Valve | Valve | Action, Free to Play | FPS, Shooter, "
        "Multiplayer | Multi-player, Steam Achievements",
        "Batman: Arkham Asylum Game of the Year Edition | Warner Bros. Interactive Entertainment, "
        "Square Enix | Rocksteady Studios, Feral Interactive (Mac) | Action | Action, Batman, Stealth | "
        "Single-player, Steam Achievements, Steam Trading Cards",
        "Tom Clancy's Rainbow Six\u00ae Siege | Ubisoft | Ubisoft Montreal | Action | FPS, Tactical | "
        "Online Multi-Player",
        "Portal 2 | Valve | Valve | Action, Adventure | Puzzle, Co-op | Single-player, Co-op",
        "Garry's Mod | Valve | Facepunch Studios | Indie, Simulation | Sandbox, Physics | "
        "Single-player, Multi-player",
        # No developer and no specs on this line.
        "Terraria | Re-Logic | Action, Adventure, Indie, RPG | Sandbox, Survival, 2D",
    ]
    records = check_prepared(
        out, rows, ["Chaos Syren", "Jack O'Neill", "sunny_day"],
        ["730", "35140", "359550", "620", "4000", "105600"], texts, "s",
    )
    assert records[2]["app_name"] == "Tom Clancy's Rainbow Six\u00ae Siege"
    assert records[0]["metascore"] == 83 and records[0]["early_access"] is False

    printed = capsys.readouterr().out
    assert "steam_games.json.gz: 8 games, 7 distinct ids" in printed
    assert "steam_games.json.gz: dropped 1 game line(s) without an id (first: line 4)" in printed
    assert "steam_reviews.json.gz: 24 reviews" in printed
    assert (
        "steam_reviews.json.gz: dropped 1 review(s) with a date without a year "
        "(first: line 9: 'Posted July 15.')" in printed
    )
    assert "steam: dropped 1 review(s) of 1 game(s) without metadata" in printed
    assert "steam: dropped 2 user(s) with fewer than 5 reviews (7 reviews)" in printed
    assert "steam: 3 users, 6 items, 15 interactions" in printed
    assert "WARNING: steam has 6 items where the paper reports 11,808" in printed


@pytest.mark.parametrize(
    "date, expected",
    [
        ("2017-12-17", 1513468800),
        ("Posted November 5, 2011.", 1320451200),
        ("November 5, 2011", 1320451200),
        ("Posted Nov 5, 2011.", 1320451200),
        ("2012-02-29", 1330473600),
        ("Posted July 15.", None),
        ("July 15", None),
    ],
)
def test_review_timestamp(date: str, expected) -> None:
    assert steam.review_timestamp(date) == expected


@pytest.mark.parametrize("date", ["", "yesterday", "Posted Smarch 5, 2011.", "2011-02-29", "2017/12/17"])
def test_review_timestamp_rejects_other_text(date: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        steam.review_timestamp(date)


def test_unreadable_review_dates_are_dropped_and_counted(tmp_path: Path, capsys) -> None:
    path = tmp_path / "steam_reviews.json"
    path.write_text(
        "{'username': 'a', 'product_id': '1', 'date': '2017-12-17'}\n"
        "{'username': 'b', 'product_id': '1', 'date': 'soon'}\n"
        "{'username': 'c', 'product_id': '1'}\n"
        "{'product_id': '1', 'date': '2017-12-17'}\n"
    )
    reviews = steam.read_reviews(path)
    assert reviews.to_dict("list") == {
        "user_id": ["a"], "item_id": ["1"], "rating": [1.0], "timestamp": [1513468800],
    }
    printed = capsys.readouterr().out
    assert "dropped 1 review(s) with an unreadable date (first: line 2: 'soon')" in printed
    assert "dropped 1 review(s) without a date (first: line 3)" in printed
    assert "dropped 1 review(s) without a username or product_id (first: line 4)" in printed


@pytest.mark.parametrize(
    "line, message",
    [
        ("{'username': 'O'Brien'}", "line 2: not a Python dict literal"),
        ('{"a": nan}', "line 2: not a Python dict literal"),
        ("['a list']", "line 2: expected a dict, got a list"),
    ],
)
def test_steam_line_that_is_not_a_dict_literal_is_an_error(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "steam_games.json"
    path.write_text("{u'id': u'1'}\n" + line + "\n")
    with pytest.raises(DatasetFormatError, match=message) as error:
        steam.read_games(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("user_id,item_id,rating,timestamp\nu,i,5.0,1\n", "expected the header user_id,parent_asin,rating,timestamp"),
        ("user_id,parent_asin,rating,timestamp\nu,i,5.0,1\nu,j,five,2\n", "line 3: rating 'five' is not a number"),
        ("user_id,parent_asin,rating,timestamp\nu,i,5.0,\n", "line 2: timestamp '' is not a number"),
        ("user_id,parent_asin,rating,timestamp\nu,,5.0,1\n", "line 2: empty parent_asin"),
        ("user_id,parent_asin,rating,timestamp\n", "holds no ratings"),
        ("", "is empty"),
    ],
)
def test_bad_ratings_file_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "Video_Games.csv.gz"
    path.write_bytes(gzip.compress(text.encode()))
    with pytest.raises(DatasetFormatError, match=message) as error:
        amazon2023.read_ratings(path)
    assert str(path) in str(error.value)


def test_metadata_lines_without_a_record_are_skipped_and_counted(tmp_path: Path, capsys) -> None:
    path = tmp_path / "meta_Video_Games.jsonl"
    path.write_text(
        '{"parent_asin": "A", "title": "first", "images": [], "videos": []}\n'
        '{"parent_asin": "B", "title": \n'
        "\n"
        '["not", "an", "object"]\n'
        '{"title": "no parent_asin"}\n'
        '{"parent_asin": "A", "title": "second"}\n'
    )
    assert amazon2023.read_metadata(path, {"A", "C"}) == {"A": {"parent_asin": "A", "title": "second"}}
    assert "skipped 3 line(s) that are not a JSON object with a parent_asin, the first at line 2" in (
        capsys.readouterr().out
    )
    path.write_text("not json\n")
    with pytest.raises(DatasetFormatError, match="no JSON item record with a parent_asin"):
        amazon2023.read_metadata(path, {"A"})


def test_uncompressed_metadata_of_the_mirror_gives_the_same_dataset(raw_dir: Path, tmp_path: Path) -> None:
    assert prepare(tmp_path / "gz", raw_dir, "amzn23_game") == 0
    gz = raw_dir / "meta_Video_Games.jsonl.gz"
    (raw_dir / "meta_Video_Games.jsonl").write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    assert prepare(tmp_path / "plain", raw_dir, "amzn23_game") == 0
    for name in ("sasrec_format.csv", "data_maps.json", "item_metadata.jsonl"):
        assert (tmp_path / "plain/amzn23_game" / name).read_bytes() == (tmp_path / "gz/amzn23_game" / name).read_bytes()


def output_files(out_root: Path) -> List[Path]:
    return sorted(p for p in out_root.rglob("*") if p.is_file() and "text_cache" not in p.parts)


def test_rerun_without_changes_does_no_work(raw_dir: Path, tmp_path: Path, capsys) -> None:
    out_root = tmp_path / "out"
    assert prepare(out_root, raw_dir, "amzn23_game", "steam") == 0
    files = output_files(out_root)
    assert len(files) == 10  # five per dataset, its manifest included
    for path in files:
        os.utime(path, (0, 0))
    for path in raw_dir.iterdir():  # a rerun must neither read nor download raw files
        path.unlink()
    capsys.readouterr()

    assert prepare(out_root, raw_dir, "amzn23_game", "steam") == 0
    printed = capsys.readouterr().out
    assert "amzn23_game: already prepared" in printed and "steam: already prepared" in printed
    assert "WARNING" not in printed
    assert output_files(out_root) == files and all(p.stat().st_mtime == 0 for p in files)
    assert not any(raw_dir.iterdir())


class FakeEncoder:
    """A deterministic stand-in for a text encoder: each text's length, its count of 'a's, 1."""

    name = cache_key = "fake"
    dim = 3
    metadata: Dict = {}

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([[len(t), t.count("a"), 1.0] for t in texts])


def test_embeddings_of_the_item_texts_and_no_work_on_rerun(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(preprocess_public_data, "get_text_encoder", lambda name: FakeEncoder())
    monkeypatch.setattr(preprocess_public_data, "check_text_encoder_name", lambda name: None)
    assert prepare(tmp_path, FIXTURES, "steam", model="fake") == 0
    texts = read_json(tmp_path / "steam" / "item_texts.json")
    table = load_dataset_text_embeddings(tmp_path / "steam", "fake", 6)
    assert torch.equal(table[0], torch.zeros(3))
    # Row k + 1 embeds item k: "Portal 2 | Valve | ..." is item 3.
    assert table[4].tolist() == [len(texts[3]), texts[3].count("a"), 1.0]

    files = output_files(tmp_path)
    for path in files:
        os.utime(path, (0, 0))
    monkeypatch.setattr(
        preprocess_public_data, "get_text_encoder", lambda name: pytest.fail("encoder loaded on a rerun")
    )
    assert prepare(tmp_path, FIXTURES, "steam", model="fake") == 0
    assert "steam: fake item text embeddings are up to date" in capsys.readouterr().out
    assert all(p.stat().st_mtime == 0 for p in files)


@pytest.mark.parametrize("dataset, file_name", [(d, f) for d, files in DATASET_FILES.items() for f in files])
def test_truncated_raw_file_is_a_clear_error_without_outputs(
    raw_dir: Path, tmp_path: Path, capsys, dataset: str, file_name: str
) -> None:
    path = raw_dir / file_name
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    out_root = tmp_path / "out"
    assert prepare(out_root, raw_dir, dataset) == 1
    assert f"preprocess_public_data.py: {path}: truncated or corrupt gzip file" in one_error_line(capsys)
    assert not (out_root / dataset).exists()


SIZES = {
    "Video_Games.csv.gz": "about 25 MB",
    "meta_Video_Games.jsonl.gz": "about 100 MB",
    "steam_reviews.json.gz": "about 1.3 GB",
    "steam_games.json.gz": "about 3 MB",
}


@pytest.mark.parametrize("dataset, missing", [(d, [f]) for d, files in DATASET_FILES.items() for f in files] + [(d, list(files)) for d, files in DATASET_FILES.items()])
def test_missing_raw_files_are_listed_together_without_outputs(
    raw_dir: Path, tmp_path: Path, capsys, dataset: str, missing: List[str]
) -> None:
    for name in missing:
        (raw_dir / name).unlink()
    left = sorted(p.name for p in raw_dir.iterdir())
    out_root = tmp_path / "out"
    assert prepare(out_root, raw_dir, dataset) == 1
    lines = one_error_line(capsys).splitlines()
    assert lines[0] == (
        f"preprocess_public_data.py: {dataset} needs 2 raw file(s); {len(missing)} of them are not in "
        f"{raw_dir} and could not be downloaded: fetch them by hand and put them there (or pass a folder "
        f"holding them with --raw_dir), then rerun:"
    )
    listed = [line.strip().split(" ")[0] for line in lines[1:]]
    assert listed == missing  # every missing file, each once, and no file that is there
    for name, line in zip(missing, lines[1:]):
        assert f"{name} ({SIZES[name]}) from {OFFLINE}/{name}" in line and "Connection refused" in line
    assert not (out_root / dataset).exists()
    assert sorted(p.name for p in raw_dir.iterdir()) == left


def test_missing_metadata_names_every_mirror_with_its_size(raw_dir: Path, tmp_path: Path, capsys) -> None:
    (raw_dir / "meta_Video_Games.jsonl.gz").unlink()
    assert prepare(tmp_path / "out", raw_dir, "amzn23_game") == 1
    assert one_error_line(capsys).splitlines()[1].startswith(
        f"  meta_Video_Games.jsonl.gz (about 100 MB) from {OFFLINE}/meta_Video_Games.jsonl.gz "
        f"or meta_Video_Games.jsonl (about 400 MB) from {OFFLINE}/mirror/meta_Video_Games.jsonl ["
    )


def test_fetch_raw_files_falls_back_to_the_next_mirror(tmp_path: Path) -> None:
    source = tmp_path / "source" / "meta_X.jsonl"
    source.parent.mkdir()
    source.write_text('{"parent_asin": "A"}\n')
    raw = tmp_path / "raw"
    files = [RawFile((f"{OFFLINE}/meta_X.jsonl.gz", source.as_uri()), ("1 GB", "4 GB"))]
    assert fetch_raw_files("x", files, raw) == [raw / "meta_X.jsonl"]
    assert (raw / "meta_X.jsonl").read_text() == source.read_text()
    # A file already there is used as it is, whichever mirror it came from.
    source.unlink()
    assert fetch_raw_files("x", files, raw) == [raw / "meta_X.jsonl"]


def test_default_run_is_the_papers_four_datasets() -> None:
    assert preprocess_public_data.parse_args([]).dataset == [
        "amzn23_office", "amzn23_game", "amzn23_music", "steam"
    ]
    local = preprocess_public_data.parse_args(["--local_dir", "x", "--dataset_name", "y"])
    assert local.dataset == []
    # GroupLens' names name the datasets of the same data, each once.
    assert preprocess_public_data.parse_args(["--dataset", "ml-100k", "--dataset", "ml100k"]).dataset == ["ml100k"]
    assert preprocess_public_data.parse_args(["--dataset", "ml-1m"]).dataset == ["ml1m"]


def test_item_count_warning_only_on_a_mismatch(capsys) -> None:
    preprocess_public_data.warn_on_item_count("d", 25_612, 25_612, "why")
    assert capsys.readouterr().out == ""
    preprocess_public_data.warn_on_item_count("d", 25_610, 25_612, "why")
    assert capsys.readouterr().out.startswith("WARNING: d has 25,610 items where the paper reports 25,612 (-2)")


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves ``payload``; honours ``Range: bytes=N-`` with a 206 unless ``ignore_range``."""

    payload = b""
    ignore_range = False
    ranges: List[str] = []

    def do_GET(self) -> None:
        requested = self.headers.get("Range")
        type(self).ranges.append(requested)
        start = 0
        if requested and not self.ignore_range:
            start = int(requested.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server() -> Iterator[http.server.HTTPServer]:
    RangeHandler.payload = gzip.compress(bytes(range(256)) * 4000)
    RangeHandler.ignore_range = False
    RangeHandler.ranges = []
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("ignore_range", [False, True])
def test_download_resumes_a_broken_transfer(tmp_path: Path, server, ignore_range: bool) -> None:
    RangeHandler.ignore_range = ignore_range
    payload = RangeHandler.payload
    dest = tmp_path / "steam_games.json.gz"
    (tmp_path / "steam_games.json.gz.part").write_bytes(payload[:1000])
    url = f"http://127.0.0.1:{server.server_address[1]}/steam_games.json.gz"
    assert download(url, dest).read_bytes() == payload
    assert RangeHandler.ranges == ["bytes=1000-"]
    assert not (tmp_path / "steam_games.json.gz.part").exists()


def test_download_removes_a_corrupt_file(tmp_path: Path, server) -> None:
    RangeHandler.payload = RangeHandler.payload[:-100]
    url = f"http://127.0.0.1:{server.server_address[1]}/steam_games.json.gz"
    with pytest.raises(DownloadError, match="is corrupt"):
        download(url, tmp_path / "steam_games.json.gz")
    assert not any(tmp_path.iterdir())


def test_a_local_folder_is_refused_where_a_public_dataset_was_prepared(raw_dir: Path, tmp_path: Path, capsys) -> None:
    import hashlib

    assert prepare(tmp_path / "out", raw_dir, "steam") == 0
    folder = tmp_path / "out" / "steam"
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    local = tmp_path / "local"
    local.mkdir()
    (local / "interactions.csv").write_text("user_id,item_id\nu1,a\nu1,b\n")
    (local / "items.jsonl").write_text('{"item_id": "a", "title": "A"}\n{"item_id": "b", "title": "B"}\n')
    argv = ["--local_dir", str(local), "--dataset_name", "steam", "--data_root", str(tmp_path / "out"),
            "--text_embedding_model", "none"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        run_command("preprocess_public_data.py", preprocess_public_data.main, argv)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == (
        f"preprocess_public_data.py: {folder} is stale: it was prepared from the public dataset steam, not from the "
        f"local folder {local.resolve()}; prepare it again: python3 preprocess_public_data.py --local_dir {local} "
        f"--dataset_name steam --data_root {tmp_path / 'out'} --force (details: --debug)\n"
    )
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()} == before


def test_a_changed_raw_file_makes_a_public_dataset_stale(raw_dir: Path, tmp_path: Path, capsys) -> None:
    assert prepare(tmp_path / "out", raw_dir, "steam") == 0
    games = raw_dir / "steam_games.json.gz"
    os.utime(games, ns=(0, 0))  # touched, same bytes: not a change
    assert prepare(tmp_path / "out", raw_dir, "steam") == 0
    games.write_bytes(games.read_bytes() + b"")  # rewritten with the same bytes: still the same
    assert prepare(tmp_path / "out", raw_dir, "steam") == 0
    with gzip.open(games, "ab") as f:
        f.write(b"{'id': '999', 'app_name': 'New'}\n")
    capsys.readouterr()
    assert prepare(tmp_path / "out", raw_dir, "steam") == 1
    assert f"is stale: its source {games.resolve()} changed since it was prepared" in capsys.readouterr().err


def test_greb_refuses_a_local_folder_where_the_public_dataset_of_its_name_was_prepared(raw_dir: Path, tmp_path: Path) -> None:
    from generative_recommenders import greb
    from generative_recommenders.data.sequence_format import DatasetFormatError

    assert prepare(tmp_path / "data", raw_dir, "steam") == 0
    local = tmp_path / "mine" / "steam"
    local.mkdir(parents=True)
    (local / "interactions.csv").write_text("user_id,item_id\nu1,a\nu1,b\n")
    (local / "items.jsonl").write_text('{"item_id": "a", "title": "A"}\n{"item_id": "b", "title": "B"}\n')
    manifest = (tmp_path / "data" / "steam" / "manifest.json").read_bytes()
    with pytest.raises(DatasetFormatError) as refused:
        greb.prepare_datasets(greb.parse_args(["--local_dir", str(local), "--data_root", str(tmp_path / "data")]))
    assert str(refused.value) == (
        f"{tmp_path / 'data' / 'steam'} is stale: it was prepared from the public dataset steam, not from the local "
        f"folder {local.resolve()}; prepare it again: python3 preprocess_public_data.py --local_dir {local} "
        "--dataset_name steam --force"
    )
    assert (tmp_path / "data" / "steam" / "manifest.json").read_bytes() == manifest
