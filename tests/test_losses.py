import math

import pytest
import torch

from generative_recommenders.modeling.hstu import HSTUEncoder
from generative_recommenders.modeling.item_embeddings import ItemEmbedding, ItemEmbeddingWithText
from generative_recommenders.modeling.losses import (
    NEGATIVE_SCORINGS,
    resolve_negative_scoring,
    sample_negatives,
    sampled_softmax_loss,
    sampled_softmax_loss_from_table,
    training_loss,
)
from generative_recommenders.modeling.sequential import SequentialRecommender


def test_sampled_softmax_matches_direct_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos_ids = torch.tensor([1, 2])
    pos = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    neg_ids = torch.tensor([[3, 4], [2, 5]])  # row 1's first negative is its positive: masked
    neg = torch.tensor([[[0.0, 1.0], [-1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    t = 0.5
    loss = sampled_softmax_loss(q, pos_ids, pos, neg_ids, neg, t)
    row0 = -(0.6 / t) + math.log(math.exp(0.6 / t) + math.exp(0.0 / t) + math.exp(-1.0 / t))
    row1 = -(1.0 / t) + math.log(math.exp(1.0 / t) + math.exp(0.0 / t))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_sampled_softmax_gradients_are_finite_with_masked_negatives():
    q = torch.randn(4, 8, requires_grad=True)
    ids = torch.tensor([1, 1, 2, 3])
    neg_ids = ids.view(-1, 1).repeat(1, 3)
    neg_ids[:, 0] = 9
    loss = sampled_softmax_loss(q, ids, torch.randn(4, 8), neg_ids, torch.randn(4, 3, 8), 0.05)
    loss.backward()
    assert torch.isfinite(q.grad).all()


def test_uniform_negatives_cover_the_catalogue_and_never_padding():
    negs = sample_negatives("local", torch.ones(1000, dtype=torch.long), 50, num_items=7)
    assert negs.shape == (1000, 50)
    assert set(negs.unique().tolist()) == set(range(1, 8))


def test_uniform_negatives_from_candidates_cover_them_and_nothing_else():
    candidates = torch.tensor([2, 3, 5, 7])
    negs = sample_negatives("local", torch.ones(1000, dtype=torch.long), 50, num_items=7, candidate_ids=candidates)
    assert negs.shape == (1000, 50) and set(negs.unique().tolist()) == {2, 3, 5, 7}
    # Uniform over the candidates: each about a quarter of the 50,000 draws.
    counts = torch.bincount(negs.flatten(), minlength=8)[candidates].double()
    assert ((counts / negs.numel() - 0.25).abs() < 0.01).all()


def test_in_batch_negatives_come_from_the_batch():
    positives = torch.tensor([4, 9, 9, 12])
    negs = sample_negatives("in-batch", positives, 200, num_items=100)
    assert set(negs.unique().tolist()) == {4, 9, 12}
    with pytest.raises(ValueError):
        sample_negatives("popularity", positives, 2, num_items=100)


def test_table_scoring_equals_gathered_negatives_by_hand():
    table = torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    pos_ids = torch.tensor([1, 2])
    neg_ids = torch.tensor([[3, 4], [2, 4]])  # row 1's first negative is its positive: masked
    t = 0.5
    loss = sampled_softmax_loss_from_table(q, pos_ids, table[pos_ids], neg_ids, table, t)
    row0 = -(0.6 / t) + math.log(math.exp(0.6 / t) + math.exp(-1.0 / t) + math.exp(1.0 / t))
    row1 = -(1.0 / t) + math.log(math.exp(1.0 / t) + math.exp(0.0 / t))
    assert loss.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    gathered = sampled_softmax_loss(q, pos_ids, table[pos_ids], neg_ids, table[neg_ids], t)
    assert gathered.item() == pytest.approx(loss.item(), rel=1e-6)


NUM_ITEMS, DIM, MAX_LEN = 40, 8, 12


def _recommender(with_text: bool) -> SequentialRecommender:
    torch.manual_seed(5)
    if with_text:
        item_embedding = ItemEmbeddingWithText(NUM_ITEMS, DIM, torch.randn(NUM_ITEMS + 1, 6))
    else:
        item_embedding = ItemEmbedding(NUM_ITEMS, DIM)
    encoder = HSTUEncoder(DIM, MAX_LEN, num_blocks=1, num_heads=2, dqk=4, dv=4)
    return SequentialRecommender(item_embedding, encoder, MAX_LEN, dropout_rate=0.0)


def _training_batch(lengths):
    width = max(lengths) + 1
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(1, NUM_ITEMS + 1, (n,))
    return {
        "history_ids": ids,
        "history_lengths": torch.tensor(lengths),
        "history_timestamps": torch.cumsum(torch.randint(0, 10_000, (len(lengths), width)), 1),
        "target_ids": torch.randint(1, NUM_ITEMS + 1, (len(lengths),)),
    }


@pytest.mark.parametrize("with_text", [False, True])
@pytest.mark.parametrize("item_l2_norm", [True, False])
def test_every_negative_scoring_gives_the_per_sample_loss_and_gradients(with_text, item_l2_norm):
    model = _recommender(with_text)
    model.item_l2_norm = item_l2_norm
    # Length 1, the longest history that fits (target appended: MAX_LEN - 1) and lengths between.
    batch = _training_batch([1, MAX_LEN - 1, 4, 7])
    results = {}
    for scoring in NEGATIVE_SCORINGS:
        model.zero_grad()
        torch.manual_seed(11)  # the same negatives for every scoring
        loss = training_loss(model, batch, torch.device("cpu"), "local", 16, 0.05, scoring)
        loss.backward()
        results[scoring] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    reference_loss, reference_grads = results["per_sample"]
    for scoring, (loss, grads) in results.items():
        torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6, msg=scoring)
        for name, grad in grads.items():
            # Float32 sums in another order: errors scale with the gradient's size (up to ~40 here).
            scale = reference_grads[name].abs().max().item()
            torch.testing.assert_close(
                grad, reference_grads[name], rtol=1e-4, atol=1e-6 * max(scale, 1.0), msg=f"{scoring} {name}"
            )


def test_auto_scoring_follows_catalogue_size():
    # 32 items per negative or fewer: the whole table is scored.
    assert resolve_negative_scoring("auto", 2420, num_negatives=512, num_positions=1100) == "item_table"
    assert resolve_negative_scoring("auto", 16_383, num_negatives=512, num_positions=1100) == "item_table"
    # Larger: the table is embedded once and the negatives gathered from it...
    assert resolve_negative_scoring("auto", 77_551, num_negatives=512, num_positions=1100) == "gathered"
    # ...unless the step samples fewer negatives than there are items.
    assert resolve_negative_scoring("auto", 600_000, num_negatives=512, num_positions=1100) == "per_sample"
    assert resolve_negative_scoring("item_table", 600_000, num_negatives=512, num_positions=1100) == "item_table"
    with pytest.raises(ValueError, match="negative_scoring"):
        resolve_negative_scoring("sparse", 10, num_negatives=2, num_positions=3)
