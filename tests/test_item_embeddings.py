import pytest
import torch

from generative_recommenders.modeling.item_embeddings import ItemEmbedding, ItemEmbeddingWithText

NUM_ITEMS, DIM, TEXT_DIM = 5, 4, 6


@pytest.fixture
def text_table():
    table = torch.randn(NUM_ITEMS + 1, TEXT_DIM)
    table[0] = 0
    return table


def test_id_embedding_padding_row_is_zero():
    emb = ItemEmbedding(NUM_ITEMS, DIM)
    assert emb(torch.tensor([0])).abs().sum() == 0
    assert emb.weight.weight[1:].abs().max() <= 0.04  # truncated at 2 std


def test_add_is_id_plus_projected_text(text_table):
    emb = ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, mode="add")
    ids = torch.tensor([[1, 3], [5, 0]])
    w, b = emb.text_projection.weight, emb.text_projection.bias
    expected = emb.id_embedding.weight.weight[ids] + text_table[ids] @ w.T + b
    torch.testing.assert_close(emb(ids), expected)


def test_text_is_frozen_and_projection_trains(text_table):
    emb = ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, mode="add")
    emb(torch.tensor([1, 2])).sum().backward()
    assert "text_embeddings" not in emb.state_dict()
    assert not emb.text_embeddings.requires_grad
    assert emb.text_projection.weight.grad is not None
    assert emb.id_embedding.weight.weight.grad[1].abs().sum() > 0


def test_gate_mixes_per_dimension(text_table):
    emb = ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, mode="gate")
    ids = torch.tensor([2, 4])
    id_part = emb.id_embedding(ids)
    text_part = emb.text_projection(text_table[ids])
    gate = torch.sigmoid(torch.cat([id_part, text_part], -1) @ emb.mix.weight.T + emb.mix.bias)
    torch.testing.assert_close(emb(ids), gate * id_part + (1 - gate) * text_part)
    # Zero bias and small weights: the gate starts near 1/2.
    assert (gate - 0.5).abs().max() < 0.01
    with torch.no_grad():
        emb.mix.bias.fill_(50.0)  # a saturated gate keeps the id embedding only
    torch.testing.assert_close(emb(ids), id_part)


def test_concat_and_text_only(text_table):
    concat = ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, mode="concat")
    ids = torch.tensor([1, 2, 3])
    joined = torch.cat([concat.id_embedding(ids), concat.text_projection(text_table[ids])], -1)
    torch.testing.assert_close(concat(ids), joined @ concat.mix.weight.T + concat.mix.bias)

    text_only = ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, mode="text_only")
    assert text_only.id_embedding is None
    torch.testing.assert_close(text_only(ids), text_only.text_projection(text_table[ids]))
    # Items with the same text get the same embedding: nothing is learned per id.
    same = text_table.clone()
    same[2] = same[1]
    torch.testing.assert_close(*ItemEmbeddingWithText(NUM_ITEMS, DIM, same, mode="text_only")(torch.tensor([1, 2])))


def test_mlp_projection(text_table):
    emb = ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, mode="add", projection="mlp", mlp_hidden_dim=7)
    first, _, second = emb.text_projection
    assert first.weight.shape == (7, TEXT_DIM) and second.weight.shape == (DIM, 7)
    ids = torch.tensor([3])
    expected = emb.id_embedding(ids) + second(torch.nn.functional.gelu(first(text_table[ids])))
    torch.testing.assert_close(emb(ids), expected)


def test_bad_settings_are_clear_errors(text_table):
    with pytest.raises(ValueError, match="mode"):
        ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, mode="multiply")
    with pytest.raises(ValueError, match="projection"):
        ItemEmbeddingWithText(NUM_ITEMS, DIM, text_table, projection="attention")
    with pytest.raises(ValueError, match="do not fit 9 items"):
        ItemEmbeddingWithText(9, DIM, text_table)
