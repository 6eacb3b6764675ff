"""Dropout: ``dropout`` and the ``Dropout`` module that calls it.

The result is ``torch.nn.functional.dropout``'s, bit for bit, masks included. On CPU torch draws
its keep mask with ``bernoulli_(1 - p)``: a double-precision uniform per element, compared with
``1 - p`` in a branch, one element at a time (at ``p = 0.5`` every other branch is mispredicted).
``torch.rand`` in double precision makes the very same draws from the same generator, and leaves it
where ``bernoulli_`` does; compared in bulk they cost about half. The draws are made a block at a
time so that they are compared while still in cache (a whole ``[2048, 21, 384]`` tensor of doubles
is not). Other devices, and non-contiguous inputs (whose masks torch draws in memory order), go
through ``F.dropout`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DRAWS_PER_BLOCK = 1 << 17  # 1 MiB of doubles


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout(x, p, training)``: each element zeroed with probability ``p``, the rest scaled
    by ``1 / (1 - p)``, when ``training``; ``x`` itself otherwise."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not x.is_contiguous() or p == 1.0:
        return F.dropout(x, p, training=True)
    mask = torch.empty(x.numel(), dtype=x.dtype)
    for start in range(0, x.numel(), DRAWS_PER_BLOCK):
        draws = torch.rand(min(DRAWS_PER_BLOCK, x.numel() - start), dtype=torch.float64)
        # As torch: the mask 1 where bernoulli_(1 - p) draws 1, then divided by 1 - p.
        mask[start : start + draws.numel()].copy_(draws < 1.0 - p).div_(1.0 - p)
    return x * mask.view(x.shape)


class Dropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` through :func:`dropout` (same arguments, no parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)
