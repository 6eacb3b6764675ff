"""HSTU's causal SiLU attention with a relative position and time bias, on jagged tensors.

For each sequence, with ``N`` the configured ``num_positions``::

    out_i = sum_{j <= i} silu(q_i . k_j + w_pos[N - 1 + j - i] + w_ts[bucket(|r_i - t_j|)]) / N * v_j

where ``t_j`` is the time of event ``j`` and ``r_i`` the time at which position
``i``'s prediction is requested. ``q, k [T, H, dqk]`` and ``v [T, H, dv]`` are
jagged: sequence ``b`` owns rows ``offsets[b]:offsets[b + 1]``.

Backends, all computing the same values and gradients, each in its own module:

* ``padded`` (``hstu_attention_padded``): the reference's computation: every
  sequence padded to ``N``, the ``[B, N, N]`` bias built from scratch on every call.
* ``torch`` (``hstu_attention_grouped``): sequences grouped by length (each
  group padded to its own longest member) and the bias indices built once per
  batch, shared by all layers.
* ``triton`` (``hstu_attention_triton``): a fused kernel, forward and
  backward, that never materializes an ``[L, L]`` matrix; fp32 or, under
  ``torch.autocast``, bf16/fp16 inputs.
* ``auto``: ``triton`` on CUDA when triton imports and there is no attention
  dropout, else ``torch``.

Models carry their backend from their config; the default is the
environment variable ``GR_ATTENTION_BACKEND``, read once at import, else
``auto`` (``sequences.DEFAULT_ATTENTION_BACKEND``).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from generative_recommenders.ops.hstu_attention_grouped import grouped_hstu_attention
from generative_recommenders.ops.hstu_attention_padded import padded_hstu_attention
from generative_recommenders.ops.sequences import (
    DEFAULT_ATTENTION_BACKEND,
    JaggedSequences,
    check_attention_backend,
)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_runs_on(device: torch.device) -> bool:
    # The interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors: that is how they are tested.
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str, device: torch.device, dropout: bool) -> str:
    """The concrete backend ``backend`` stands for on ``device``; ``dropout``: attention dropout is active."""
    check_attention_backend(backend)
    if backend == "auto":
        return "triton" if device.type == "cuda" and not dropout and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("the triton attention backend was requested but triton does not import")
        if not _triton_runs_on(device):
            raise RuntimeError(
                f"the triton attention backend runs on CUDA (or with TRITON_INTERPRET=1), not on {device}"
            )
        if dropout:
            raise ValueError("the triton attention backend has no attention dropout; use the torch backend")
    return backend


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    num_positions: int,
    position_weights: Optional[torch.Tensor] = None,
    time_weights: Optional[torch.Tensor] = None,
    dropout_rate: float = 0.0,
    training: bool = False,
    backend: str = DEFAULT_ATTENTION_BACKEND,
) -> torch.Tensor:
    """Jagged HSTU attention: ``q, k [T, H, dqk]``, ``v [T, H, dv]`` -> ``[T, H, dv]``.

    ``position_weights [2 * num_positions - 1]`` and ``time_weights [num_buckets + 1]``
    (both or neither) add the relative bias; attention dropout (``dropout_rate``
    while ``training``) drops entries of the attention matrix.
    """
    if (position_weights is None) != (time_weights is None):
        raise ValueError("position_weights and time_weights go together (pass both, or neither)")
    if position_weights is not None:
        if position_weights.numel() != 2 * num_positions - 1:
            raise ValueError(
                f"position_weights has {position_weights.numel()} entries; "
                f"num_positions {num_positions} needs {2 * num_positions - 1}"
            )
        if sequences.timestamps is None or sequences.request_timestamps is None:
            raise ValueError("a relative bias needs the sequences' timestamps and request_timestamps")
    if sequences.max_length > num_positions:
        raise ValueError(
            f"sequence of length {sequences.max_length} exceeds num_positions {num_positions}"
        )
    dropout = training and dropout_rate > 0.0
    backend = resolve_backend(backend, q.device, dropout)
    if backend == "triton":
        from generative_recommenders.ops.hstu_attention_triton import triton_hstu_attention

        return triton_hstu_attention(q, k, v, sequences, num_positions, position_weights, time_weights)
    attend = padded_hstu_attention if backend == "padded" else grouped_hstu_attention
    return attend(
        q, k, v, sequences, num_positions, position_weights, time_weights, dropout_rate if dropout else 0.0
    )
