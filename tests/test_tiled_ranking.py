"""The tiled ranking against the whole score matrix: the same rank for every user."""

import pytest
import torch

from generative_recommenders.evaluation import metrics
from generative_recommenders.evaluation.metrics import target_ranks, tiled_target_ranks

NUM_ITEMS, DIM, USERS = 300, 8, 64


def _inputs(seed: int, integer_scores: bool):
    generator = torch.Generator().manual_seed(seed)
    if integer_scores:  # small integers: exact scores, many ties with the target
        candidates = torch.randint(-1, 2, (NUM_ITEMS + 1, DIM), generator=generator).float()
        queries = torch.randint(-1, 2, (USERS, DIM), generator=generator).float()
    else:
        candidates = torch.nn.functional.normalize(torch.randn(NUM_ITEMS + 1, DIM, generator=generator), dim=-1)
        queries = torch.nn.functional.normalize(torch.randn(USERS, DIM, generator=generator), dim=-1)
        candidates[200:230] = candidates[100:130]  # the same embedding twice: tied scores
    candidates[0] = 5.0  # padding scores above everything and must never count
    targets = torch.randint(1, NUM_ITEMS + 1, (USERS,), generator=generator)
    history = torch.randint(1, NUM_ITEMS + 1, (USERS, 20), generator=generator)
    history[::3, 10:] = 0  # padded histories
    history[1::4, 5] = targets[1::4]  # targets repeating a history item
    history[2::5, 6:9] = history[2::5, 5:6]  # items repeated within a history
    history[::7, 6] = 120  # an item whose twin (220) stays ranked
    targets[::6] = 220  # a target tied with an excluded twin
    return queries, candidates, targets, history


@pytest.mark.parametrize("integer_scores", [False, True])
@pytest.mark.parametrize("tile_items", [1, 7, 128, NUM_ITEMS + 1, 4096])
def test_tiled_ranks_equal_the_score_matrix_ranks_for_every_user(integer_scores, tile_items):
    queries, candidates, targets, history = _inputs(tile_items, integer_scores)
    scores = queries @ candidates.T
    for repeated_target in ("rank", "miss"):
        for rank_cap in (None, 10, 2500):
            for with_history in (True, False):
                excluded = history if with_history else None
                expected = target_ranks(scores, targets, excluded, rank_cap, repeated_target)
                ranks = tiled_target_ranks(queries, candidates, targets, excluded, rank_cap, repeated_target, tile_items)
                assert torch.equal(ranks, expected), (repeated_target, rank_cap, with_history)


def test_a_constant_scorer_ranks_every_target_last():
    candidates = torch.ones(NUM_ITEMS + 1, DIM)
    targets = torch.tensor([1, 150, NUM_ITEMS])
    ranks = tiled_target_ranks(torch.ones(3, DIM), candidates, targets, tile_items=64)
    assert ranks.tolist() == [NUM_ITEMS] * 3  # every item ties with the target and counts ahead of it
    history = torch.tensor([[2, 3, 3, 0], [150, 4, 0, 0], [0, 0, 0, 0]])
    # Two distinct items removed; one removed, the target kept; nothing removed.
    assert tiled_target_ranks(torch.ones(3, DIM), candidates, targets, history, tile_items=64).tolist() == [
        NUM_ITEMS - 2, NUM_ITEMS - 1, NUM_ITEMS]


@pytest.mark.parametrize("direction", [float("inf"), float("-inf")])
def test_a_target_score_guessed_a_bit_off_is_recounted_with_the_tiles_own(monkeypatch, direction):
    queries, candidates, targets, history = _inputs(3, integer_scores=True)
    expected = target_ranks(queries @ candidates.T, targets, history)
    real_guess = metrics._guess_target_scores

    def guess_off_by_one_bit(*args):
        guess = real_guess(*args)
        return torch.nextafter(guess, torch.full_like(guess, direction))

    monkeypatch.setattr(metrics, "_guess_target_scores", guess_off_by_one_bit)
    assert torch.equal(tiled_target_ranks(queries, candidates, targets, history, tile_items=50), expected)


def test_one_user_is_ranked_as_by_the_score_matrix():
    queries, candidates, targets, history = _inputs(5, integer_scores=False)
    for user in range(USERS):
        one = slice(user, user + 1)
        expected = target_ranks(queries[one] @ candidates.T, targets[one], history[one])
        assert torch.equal(tiled_target_ranks(queries[one], candidates, targets[one], history[one], tile_items=16), expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("broken", ["queries", "candidates"])
def test_non_finite_embeddings_are_refused(broken, value):
    queries, candidates, targets, history = _inputs(4, integer_scores=False)
    {"queries": queries, "candidates": candidates}[broken][-1, 2] = value
    with pytest.raises(FloatingPointError, match="diverged"):
        tiled_target_ranks(queries, candidates, targets, history)
