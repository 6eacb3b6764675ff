"""HSTU attention, the reference's way: every sequence padded to ``N``, the bias rebuilt on every call.

Also home of the SiLU attention on one padded block, which the length-grouped
backend runs on each of its groups.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from generative_recommenders.ops import jagged
from generative_recommenders.ops.dropout import dropout
from generative_recommenders.ops.sequences import JaggedSequences, padded_attention, time_bucket


def silu_attention_block(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    num_positions: int,
    dropout_rate: float,
) -> torch.Tensor:
    """HSTU's attention on a padded block ``[n, L, H, d]``: ``silu(q k^T + bias) / N``, causal."""
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k)
    if bias is not None:
        scores = scores + bias.unsqueeze(1)
    width = q.size(1)
    mask = torch.tril(torch.ones(width, width, device=q.device, dtype=q.dtype))
    weights = F.silu(scores) / num_positions * mask
    if dropout_rate > 0.0:
        weights = dropout(weights, dropout_rate)
    return torch.einsum("bhnm,bmhd->bnhd", weights, v)


def dense_relative_bias(
    position_weights: torch.Tensor, time_weights: torch.Tensor, time_buckets: torch.Tensor
) -> torch.Tensor:
    """``w_pos[N - 1 + j - i] + w_ts[time_buckets]`` for ``time_buckets [B, L, L]``.

    ``N`` is read off ``position_weights [2N - 1]``.
    """
    num_positions = (position_weights.numel() + 1) // 2
    length = time_buckets.size(-1)
    if length > num_positions:
        raise ValueError(f"sequence of length {length} exceeds num_positions {num_positions}")
    positions = torch.arange(length, device=time_buckets.device)
    relative = positions.unsqueeze(0) - positions.unsqueeze(1) + num_positions - 1
    return position_weights[relative].unsqueeze(0) + time_weights[time_buckets]


def padded_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    num_positions: int,
    position_weights: Optional[torch.Tensor],
    time_weights: Optional[torch.Tensor],
    dropout_rate: float,
) -> torch.Tensor:
    """The reference: everything padded to ``num_positions``, the bias rebuilt on every call."""
    bias = None
    if position_weights is not None:

        def pad(times: torch.Tensor) -> torch.Tensor:
            return jagged.jagged_to_padded_dense(
                times.unsqueeze(-1), sequences.offsets, num_positions, backend=sequences.jagged_backend
            ).squeeze(-1)

        request, times = pad(sequences.request_timestamps), pad(sequences.timestamps)
        buckets = time_bucket(request.unsqueeze(2) - times.unsqueeze(1), time_weights.numel() - 1)
        bias = dense_relative_bias(position_weights, time_weights, buckets)
    attend = functools.partial(silu_attention_block, num_positions=num_positions, dropout_rate=dropout_rate)
    return padded_attention(q, k, v, sequences, num_positions, attend, bias)
