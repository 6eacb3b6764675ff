"""Splitting a dimension into tiles whose products round as the whole one's.

A BLAS picks its kernel by shape: a matmul or ``bmm`` over a piece one or two
wide (a matrix-vector product) may round differently from the same rows inside
a wider one. Tiling keeps every piece at least :data:`MIN_TILE` wide, so the
tiled evaluation, retrieval and sampled softmax give the untiled bits.
"""

from __future__ import annotations

from typing import List, Tuple

MIN_TILE = 16


def tile_bounds(total: int, size: int) -> List[Tuple[int, int]]:
    """``[begin, end)`` pieces of ``size`` covering ``0..total``; a last piece narrower than
    :data:`MIN_TILE` joins the one before it."""
    size = max(size, MIN_TILE)
    bounds = [(begin, min(begin + size, total)) for begin in range(0, total, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < MIN_TILE:
        bounds[-2:] = [(bounds[-2][0], total)]
    return bounds
