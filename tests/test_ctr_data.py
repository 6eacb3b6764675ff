"""The CTR task's samples: exact samples on a hand-made dataset, negatives, splits, categories."""

import json

import numpy as np
import pytest
import torch

from generative_recommenders.data.ctr import CTRView, build_ctr_samples, collate_ctr, read_item_categories
from generative_recommenders.data.sequence_format import DatasetFormatError, SequenceDataset


def dataset(sequences, num_items):
    return SequenceDataset.from_item_sequences("hand", num_items, sequences)


HAND = dataset([[0, 1, 2, 3, 4], [2, 3]], num_items=6)


def positives(samples):
    keep = samples.labels == 1
    return (
        samples.user_index[keep].tolist(),
        samples.history_ids[keep].tolist(),
        samples.history_lengths[keep].tolist(),
        samples.target_ids[keep].tolist(),
    )


def test_exact_samples_on_a_hand_made_dataset():
    # Histories of at most 2 items, ids + 1, right-padded.
    train = build_ctr_samples(HAND, "train", max_history_length=2, seed=0)
    assert positives(train) == ([0, 0], [[1, 0], [1, 2]], [1, 2], [2, 3])
    valid = build_ctr_samples(HAND, "valid", max_history_length=2, seed=0)
    assert positives(valid) == ([0], [[2, 3]], [2], [4])
    test = build_ctr_samples(HAND, "test", max_history_length=2, seed=0)
    assert positives(test) == ([0, 1], [[3, 4], [3, 0]], [2, 1], [5, 4])
    # Each positive is followed by its negative, which shares its history.
    assert test.labels.tolist() == [1, 0, 1, 0]
    assert test.history_ids[1].tolist() == test.history_ids[0].tolist()
    assert test.user_index.tolist() == [0, 0, 1, 1]


def random_dataset(num_users=200, num_items=12, seed=0):
    rng = np.random.default_rng(seed)
    return dataset(
        [rng.permutation(num_items)[: rng.integers(2, num_items)] for _ in range(num_users)], num_items
    )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_negatives_are_never_in_the_users_sequence(split, seed):
    # GRE-B's rule: a negative is an item the user never had, before or after the position.
    data = random_dataset(seed=seed)
    samples = build_ctr_samples(data, split, seed=seed)
    users, neg = samples.user_index[1::2], samples.target_ids[1::2]
    assert samples.labels[1::2].tolist() == [0.0] * len(neg)
    assert neg.min() >= 1 and neg.max() <= 12
    for user, negative in zip(users.tolist(), neg.tolist()):
        assert negative - 1 not in data.item_ids[user]


def test_negatives_are_uniform_over_the_unseen_items():
    # One user of items {0, 1} in 5: negatives are items 2, 3 and 4 (ids 3-5), each about a third.
    data = dataset([[0, 1] * 3000 + [0]], num_items=5)
    negatives = build_ctr_samples(data, "train", seed=0).target_ids[1::2]
    counts = np.bincount(negatives, minlength=6)
    assert counts[:3].sum() == 0 and counts[3:].sum() == len(negatives)
    assert np.allclose(counts[3:] / len(negatives), 1 / 3, atol=0.02)


def test_seeded_and_reproducible():
    data = random_dataset()
    first = build_ctr_samples(data, "train", seed=7)
    again = build_ctr_samples(data, "train", seed=7)
    other = build_ctr_samples(data, "train", seed=8)
    assert np.array_equal(first.target_ids, again.target_ids)
    assert not np.array_equal(first.target_ids, other.target_ids)
    assert np.array_equal(first.target_ids[0::2], other.target_ids[0::2])  # same positives


def test_validation_and_test_positions_never_train():
    # Items are distinct within a user, so (user, positive target) names a position.
    data = random_dataset()
    by_split = {}
    for split in ("train", "valid", "test"):
        s = build_ctr_samples(data, split)
        keep = s.labels == 1
        by_split[split] = set(zip(s.user_index[keep].tolist(), s.target_ids[keep].tolist()))
    assert not by_split["train"] & (by_split["valid"] | by_split["test"])
    assert not by_split["valid"] & by_split["test"]
    expected_train = sum(max(0, len(s) - 3) for s in data.item_ids)
    assert len(by_split["train"]) == expected_train


def test_a_user_with_every_item_cannot_have_negatives():
    with pytest.raises(DatasetFormatError, match="user index 0 has every item"):
        build_ctr_samples(dataset([[0, 1, 0]], 2), "test")


def write_metadata(folder, records):
    folder.mkdir(exist_ok=True)
    (folder / "item_metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_categories_from_genres_reach_the_batch(tmp_path):
    write_metadata(
        tmp_path,
        [
            {"item_id": f"m{k}", "title": f"Movie {k}", "genres": genres}
            for k, genres in enumerate([["Comedy", "Drama"], ["Action"], [], ["Drama"], ["Comedy"], ["Action"]])
        ],
    )
    categories = read_item_categories(tmp_path, 6)
    assert categories.names == ["Action", "Comedy", "Drama"] and categories.source_field == "genres"
    # Every category of an item (row 0 padding, item 2 has none), right-padded.
    assert categories.ids.tolist() == [[0, 0], [2, 3], [1, 0], [0, 0], [3, 0], [2, 0], [1, 0]]
    view = CTRView(HAND, "test", max_history_length=2, seed=0, categories=categories)
    assert view.has_categories and view.num_categories == 3
    batch = collate_ctr([view[i] for i in range(len(view))])
    assert batch["history_ids"].tolist() == [[3, 4], [3, 4], [3, 0], [3, 0]]
    assert batch["history_categories"].tolist() == [[[0, 0], [3, 0]]] * 2 + [[[0, 0], [0, 0]]] * 2
    assert batch["target_categories"][0::2].tolist() == [[2, 0], [3, 0]]
    assert batch["labels"].dtype == torch.float32 and batch["history_lengths"].tolist() == [2, 2, 1, 1]


def test_without_categories_the_view_says_so(tmp_path):
    write_metadata(tmp_path, [{"item_id": f"a{k}", "title": "Stapler", "brand": "X"} for k in range(6)])
    assert read_item_categories(tmp_path, 6) is None
    assert read_item_categories(tmp_path / "absent", 6) is None
    view = CTRView(HAND, "valid", categories=None)
    assert not view.has_categories and view.num_categories == 0
    batch = collate_ctr([view[0], view[1]])
    assert "history_categories" not in batch and "target_categories" not in batch
    with pytest.raises(DatasetFormatError, match="holds 6 items, the dataset has 7"):
        read_item_categories(tmp_path, 7)
