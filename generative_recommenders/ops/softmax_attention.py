"""Causal softmax attention (SASRec's) on jagged tensors, with ``hstu_attention``'s PyTorch paths.

``hstu_attention.set_backend("padded")`` (or ``GR_ATTENTION_BACKEND=padded``)
selects the reference's computation, every sequence padded to ``max_seq_len``;
otherwise sequences are grouped by length, each group padded to its own
longest (there is no Triton kernel for this attention).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from generative_recommenders.ops import hstu_attention
from generative_recommenders.ops.hstu_attention import JaggedSequences


def _softmax_attention(
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
    max_seq_len: int,
    dropout_rate: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """``softmax(q_i k_j / sqrt(d))`` over keys ``j <= i``, times ``v``: ``[T, H, dv]``.

    ``q, k [T, H, d]`` and ``v [T, H, dv]`` are jagged by ``sequences.offsets``;
    attention weights are dropped at ``dropout_rate`` while ``training``.
    """
    if sequences.max_length > max_seq_len:
        raise ValueError(f"sequence of length {sequences.max_length} exceeds max_sequence_len {max_seq_len}")
    attend = functools.partial(_softmax_attention, dropout_rate=dropout_rate if training else 0.0)
    if hstu_attention.padded_reference_forced():
        return hstu_attention.padded_attention(q, k, v, sequences, max_seq_len, attend)
    if q.size(0) == 0:
        return v.new_zeros(v.shape)
    return hstu_attention.grouped_attention(q, k, v, hstu_attention.grouped_plan(sequences, max_seq_len), attend)
