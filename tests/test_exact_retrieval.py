"""Exact top-k in tiles with a running top-k against ranking whole score rows."""

import pytest
import torch

from generative_recommenders import retrieval
from generative_recommenders.evaluation.metrics import exclude_items
from generative_recommenders.ops.tiles import tile_bounds
from generative_recommenders.retrieval import exact_top_k


def _whole_rows_top_k(queries, candidates, k, excluded, chunk):
    """Each chunk of ``chunk`` queries scored against every candidate, top-k of whole rows."""
    best_scores, best_ids = [], []
    for begin in range(0, queries.size(0), chunk):
        scores = queries[begin:begin + chunk] @ candidates.T
        if excluded is not None:
            scores = exclude_items(scores, excluded[begin:begin + chunk])
        values, ids = scores.topk(min(k, candidates.size(0)), dim=1)
        best_scores.append(values)
        best_ids.append(ids)
    return torch.cat(best_scores), torch.cat(best_ids)


# Tiles of 1,000 candidates (the last one of 1 joins it), 64, 16 (MIN_TILE) or all (at least k wide);
# query blocks of max_scores // the widest tile: 20, 3 (and 2), 1 (scored whole) or 19 and 1. The
# whole rows are scored in the same blocks (a block's scores are its rows', bit for bit).
@pytest.mark.parametrize("tile_items, block", [(1000, 20), (64, 3), (1, 1), (5000, 20), (16, 19)])
@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.parametrize("with_excluded", [False, True])
def test_tiled_top_k_returns_the_whole_rows_ids_and_scores(monkeypatch, tile_items, block, k, with_excluded):
    monkeypatch.setattr(retrieval, "TILE_ITEMS", tile_items)
    generator = torch.Generator().manual_seed(k)
    queries = torch.randn(20, 16, generator=generator)
    candidates = torch.randn(1001, 16, generator=generator)  # random floats: no two scores of a query tie
    excluded = None
    if with_excluded:
        excluded = torch.randint(1, 1001, (20, 30), generator=generator)
        excluded[::2, 15:] = 0  # padding
        # Each query's best items excluded: the top-k must reach past them.
        excluded[:, :5] = (queries @ candidates.T)[:, 1:].topk(5, dim=1).indices + 1
    widest_tile = max(end - begin for begin, end in tile_bounds(1001, max(k, tile_items)))
    scores, ids = exact_top_k(queries, candidates, k, excluded, max_scores=block * widest_tile)
    expected_scores, expected_ids = _whole_rows_top_k(queries, candidates, k, excluded, block)
    assert torch.equal(ids, expected_ids)
    assert torch.equal(scores, expected_scores)
    if with_excluded:
        assert not (ids.unsqueeze(-1) == excluded.unsqueeze(1)).any() and (ids != 0).all()


def test_top_k_by_hand_with_a_padding_row_and_exclusions(monkeypatch):
    candidates = torch.tensor([[9.0], [1.0], [4.0], [3.0], [2.0]])  # row 0 is padding
    queries = torch.tensor([[1.0], [-1.0]])
    scores, ids = exact_top_k(queries, candidates, 2, excluded=torch.tensor([[2, 0], [1, 0]]))
    assert ids.tolist() == [[3, 4], [4, 3]]
    assert scores.tolist() == [[3.0, 2.0], [-2.0, -3.0]]
    # Without exclusions nothing is left out, row 0 neither; k beyond the catalogue is all of it.
    scores, ids = exact_top_k(queries[:1], candidates, 9)
    assert ids.tolist() == [[0, 2, 3, 4, 1]] and scores.tolist() == [[9.0, 4.0, 3.0, 2.0, 1.0]]
