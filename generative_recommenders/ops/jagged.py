"""Jagged <-> padded conversions, one public function per op.

Each op has a pure-PyTorch implementation, which always works, and an fbgemm
one (``fbgemm-gpu`` on CUDA, ``fbgemm-gpu-cpu`` on CPU) used when fbgemm
imports. ``set_backend`` or the environment variable ``GR_JAGGED_BACKEND``
(``torch`` or ``fbgemm``) forces one; the tests run both on the same inputs.

A jagged tensor is ``values [T, D]`` plus ``offsets [B + 1]``: row ``b`` owns
``values[offsets[b]:offsets[b + 1]]``.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

BACKENDS = ("torch", "fbgemm")
_forced_backend: Optional[str] = os.environ.get("GR_JAGGED_BACKEND") or None


@functools.lru_cache(maxsize=None)
def fbgemm_available() -> bool:
    try:
        import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
    except Exception:  # an fbgemm build that does not match torch fails in many ways
        return False
    return hasattr(torch.ops.fbgemm, "jagged_to_padded_dense")


def set_backend(backend: Optional[str]) -> None:
    """Forces a backend for every op; ``None`` restores automatic choice."""
    global _forced_backend
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown jagged backend {backend!r}; choose from {BACKENDS}")
    _forced_backend = backend


def active_backend() -> str:
    if _forced_backend is not None:
        if _forced_backend not in BACKENDS:
            raise ValueError(
                f"GR_JAGGED_BACKEND={_forced_backend!r} is not one of {BACKENDS}"
            )
        if _forced_backend == "fbgemm" and not fbgemm_available():
            raise RuntimeError(
                "the fbgemm jagged backend was requested but fbgemm_gpu does not import; "
                "install fbgemm-gpu-cpu==1.8.0 (CPU) or fbgemm-gpu==1.8.0 (CUDA)"
            )
        return _forced_backend
    return "fbgemm" if fbgemm_available() else "torch"


def complete_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    """Offsets ``[0, l0, l0 + l1, ...]`` (length B + 1) from lengths ``[B]``."""
    if active_backend() == "fbgemm":
        return torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, dim=0)])


def jagged_to_padded_dense(
    values: torch.Tensor,
    offsets: torch.Tensor,
    max_length: int,
    padding_value: float = 0.0,
) -> torch.Tensor:
    """``values [T, D]`` -> ``[B, max_length, D]``; rows longer than max_length are cut."""
    if active_backend() == "fbgemm":
        return torch.ops.fbgemm.jagged_to_padded_dense(
            values, [offsets], [max_length], padding_value
        )
    lengths = offsets[1:] - offsets[:-1]
    positions = torch.arange(max_length, device=values.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, max_length]
    if values.size(0) == 0:
        return values.new_full((lengths.size(0), max_length, values.size(1)), padding_value)
    index = (offsets[:-1].unsqueeze(1) + positions.unsqueeze(0)).clamp(max=values.size(0) - 1)
    gathered = values[index]  # [B, max_length, D]
    return torch.where(mask.unsqueeze(-1), gathered, gathered.new_tensor(padding_value))


def dense_to_jagged(dense: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``dense [B, N, D]`` -> ``values [T, D]`` keeping the first length_b rows of each b."""
    if active_backend() == "fbgemm":
        return torch.ops.fbgemm.dense_to_jagged(dense, [offsets])[0]
    lengths = offsets[1:] - offsets[:-1]
    positions = torch.arange(dense.size(1), device=dense.device)
    return dense[positions.unsqueeze(0) < lengths.unsqueeze(1)]
