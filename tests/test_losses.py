import math

import pytest
import torch

from generative_recommenders.modeling.losses import sample_negatives, sampled_softmax_loss


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


def test_in_batch_negatives_come_from_the_batch():
    positives = torch.tensor([4, 9, 9, 12])
    negs = sample_negatives("in-batch", positives, 200, num_items=100)
    assert set(negs.unique().tolist()) == {4, 9, 12}
    with pytest.raises(ValueError):
        sample_negatives("popularity", positives, 2, num_items=100)
