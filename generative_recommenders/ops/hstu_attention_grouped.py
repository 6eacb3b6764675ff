"""HSTU attention in PyTorch with sequences grouped by length (the CPU default).

Each group is padded only to its own longest member, and the bias indices are
built once per batch (cached in the sequences record) for all layers.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from generative_recommenders.ops.hstu_attention_padded import silu_attention_block
from generative_recommenders.ops.sequences import JaggedSequences, grouped_attention, grouped_plan


def grouped_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    num_positions: int,
    position_weights: Optional[torch.Tensor],
    time_weights: Optional[torch.Tensor],
    dropout_rate: float,
) -> torch.Tensor:
    """Sequences of similar length attend together; the bias indices are shared by all layers."""
    if q.size(0) == 0:
        return v.new_zeros(v.shape)
    with_bias = position_weights is not None
    plan = grouped_plan(sequences, num_positions, time_weights.numel() - 1 if with_bias else None)
    # One gather per layer from the (2N - 1) x (buckets + 1) table of every bias value.
    table = (position_weights.unsqueeze(1) + time_weights.unsqueeze(0)).view(-1) if with_bias else None
    attend = functools.partial(silu_attention_block, num_positions=num_positions, dropout_rate=dropout_rate)
    return grouped_attention(q, k, v, plan, attend, table)
