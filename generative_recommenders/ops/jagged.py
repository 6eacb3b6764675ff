"""Jagged <-> padded conversions, one public function per op.

Each op has a pure-PyTorch backend (``jagged_torch``), which always works,
and an fbgemm one (``jagged_fbgemm``: ``fbgemm-gpu`` on CUDA,
``fbgemm-gpu-cpu`` on CPU). Every op takes ``backend``: ``"torch"``,
``"fbgemm"`` or ``"auto"`` (fbgemm when it imports). Models carry theirs from
their config; the default is the environment variable ``GR_JAGGED_BACKEND``,
read once at import, else ``"auto"``. The tests run every backend on the same
inputs.

A jagged tensor is ``values [T, D]`` plus ``offsets [B + 1]``: row ``b`` owns
``values[offsets[b]:offsets[b + 1]]``.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType

import torch

from generative_recommenders.ops import jagged_torch

BACKENDS = ("auto", "torch", "fbgemm")
DEFAULT_BACKEND = os.environ.get("GR_JAGGED_BACKEND") or "auto"


@functools.lru_cache(maxsize=None)
def _fbgemm() -> ModuleType | None:
    try:
        from generative_recommenders.ops import jagged_fbgemm
    except Exception:  # an fbgemm build that does not match torch fails in many ways
        return None
    return jagged_fbgemm if hasattr(torch.ops.fbgemm, "jagged_to_padded_dense") else None


def fbgemm_available() -> bool:
    return _fbgemm() is not None


def check_backend(backend: str) -> str:
    """``backend`` if it names one (for configs: fails before anything runs)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown jagged backend {backend!r}; choose from {BACKENDS}")
    return backend


def resolve_backend(backend: str = DEFAULT_BACKEND) -> str:
    """The concrete backend (``torch`` or ``fbgemm``) that ``backend`` stands for."""
    check_backend(backend)
    if backend == "fbgemm" and not fbgemm_available():
        raise RuntimeError(
            "the fbgemm jagged backend was requested but fbgemm_gpu does not import; "
            "install fbgemm-gpu-cpu==1.8.0 (CPU) or fbgemm-gpu==1.8.0 (CUDA), or use the torch backend"
        )
    if backend == "auto":
        return "fbgemm" if fbgemm_available() else "torch"
    return backend


def _implementation(backend: str) -> ModuleType:
    return _fbgemm() if resolve_backend(backend) == "fbgemm" else jagged_torch


def complete_cumsum(lengths: torch.Tensor, backend: str = DEFAULT_BACKEND) -> torch.Tensor:
    """Offsets ``[0, l0, l0 + l1, ...]`` (length B + 1) from lengths ``[B]``."""
    return _implementation(backend).complete_cumsum(lengths)


def jagged_to_padded_dense(
    values: torch.Tensor,
    offsets: torch.Tensor,
    max_length: int,
    padding_value: float = 0.0,
    backend: str = DEFAULT_BACKEND,
) -> torch.Tensor:
    """``values [T, D]`` -> ``[B, max_length, D]``; rows longer than max_length are cut."""
    return _implementation(backend).jagged_to_padded_dense(values, offsets, max_length, padding_value)


def dense_to_jagged(dense: torch.Tensor, offsets: torch.Tensor, backend: str = DEFAULT_BACKEND) -> torch.Tensor:
    """``dense [B, N, D]`` -> ``values [T, D]`` keeping the first length_b rows of each b."""
    return _implementation(backend).dense_to_jagged(dense, offsets)
