"""Top-k retrieval over item embeddings: exact by chunked matrix product, or through a faiss index.

Scores are inner products (the models' item embeddings are L2-normalised, so
they are cosines). ``exact`` needs nothing but torch; ``flat`` (exact, faiss),
``hnsw`` and ``ivf`` (approximate) need the optional ``faiss-cpu`` package.
An index is saved next to a JSON sidecar naming the embeddings it was built
from (their sha256), so it is reused while they are unchanged and rebuilt
otherwise. ``benchmarks/retrieval.py`` measures speed and recall on a
clustered catalogue of a million items.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Protocol, Tuple

import numpy as np
import torch

from generative_recommenders.atomic_files import atomic_path, atomic_write_text
from generative_recommenders.errors import UserError
from generative_recommenders.ops.tiles import tile_bounds

INDEX_KINDS = ("exact", "flat", "hnsw", "ivf")
HNSW_NEIGHBOURS = 32  # graph degree M
HNSW_EF_CONSTRUCTION = 40
HNSW_EF_SEARCH = 64
IVF_PROBES = 16


class RetrievalError(UserError):
    """An index kind that cannot be built here, or an unreadable index file."""


# Candidates per tile: a block of queries' scores of one tile stay in cache between the matmul and
# the top-k, and each tile of candidates is read once for all the queries (benchmarks/retrieval.py).
TILE_ITEMS = 4096


def exact_top_k(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    k: int,
    excluded: Optional[torch.Tensor] = None,
    max_scores: int = 1 << 24,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best candidates of each query by inner product: ``(scores, indices)``, each ``[B, k]``.

    ``queries [B, D]`` are scored in blocks of ``max_scores // TILE_ITEMS`` queries
    (at most ``max_scores`` scores at a time) against ``candidates [N, D]`` a
    tile of :data:`TILE_ITEMS` at a time, with
    a running top-k per query: the scores and indices of ranking each block's
    whole rows (``ops/tiles.py``), where scores are distinct (among tied
    scores either may be kept). With ``excluded [B, L]`` (candidate rows,
    0 = padding), candidate row 0 and each query's excluded rows score -inf,
    as the evaluation excludes a history; a query left with fewer than ``k``
    candidates gets -inf scores (at index 0) for the rest.
    """
    num_candidates = candidates.size(0)
    k = min(k, num_candidates)
    tiles = tile_bounds(num_candidates, max(k, TILE_ITEMS))
    # Each tile is read once per block: the fewer blocks, the less memory traffic.
    block = max(1, max_scores // max(end - begin for begin, end in tiles))
    blocks = [slice(first, min(first + block, queries.size(0))) for first in range(0, queries.size(0), block)]
    best_scores = queries.new_full((queries.size(0), k), float("-inf"))
    best_ids = torch.zeros(queries.size(0), k, dtype=torch.long, device=queries.device)
    for rows in blocks:
        if rows.stop - rows.start == 1:
            # One query: a matrix-vector product, whose rounding may change with the width of a
            # tile: it is scored against every candidate at once (its scores are one row).
            _merge_tile(best_scores, best_ids, rows, _scores(queries[rows], candidates, 0, excluded, rows), 0)
    tiled = [rows for rows in blocks if rows.stop - rows.start > 1]
    for begin, end in tiles:
        for rows in tiled:
            scores = _scores(queries[rows], candidates[begin:end], begin, excluded, rows)
            _merge_tile(best_scores, best_ids, rows, scores, begin)
    return best_scores, best_ids


def _scores(
    queries: torch.Tensor, tile: torch.Tensor, begin: int, excluded: Optional[torch.Tensor], rows: slice
) -> torch.Tensor:
    """``queries @ tile.T`` for candidates ``begin .. begin + len(tile)``, the excluded ones at -inf."""
    scores = queries @ tile.T
    if excluded is not None:
        _exclude_in_tile(scores, excluded[rows], begin)
    return scores


def _merge_tile(
    best_scores: torch.Tensor, best_ids: torch.Tensor, rows: slice, scores: torch.Tensor, begin: int
) -> None:
    """Merges a tile's ``scores [b, T]`` (candidates from ``begin``) into the running top-k of ``rows``.

    Only the queries whose tile maximum beats their k-th best so far take the tile's top-k (once a
    few tiles are seen, most tiles hold none of a query's best)."""
    k = best_scores.size(1)
    improving = (scores.amax(dim=1) > best_scores[rows, k - 1]).nonzero().squeeze(1)
    if improving.numel() == 0:
        return
    users = improving + rows.start
    values, ids = scores.index_select(0, improving).topk(min(k, scores.size(1)), dim=1)
    values, where = torch.cat([best_scores[users], values], dim=1).topk(k, dim=1)
    best_scores[users] = values
    best_ids[users] = torch.cat([best_ids[users], ids + begin], dim=1).gather(1, where)


def _exclude_in_tile(scores: torch.Tensor, excluded: torch.Tensor, begin: int) -> None:
    """Sets ``scores [B, T]`` (candidates ``begin .. begin + T``) to -inf at ``excluded`` rows and row 0."""
    if begin == 0:
        scores[:, 0] = float("-inf")
    local = excluded - begin
    inside = (local >= 0) & (local < scores.size(1))
    users = torch.arange(scores.size(0), device=scores.device).view(-1, 1).expand_as(local)
    scores[users[inside], local[inside]] = float("-inf")


class ItemIndex(Protocol):
    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` ``[B, k]`` best first; a row of -1 is a slot the index could not fill."""
        ...


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RetrievalError(
            "the faiss index kinds need the faiss-cpu package: pip install faiss-cpu "
            "(or the project's [faiss] extra), or use the exact index"
        ) from None
    return faiss


class FaissIndex:
    """A faiss inner-product index over ``[N, D]`` float32 vectors; rows are its ids."""

    def __init__(self, index) -> None:
        self.index = index

    @classmethod
    def build(cls, kind: str, vectors: np.ndarray) -> "FaissIndex":
        faiss = _faiss()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        elif kind == "ivf":
            # sqrt(N) lists; k-means wants at least 39 training points per list.
            lists = max(1, min(int(np.sqrt(len(vectors))), len(vectors) // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
        else:
            raise RetrievalError(f"unknown faiss index kind {kind!r}; choose flat, hnsw or ivf")
        index.add(vectors)
        return cls(index)

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        faiss = _faiss()
        if isinstance(self.index, faiss.IndexHNSW):
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
        elif isinstance(self.index, faiss.IndexIVF):
            self.index.nprobe = min(IVF_PROBES, self.index.nlist)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def save(self, path: os.PathLike) -> None:
        faiss = _faiss()
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))

    @classmethod
    def load(cls, path: os.PathLike) -> "FaissIndex":
        faiss = _faiss()
        try:
            return cls(faiss.read_index(str(path)))
        except RuntimeError as e:
            raise RetrievalError(f"{path}: not a readable faiss index ({str(e).splitlines()[0]}); delete it to rebuild") from None

    @property
    def nbytes(self) -> int:
        return int(_faiss().serialize_index(self.index).nbytes)


class ExactIndex:
    """:func:`exact_top_k` behind the :class:`ItemIndex` interface (for comparisons)."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        scores, rows = exact_top_k(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)), self.vectors, k)
        return scores.numpy(), rows.numpy()


def build_index(kind: str, vectors: np.ndarray) -> ItemIndex:
    if kind == "exact":
        return ExactIndex(vectors)
    return FaissIndex.build(kind, vectors)


def _fingerprint(kind: str, vectors: np.ndarray) -> dict:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    settings = {"hnsw": [HNSW_NEIGHBOURS, HNSW_EF_CONSTRUCTION], "ivf": "sqrt"}.get(kind)
    return {
        "kind": kind,
        "shape": list(vectors.shape),
        "embeddings_sha256": hashlib.sha256(vectors.tobytes()).hexdigest(),
        "settings": settings,
    }


def load_or_build_index(kind: str, vectors: np.ndarray, path: os.PathLike) -> FaissIndex:
    """The faiss index of ``vectors`` saved at ``path``: loaded if built from them, else built and saved."""
    path = Path(path)
    sidecar = path.with_suffix(".json")
    fingerprint = _fingerprint(kind, vectors)
    if path.is_file() and sidecar.is_file():
        try:
            recorded = json.loads(sidecar.read_text(encoding="utf-8"))
        except ValueError:
            recorded = None
        if recorded == fingerprint:
            return FaissIndex.load(path)
    index = FaissIndex.build(kind, vectors)
    sidecar.unlink(missing_ok=True)  # an index is only trusted next to its own sidecar
    index.save(path)
    atomic_write_text(sidecar, json.dumps(fingerprint, indent=2) + "\n")
    return index
