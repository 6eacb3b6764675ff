"""Item pairs mined from interactions, as GRE mines them (``data/AmazonReviews2023/pair.py``).

Every two positions of one user's training history count once for the pair of
their items (both orders: the matrix is symmetric); an item's count is how
often it occurs. The co-occurrence of items ``a != b`` is normalized by
``sqrt(count_a * count_b)``; a pair is kept where that exceeds
``co_occurrence_threshold`` and where a guide model's text cosine similarity
exceeds ``similarity_threshold`` (both strict, as GRE's). Each pair is kept
once, as ``(a, b)`` with ``a < b`` (GRE keeps the first of its symmetric
matrix's two entries, row before column).

Only the training part of each sequence counts: the last ``num_held_out``
items (the validation and test targets) never do, so a benchmark on the same
data stays honest; optionally the cold items of a cold-item split are left
out too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from generative_recommenders.data.cold_items import VALIDATED_HELD_OUT, split_cold_items
from generative_recommenders.data.sequence_format import SequenceDataset


def training_histories(
    data: SequenceDataset,
    num_held_out: int = VALIDATED_HELD_OUT,
    cold_item_share: Optional[float] = None,
    cold_item_seed: int = 42,
) -> List[np.ndarray]:
    """Each user's training part: the sequence without its last ``num_held_out`` items.

    With ``cold_item_share``, the cold items the trainer draws with the same share and
    seed (``train_fn.cold_item_share``, ``train_fn.random_seed``) are removed too.
    """
    if cold_item_share is not None:
        data = split_cold_items(data, cold_item_share, cold_item_seed, num_held_out).training_data
    return [items[: max(0, len(items) - num_held_out)] for items in data.item_ids]


def normalized_co_occurrence(histories: Sequence[np.ndarray], num_items: int) -> sp.csr_matrix:
    """``C[a, b]``: position pairs of one user holding items a and b, over ``sqrt(count_a * count_b)``.

    The diagonal is zeroed (an item is never its own pair).
    """
    rows = np.concatenate([np.full(len(h), u, dtype=np.int64) for u, h in enumerate(histories)] or [np.empty(0, np.int64)])
    cols = np.concatenate(list(histories) or [np.empty(0, np.int64)]).astype(np.int64)
    # user x item occurrence counts: the pairs of positions holding a and b number count_u(a) * count_u(b)
    user_items = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(histories), num_items))
    co_occurrence = (user_items.T @ user_items).tocsr()
    co_occurrence.setdiag(0)
    co_occurrence.eliminate_zeros()
    counts = np.asarray(user_items.sum(axis=0)).ravel()
    inverse_sqrt = sp.diags(1.0 / np.sqrt(np.maximum(counts, 1.0)))
    return (inverse_sqrt @ co_occurrence @ inverse_sqrt).tocsr()


@dataclass
class MinedPairs:
    """The pairs ``(a, b)``, ``a < b``, and how many survived each step."""

    pairs: np.ndarray  # int64 [n, 2], 0-based item ids
    guide_similarity: np.ndarray  # float32 [n]
    co_occurring: int  # item pairs that share at least one user's history
    above_co_occurrence: int  # of those, above co_occurrence_threshold
    above_both: int  # of those, above similarity_threshold too (len(pairs) before max_pairs)

    def counts(self) -> Dict[str, Any]:
        record = asdict(self)
        del record["pairs"], record["guide_similarity"]
        record["kept"] = len(self.pairs)
        return record


def mine_pairs(
    histories: Sequence[np.ndarray],
    guide_embeddings: torch.Tensor,
    co_occurrence_threshold: float,
    similarity_threshold: float,
    max_pairs: Optional[int] = None,
    seed: int = 0,
) -> MinedPairs:
    """GRE's pairs from ``histories``; ``guide_embeddings[k]`` embeds item id k.

    ``max_pairs`` keeps a seeded random subset (in mined order) where more pairs pass.
    """
    co_occurrence = sp.triu(normalized_co_occurrence(histories, guide_embeddings.shape[0]), k=1).tocoo()
    co_occurring = int(co_occurrence.nnz)
    above = co_occurrence.data > co_occurrence_threshold
    first, second = co_occurrence.row[above].astype(np.int64), co_occurrence.col[above].astype(np.int64)
    guide = F.normalize(guide_embeddings.float(), dim=-1)
    similarity = (guide[torch.from_numpy(first)] * guide[torch.from_numpy(second)]).sum(-1).numpy()
    keep = similarity > similarity_threshold
    pairs = np.stack([first[keep], second[keep]], axis=1)
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))  # by a, then b: independent of scipy's internal order
    pairs, similarity = pairs[order], similarity[keep][order]
    above_both = len(pairs)
    if max_pairs is not None and above_both > max_pairs:
        chosen = np.sort(np.random.default_rng(seed).choice(above_both, size=max_pairs, replace=False))
        pairs, similarity = pairs[chosen], similarity[chosen]
    return MinedPairs(pairs, similarity.astype(np.float32), co_occurring, int(above.sum()), above_both)
