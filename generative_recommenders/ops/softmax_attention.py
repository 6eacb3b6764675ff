"""Causal softmax attention (SASRec's) on jagged tensors.

Backends: ``padded`` (the reference's computation, every sequence padded to
``num_positions``) and ``torch`` (sequences grouped by length, each group padded
to its own longest); ``auto`` is ``torch``. There is no Triton kernel for this
attention: ``triton`` also means ``torch``, so that one model-wide attention
setting serves HSTU and SASRec alike.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from generative_recommenders.ops.sequences import (
    DEFAULT_ATTENTION_BACKEND,
    JaggedSequences,
    check_attention_backend,
    grouped_attention,
    grouped_plan,
    padded_attention,
)


def _softmax_attention_block(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor], dropout_rate: float
) -> torch.Tensor:
    del bias  # SASRec has no attention bias
    attended = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_rate, is_causal=True
    )
    return attended.transpose(1, 2)


def causal_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    num_positions: int,
    dropout_rate: float = 0.0,
    training: bool = False,
    backend: str = DEFAULT_ATTENTION_BACKEND,
) -> torch.Tensor:
    """``softmax(q_i k_j / sqrt(d))`` over keys ``j <= i``, times ``v``: ``[T, H, dv]``.

    ``q, k [T, H, d]`` and ``v [T, H, dv]`` are jagged by ``sequences.offsets``;
    attention weights are dropped at ``dropout_rate`` while ``training``.
    """
    check_attention_backend(backend)
    if sequences.max_length > num_positions:
        raise ValueError(f"sequence of length {sequences.max_length} exceeds num_positions {num_positions}")
    attend = functools.partial(_softmax_attention_block, dropout_rate=dropout_rate if training else 0.0)
    if backend == "padded":
        return padded_attention(q, k, v, sequences, num_positions, attend)
    if q.size(0) == 0:
        return v.new_zeros(v.shape)
    return grouped_attention(q, k, v, grouped_plan(sequences, num_positions), attend)
