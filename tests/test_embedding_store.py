import hashlib
import json
import re
from pathlib import Path
from typing import List, Optional, Sequence

import pandas as pd
import pytest
import torch

from generative_recommenders.data.sequence_format import write_sequence_dataset
from generative_recommenders.text.embedding_store import (
    EmbeddingFileError,
    compute_item_text_embeddings,
    embedding_file,
    load_item_text_embeddings,
    texts_hash,
)

TEXTS = ["bb", "a", "dddd", "a", "ccc", "eeeee"]


def fake_embedding(text: str) -> torch.Tensor:
    return torch.tensor([len(text), sum(map(ord, text)) % 101, ord(text[0])], dtype=torch.float32)


class FakeEncoder:
    """Embeds a text by its length and characters; records what it was asked to encode."""

    def __init__(
        self, name: str = "fake", fail_after_calls: Optional[int] = None, nan: bool = False
    ) -> None:
        self.name = name
        self.cache_key = f"{name}|mean|v1"
        self.dim = 3
        self.metadata = {
            "encoder": name,
            "model": "org/fake-model",
            "pooling": "mean",
            "normalized": False,
            "dim": 3,
        }
        self.fail_after_calls = fail_after_calls
        self.nan = nan
        self.batches: List[List[str]] = []

    @property
    def encoded(self) -> List[str]:
        return [text for batch in self.batches for text in batch]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if self.fail_after_calls is not None and len(self.batches) >= self.fail_after_calls:
            raise RuntimeError("interrupted")
        self.batches.append(list(texts))
        out = torch.stack([fake_embedding(t) for t in texts])
        if self.nan:
            out[0, 1] = float("nan")
        return out


def compute(tmp_path: Path, encoder: FakeEncoder, texts=TEXTS, chunk_size: int = 2) -> Path:
    return compute_item_text_embeddings(
        texts, encoder, tmp_path / "toy", tmp_path / "cache", chunk_size=chunk_size
    )


def test_layout_and_sidecar(tmp_path: Path, capsys) -> None:
    encoder = FakeEncoder()
    path = compute(tmp_path, encoder)
    assert path == tmp_path / "toy" / "item_text_embeddings_fake.pt"
    table = torch.load(path, weights_only=True)
    assert table.dtype == torch.float32 and table.shape == (len(TEXTS) + 1, 3)
    assert torch.equal(table[0], torch.zeros(3))
    for k, text in enumerate(TEXTS):
        assert torch.equal(table[k + 1], fake_embedding(text))
    # Deduplicated, sorted by length, in chunks of 2.
    assert encoder.batches == [["a", "bb"], ["ccc", "dddd"], ["eeeee"]]
    assert "6 item texts computed, 0 from the cache" in capsys.readouterr().out

    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar == {
        "model": "org/fake-model",  # the encoder's metadata names the underlying model
        "encoder": "fake",
        "cache_key": "fake|mean|v1",
        "dim": 3,
        "num_items": len(TEXTS),
        "texts_hash": texts_hash(TEXTS),
        "pooling": "mean",
        "normalized": False,
        "tensor_sha256": hashlib.sha256(table.numpy().tobytes()).hexdigest(),
    }


def test_metadata_contradicting_checked_fields_is_refused(tmp_path: Path) -> None:
    encoder = FakeEncoder()
    encoder.metadata["num_items"] = 99
    with pytest.raises(ValueError, match="contradicts its \\['num_items'\\]"):
        compute(tmp_path, encoder)
    assert encoder.batches == []


def test_rerun_with_unchanged_texts_encodes_nothing(tmp_path: Path, capsys) -> None:
    path = compute(tmp_path, FakeEncoder())
    first = path.read_bytes()
    encoder = FakeEncoder()
    assert compute(tmp_path, encoder) == path
    assert encoder.batches == []
    assert path.read_bytes() == first
    assert "0 item texts computed, 6 from the cache" in capsys.readouterr().out


def test_one_changed_text_encodes_one_text(tmp_path: Path) -> None:
    compute(tmp_path, FakeEncoder())
    changed = ["new"] + TEXTS[1:]
    encoder = FakeEncoder()
    table = torch.load(compute(tmp_path, encoder, changed), weights_only=True)
    assert encoder.encoded == ["new"]
    assert torch.equal(table[1], fake_embedding("new"))
    assert json.loads(embedding_file(tmp_path / "toy", "fake").with_suffix(".json").read_text())[
        "texts_hash"
    ] == texts_hash(changed)


def test_interrupted_run_resumes(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="interrupted"):
        compute(tmp_path, FakeEncoder(fail_after_calls=1))
    assert len(list((tmp_path / "cache" / "fake_mean_v1").glob("shard-*.pt"))) == 1
    assert not embedding_file(tmp_path / "toy", "fake").exists()

    encoder = FakeEncoder()
    resumed = torch.load(compute(tmp_path, encoder), weights_only=True)
    assert encoder.encoded == ["ccc", "dddd", "eeeee"]
    uninterrupted = torch.load(compute(tmp_path / "fresh", FakeEncoder()), weights_only=True)
    assert torch.equal(resumed, uninterrupted)


def test_nan_from_encoder_is_an_error_and_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(EmbeddingFileError, match="NaN or inf for 1 of 2 texts"):
        compute(tmp_path, FakeEncoder(nan=True))
    assert not embedding_file(tmp_path / "toy", "fake").exists()
    assert not list((tmp_path / "cache").rglob("*.pt"))


def test_wrong_shape_from_encoder_is_an_error(tmp_path: Path) -> None:
    encoder = FakeEncoder()
    encoder.dim = encoder.metadata["dim"] = 4
    with pytest.raises(EmbeddingFileError, match=r"shape \(2, 3\).*expected.*\(2, 4\)"):
        compute(tmp_path, encoder)


def test_unreadable_cache_shard_is_named(tmp_path: Path) -> None:
    shard = tmp_path / "cache" / "fake_mean_v1" / "shard-0.pt"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b"garbage")
    with pytest.raises(EmbeddingFileError, match=re.escape(str(shard))):
        compute(tmp_path, FakeEncoder())


def test_hf_names_map_to_safe_file_names(tmp_path: Path) -> None:
    assert embedding_file(tmp_path, "hf:BAAI/bge-small") == (
        tmp_path / "item_text_embeddings_hf_BAAI_bge-small.pt"
    )
    path = compute(tmp_path, FakeEncoder(name="hf:BAAI/bge-small"))
    assert path.name == "item_text_embeddings_hf_BAAI_bge-small.pt"
    assert path.with_suffix(".json").is_file()
    assert (tmp_path / "cache" / "hf_BAAI_bge-small_mean_v1").is_dir()


def test_texts_hash_is_unambiguous_and_ordered() -> None:
    assert texts_hash(["ab", "c"]) != texts_hash(["a", "bc"])
    assert texts_hash(["a", "b"]) != texts_hash(["b", "a"])
    assert texts_hash(["a", ""]) != texts_hash(["a"])
    assert texts_hash(["x"]) == texts_hash(["x"])


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    compute(tmp_path, FakeEncoder())
    return tmp_path / "toy"


def load(data_dir: Path, num_items: int = len(TEXTS), hash_: str = texts_hash(TEXTS)):
    return load_item_text_embeddings(data_dir, "fake", num_items, hash_)


def test_load_round_trip(stored: Path) -> None:
    table = load(stored)
    assert table.shape == (len(TEXTS) + 1, 3)
    assert torch.equal(table[2], fake_embedding(TEXTS[1]))


def test_load_refuses_wrong_item_count(stored: Path) -> None:
    path = embedding_file(stored, "fake")
    with pytest.raises(EmbeddingFileError, match=re.escape(str(path)) + ".*7 rows.*5 items"):
        load(stored, num_items=5)


def test_load_refuses_changed_texts(stored: Path) -> None:
    path = embedding_file(stored, "fake")
    with pytest.raises(EmbeddingFileError, match=re.escape(str(path)) + ".*item texts changed"):
        load(stored, hash_=texts_hash(["other"] + TEXTS[1:]))


def test_load_refuses_nan_rows(stored: Path) -> None:
    path = embedding_file(stored, "fake")
    table = torch.load(path, weights_only=True)
    table[3, 0] = float("nan")
    torch.save(table, path)
    with pytest.raises(EmbeddingFileError, match=re.escape(str(path)) + ".*NaN.*row 3"):
        load(stored)


def test_load_refuses_nonzero_padding_row_and_wrong_rank(stored: Path) -> None:
    path = embedding_file(stored, "fake")
    table = torch.load(path, weights_only=True)
    table[0, 0] = 1.0
    torch.save(table, path)
    with pytest.raises(EmbeddingFileError, match="row 0"):
        load(stored)
    torch.save(table[:, 0], path)
    with pytest.raises(EmbeddingFileError, match="expected a 2-D float tensor"):
        load(stored)


def test_load_refuses_missing_or_garbled_sidecar(stored: Path) -> None:
    sidecar = embedding_file(stored, "fake").with_suffix(".json")
    sidecar.write_text("{oops")
    with pytest.raises(EmbeddingFileError, match=re.escape(str(sidecar)) + ".*not a valid"):
        load(stored)
    sidecar.unlink()
    with pytest.raises(EmbeddingFileError, match=re.escape(str(sidecar)) + " not found"):
        load(stored)


def test_load_missing_file_says_how_to_compute_it(tmp_path: Path) -> None:
    # A folder without a manifest: the commands for a public dataset and for a local folder.
    with pytest.raises(EmbeddingFileError) as error:
        load(tmp_path / "toy")
    assert str(error.value).endswith(
        f"compute the item text embeddings with python3 preprocess_public_data.py --dataset toy "
        f"--data_root {tmp_path} --text_embedding_model fake, or for your own data --local_dir DIR "
        f"--dataset_name toy --data_root {tmp_path} --text_embedding_model fake"
    )
    # A prepared local dataset: the command that prepared it, which argparse accepts.
    command = "python3 preprocess_public_data.py --local_dir data/shop --dataset_name shop"
    interactions = pd.DataFrame({"user_id": ["u"] * 2, "item_id": ["a", "b"], "rating": 1.0, "timestamp": [1, 2]})
    write_sequence_dataset(tmp_path / "shop", interactions, prepare_command=command)
    with pytest.raises(EmbeddingFileError) as error:
        load(tmp_path / "shop")
    assert str(error.value).endswith(f"with {command} --text_embedding_model fake")


def test_a_table_copied_from_another_dataset_under_the_own_sidecar_is_refused(tmp_path: Path, capsys) -> None:
    """Same item count, other texts: the sidecar's texts hash still matches, its tensor hash does not."""
    own = compute(tmp_path, FakeEncoder())
    compute_item_text_embeddings(
        [text + "x" for text in TEXTS], FakeEncoder(), tmp_path / "other", tmp_path / "cache", chunk_size=2
    )
    copied = embedding_file(tmp_path / "other", "fake")
    own.write_bytes(copied.read_bytes())
    sidecar = json.loads(own.with_suffix(".json").read_text())
    found = hashlib.sha256(torch.load(copied, weights_only=True).numpy().tobytes()).hexdigest()
    with pytest.raises(EmbeddingFileError) as refused:
        load(tmp_path / "toy")
    assert str(refused.value) == (
        f"{own}: not the table its sidecar describes (tensor sha256 {found[:12]}..., {own.stem}.json records "
        f"{sidecar['tensor_sha256'][:12]}...): copied from another dataset or changed; rerun python3 "
        f"preprocess_public_data.py --dataset toy --data_root {tmp_path} --text_embedding_model fake, or for "
        f"your own data --local_dir DIR --dataset_name toy --data_root {tmp_path} --text_embedding_model fake"
    )


def test_a_sidecar_without_a_tensor_hash_loads_with_a_warning(stored: Path, caplog) -> None:
    sidecar_path = embedding_file(stored, "fake").with_suffix(".json")
    sidecar = json.loads(sidecar_path.read_text())
    del sidecar["tensor_sha256"]
    sidecar_path.write_text(json.dumps(sidecar))
    assert torch.equal(load(stored)[2], fake_embedding(TEXTS[1]))
    assert f"{sidecar_path} records no hash of item_text_embeddings_fake.pt" in caplog.text
