"""DSSM, DIN and DeepFM: hand cases, padding, the FM identity, text paths, and learning on structured data."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from generative_recommenders.data.ctr import CTRView, collate_ctr
from generative_recommenders.data.dataset import SequenceView, collate_sequences
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.evaluation.classification import evaluate_ctr
from generative_recommenders.evaluation.ranking import evaluate_ranking
from generative_recommenders.evaluation.target_groups import popularity_groups
from generative_recommenders.modeling.ctr_fields import ctr_training_loss
from generative_recommenders.modeling.deepfm import DeepFM, fm_interaction
from generative_recommenders.modeling.din import DIN
from generative_recommenders.modeling.dssm import build_dssm, dssm_training_loss
from generative_recommenders.modeling.losses import binary_cross_entropy_with_negatives
from generative_recommenders.modeling.registry import ModelInputs

CPU = torch.device("cpu")
NUM_CLUSTERS, CLUSTER_SIZE = 6, 10
NUM_ITEMS = NUM_CLUSTERS * CLUSTER_SIZE


def _inputs(num_items: int, embedding_dim: int, text_embeddings=None, num_users: int = 0) -> ModelInputs:
    """What the registry hands a builder (positions and dropout are for sequence models only)."""
    return ModelInputs(num_items, embedding_dim, num_positions=1, dropout_rate=0.0, text_embeddings=text_embeddings,
                       num_users=num_users)


def clustered_dataset(num_users=300, length=8, seed=0) -> SequenceDataset:
    """Each user picks items of one cluster only: the next item's cluster is learnable."""
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(num_users):
        cluster = rng.integers(NUM_CLUSTERS)
        sequences.append(cluster * CLUSTER_SIZE + rng.permutation(CLUSTER_SIZE)[:length])
    return SequenceDataset.from_item_sequences("clusters", NUM_ITEMS, sequences)


def batches(view, collate, batch_size, shuffle=False):
    generator = torch.Generator().manual_seed(0)
    return torch.utils.data.DataLoader(
        view, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, generator=generator
    )


def ctr_batch(history, lengths, targets, labels=None):
    return {
        "history_ids": torch.tensor(history),
        "history_lengths": torch.tensor(lengths),
        "target_ids": torch.tensor(targets),
        "labels": torch.tensor(labels or [1.0] * len(targets)),
    }


# --- DIN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_mode", [False, True])
def test_din_padding_leaves_outputs_unchanged(train_mode):
    model = DIN(num_items=20, embedding_dim=4, num_categories=3, text_embeddings=torch.randn(21, 6),
                dropout_rate=0.0).train(train_mode)
    narrow = ctr_batch([[3, 4, 0], [7, 0, 0]], [2, 1], [5, 9])
    narrow["history_categories"] = torch.tensor([[[1, 0], [2, 3], [0, 0]], [[3, 0], [0, 0], [0, 0]]])
    narrow["target_categories"] = torch.tensor([[2, 0], [1, 3]])
    # Two more columns, and the padding filled with real ids: only lengths say what counts.
    wide = dict(narrow)
    wide["history_ids"] = torch.tensor([[3, 4, 11, 12, 13], [7, 14, 15, 16, 17]])
    wide["history_categories"] = torch.tensor(
        [[[1, 0], [2, 3], [3, 0], [3, 0], [3, 0]], [[3, 0], [1, 0], [1, 0], [1, 0], [1, 0]]])
    torch.testing.assert_close(model(narrow), model(wide))
    assert model(narrow).shape == (2,)


def test_din_without_categories_in_the_batch_names_the_fix():
    model = DIN(num_items=5, num_categories=2)
    with pytest.raises(ValueError, match="num_categories=0"):
        model.eval()(ctr_batch([[1]], [1], [2]))


# --- DeepFM ------------------------------------------------------------------------------------


def test_fm_term_equals_the_pairwise_sum():
    fields = torch.randn(3, 5, 4, dtype=torch.float64)
    brute = sum((fields[:, i] * fields[:, j]).sum(-1) for i, j in itertools.combinations(range(5), 2))
    torch.testing.assert_close(fm_interaction(fields), brute)


def test_deepfm_text_field_changes_outputs_and_padding_does_not():
    text = torch.randn(21, 6)
    model = DeepFM(num_items=20, embedding_dim=4, text_embeddings=text, num_users=1).eval()
    assert model.fields.num_fields == 2
    batch = ctr_batch([[3, 4, 0], [7, 0, 0]], [2, 1], [5, 9])
    batch["user_index"] = torch.tensor([0, 0])
    before = model(batch)
    wide = dict(batch, history_ids=torch.tensor([[3, 4, 1, 1], [7, 2, 2, 2]]))
    torch.testing.assert_close(before, model(wide))
    model.fields.text_embeddings[5] += 1.0
    after = model(batch)
    assert after[0] != before[0] and after[1] == before[1]


# --- DSSM --------------------------------------------------------------------------------------


def test_dssm_tower_shapes_and_the_text_path():
    torch.manual_seed(0)
    naive = build_dssm(_inputs(10, 8))
    history, lengths = torch.tensor([[1, 2, 0], [3, 0, 0]]), torch.tensor([2, 1])
    assert naive.query_embeddings(history, lengths, torch.zeros_like(history)).shape == (2, 128)
    assert naive.all_item_embeddings().shape == (11, 128)
    assert naive.normalize_items(naive.all_item_embeddings()) is not None and naive.num_items == 10

    text = torch.randn(11, 5)
    model = build_dssm(_inputs(10, 8, text)).eval()
    before = model.all_item_embeddings()
    model.item_embedding.text_embeddings[4] = torch.randn(5)
    after = model.all_item_embeddings()
    changed = (before != after).any(dim=1)
    assert changed.tolist() == [i == 4 for i in range(11)]
    # Padding positions of the history do not count towards the user's mean.
    wide = torch.tensor([[1, 2, 7, 7], [3, 9, 9, 9]])
    torch.testing.assert_close(
        model.query_embeddings(history, lengths, history), model.query_embeddings(wide, lengths, wide)
    )


def test_bce_with_negatives_on_a_hand_case():
    # One position, logits 0 everywhere, its second negative is the positive itself (left out).
    loss = binary_cross_entropy_with_negatives(
        torch.tensor([0.0]), torch.tensor([[0.0, 5.0]]), torch.tensor([3]), torch.tensor([[1, 3]])
    )
    torch.testing.assert_close(loss, torch.tensor(2 * np.log(2), dtype=torch.float32))


def test_dssm_learns_clusters():
    torch.set_num_threads(1)
    data = clustered_dataset()
    model = build_dssm(_inputs(NUM_ITEMS, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = batches(SequenceView(data, 20, ignore_last_n=2), collate_sequences, 32, shuffle=True)
    for _ in range(16):
        for batch in train:
            optimizer.zero_grad()
            dssm_training_loss(model, batch, CPU).backward()
            optimizer.step()
    groups = popularity_groups(np.bincount(np.concatenate(data.item_ids) + 1, minlength=NUM_ITEMS + 1))
    test = batches(SequenceView(data, 20, ignore_last_n=0), collate_sequences, 64)
    metrics = evaluate_ranking(model, test, CPU, target_groups=[groups]).means()
    # Random: 10 of the 53 items left after the 7 history items (about 0.19).
    assert metrics["hr@10"] > 0.6
    assert sum(groups.results()[g]["num_users"] for g in ("head", "torso", "tail")) == 300


# --- CTR models learn --------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", [DIN, DeepFM])
@pytest.mark.parametrize("with_text", [False, True])
def test_ctr_models_learn_clusters(model_class, with_text):
    torch.set_num_threads(1)
    data = clustered_dataset()
    # The text table knows the clusters: one direction per cluster plus noise.
    text = torch.cat([torch.zeros(1, 8), torch.eye(8)[:NUM_CLUSTERS].repeat_interleave(CLUSTER_SIZE, 0)])
    text[1:] += 0.1 * torch.randn(NUM_ITEMS, 8)
    # Dropout 0 (GRE-B's MovieLens setting): at width 8, GRE-B's Amazon 0.5 before every layer
    # needs far more than these 6 epochs.
    model = model_class(NUM_ITEMS, 8, text_embeddings=text if with_text else None, num_users=data.num_users,
                        dropout_rate=0.0)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(6):
        for batch in batches(CTRView(data, "train", seed=1), collate_ctr, 128, shuffle=True):
            optimizer.zero_grad()
            ctr_training_loss(model, batch, CPU).backward()
            optimizer.step()
    metrics = evaluate_ctr(model, batches(CTRView(data, "test", seed=1), collate_ctr, 256), CPU).metrics()
    assert metrics["auc"] > 0.8


def test_sasrec_learns_with_binary_cross_entropy():
    from generative_recommenders.modeling.item_embeddings import ItemEmbedding
    from generative_recommenders.modeling.losses import binary_cross_entropy_loss
    from generative_recommenders.modeling.sasrec import SASRecEncoder
    from generative_recommenders.modeling.sequential import SequentialRecommender

    torch.set_num_threads(1)
    data = clustered_dataset()
    encoder = SASRecEncoder(16, 21, num_blocks=1, num_heads=1, ffn_hidden_dim=16, ffn_dropout_rate=0.0)
    model = SequentialRecommender(ItemEmbedding(NUM_ITEMS, 16), encoder, 21, 0.0, "layer_norm")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        for batch in batches(SequenceView(data, 20, ignore_last_n=2), collate_sequences, 32, shuffle=True):
            optimizer.zero_grad()
            binary_cross_entropy_loss(model, batch, CPU, num_negatives=10).backward()
            optimizer.step()
    test = batches(SequenceView(data, 20, ignore_last_n=0), collate_sequences, 64)
    assert evaluate_ranking(model, test, CPU).means()["hr@10"] > 0.6


def test_registry_builds_the_greb_models_by_name_with_their_tasks():
    from generative_recommenders.modeling.registry import (
        ModelInputs,
        UnknownModelError,
        build_model,
        model_spec,
        model_task,
    )

    text = torch.randn(11, 8)
    inputs = ModelInputs(num_items=10, embedding_dim=16, num_positions=21, dropout_rate=0.0,
                         text_embeddings=text, num_categories=3)
    names = ("HSTU", "SASRec", "GREBSASRec", "DSSM", "DIN", "DeepFM")
    assert {name: model_task(name) for name in names} == {
        "HSTU": "retrieval", "SASRec": "retrieval", "GREBSASRec": "retrieval", "DSSM": "retrieval",
        "DIN": "ctr", "DeepFM": "ctr"}
    # GRE-B's tables name its SASRec as GRE-B does; a model without a title goes by its name.
    assert (model_spec("GREBSASRec").title, model_spec("DSSM").title) == ("SASRec", "DSSM")
    din = build_model("DIN", inputs)
    assert din.fields.num_fields == 3 and din.description() == "DIN-id16-cat-text8"
    assert build_model("DSSM", inputs).all_item_embeddings().shape == (11, 128)
    assert build_model("DeepFM", dataclasses.replace(inputs, num_categories=0, text_embeddings=None)).description() \
        == "DeepFM-id16"
    with pytest.raises(UnknownModelError, match="'GRU4Rec' is not a registered model"):
        model_task("GRU4Rec")
