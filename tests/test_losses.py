import collections
import math

import pytest
import torch

from generative_recommenders.modeling import losses
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
    # Larger: the table is embedded once and the negatives gathered from it a chunk at a time...
    assert resolve_negative_scoring("auto", 16_384, num_negatives=512, num_positions=1100) == "chunked"
    assert resolve_negative_scoring("auto", 77_551, num_negatives=512, num_positions=1100) == "chunked"
    # ...unless the step samples fewer negatives than there are items.
    assert resolve_negative_scoring("auto", 600_000, num_negatives=512, num_positions=1100) == "per_sample"
    assert resolve_negative_scoring("item_table", 600_000, num_negatives=512, num_positions=1100) == "item_table"
    with pytest.raises(ValueError, match="negative_scoring"):
        resolve_negative_scoring("sparse", 10, num_negatives=2, num_positions=3)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the gathered table gradient is summed by parallel atomic adds with more
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("num_positions", [1, 2, 16, 17, 33, 40])
def test_chunked_negative_logits_are_bit_identical_to_gathered_ones(one_thread, monkeypatch, num_positions):
    # Chunks of 16 positions (16 * R * D elements): 17 is one chunk; 40's last 8 join the chunk before.
    num_items, num_negatives, dim = 300, 512, 64
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 16 * num_negatives * dim)
    generator = torch.Generator().manual_seed(num_positions)
    queries = torch.randn(num_positions, dim, generator=generator)
    table = torch.randn(num_items, dim, generator=generator)
    # Repeated ids within and across rows: their gradients are summed in the same order.
    negative_ids = torch.randint(1, num_items, (num_positions, num_negatives), generator=generator)
    upstream = torch.randn(num_positions, num_negatives, generator=generator)
    results = []
    for logits_of in (lambda q, t: torch.bmm(t[negative_ids], q.unsqueeze(-1)).squeeze(-1),
                      lambda q, t: losses._ChunkedNegativeLogits.apply(q, t, negative_ids)):
        q, t = queries.clone().requires_grad_(), table.clone().requires_grad_()
        logits = logits_of(q, t)
        logits.backward(upstream)
        results.append((logits.detach(), q.grad, t.grad))
    for gathered, chunked in zip(*results):
        assert torch.equal(gathered, chunked)
    # And by hand: row p's logits are its negatives' rows dotted with its query.
    torch.testing.assert_close(results[1][0], torch.einsum("prd,pd->pr", table[negative_ids], queries))


@pytest.mark.parametrize("with_text", [False, True])
def test_chunked_scoring_gives_the_gathered_loss_and_gradients_bit_for_bit(one_thread, monkeypatch, with_text):
    monkeypatch.setattr(losses, "_CHUNK_ELEMENTS", 16 * 16 * DIM)  # chunks of 16 positions of the 56
    model = _recommender(with_text)
    batch = _training_batch([1, MAX_LEN - 1, 4, 7, MAX_LEN - 1, MAX_LEN - 1, MAX_LEN - 1])
    results = []
    for scoring in ("gathered", "chunked"):
        model.zero_grad()
        torch.manual_seed(11)  # the same negatives, drawn in the same order
        used = collections.Counter()
        loss = training_loss(model, batch, torch.device("cpu"), "local", 16, 0.05, scoring, scorings_used=used)
        loss.backward()
        assert used == {scoring: 1}
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (gathered_loss, gathered_grads), (chunked_loss, chunked_grads) = results
    assert torch.equal(chunked_loss, gathered_loss)
    assert chunked_grads.keys() == gathered_grads.keys()
    for name, grad in chunked_grads.items():
        assert torch.equal(grad, gathered_grads[name]), name


@pytest.mark.parametrize("scoring", ["gathered", "chunked", "item_table"])
def test_id_table_read_from_the_weight_gives_the_lookup_gradients(one_thread, monkeypatch, scoring):
    model = _recommender(with_text=False)
    batch = _training_batch([1, MAX_LEN - 1, 4, 7])
    ids = torch.arange(NUM_ITEMS + 1)
    assert model.all_item_embeddings() is model.item_embedding.weight.weight
    results = []
    for read_table in (None, lambda: model.item_embeddings(ids)):  # the weight; a lookup of every id
        if read_table is not None:
            monkeypatch.setattr(model.item_embedding, "all_embeddings", read_table)
        model.zero_grad()
        torch.manual_seed(11)
        training_loss(model, batch, torch.device("cpu"), "local", 16, 0.05, scoring).backward()
        results.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in results[0].items():
        assert torch.equal(grad, results[1][name]), name
    assert not results[0]["item_embedding.weight.weight"][0].any()  # padding learns nothing either way
