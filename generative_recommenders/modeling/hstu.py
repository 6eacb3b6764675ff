"""HSTU (Hierarchical Sequential Transduction Unit), Zhai et al., ICML 2024.

Layers run on jagged tensors (no work on padding); the attention itself runs on
a padded ``[B, L, L]`` block, where ``L`` is the longest sequence of the batch.
``max_sequence_len`` (``N``) is fixed by the config: the SiLU attention is
divided by ``N`` and the position bias is indexed relative to ``N``, so outputs
do not depend on how much a batch is padded.
"""

from __future__ import annotations

from typing import Optional

import gin
import torch
import torch.nn.functional as F

from generative_recommenders.ops import jagged

NUM_TIME_BUCKETS = 128
# Bucket k starts at a gap of e^(0.301 k): each bucket spans ~1.35x the gaps of the last.
_LOG_BUCKET_BASE = 0.301


def time_bucket(delta: torch.Tensor, num_buckets: int = NUM_TIME_BUCKETS) -> torch.Tensor:
    """``clamp(floor(ln(max(|d|, 1)) / 0.301), 0, num_buckets)`` for time gaps ``d``."""
    buckets = (torch.log(delta.abs().clamp(min=1).to(torch.float32)) / _LOG_BUCKET_BASE).long()
    return buckets.clamp(min=0, max=num_buckets)


def request_time_buckets(timestamps: torch.Tensor, num_buckets: int = NUM_TIME_BUCKETS) -> torch.Tensor:
    """Bucket of ``|t_{i+1} - t_j|`` for every query i and key j: ``[B, L, L]``.

    ``t_{i+1}`` is the time of the next event, i.e. the time at which position
    i's prediction is requested; the last position repeats its own time.
    """
    extended = torch.cat([timestamps, timestamps[:, -1:]], dim=1)
    return time_bucket(extended[:, 1:].unsqueeze(2) - extended[:, :-1].unsqueeze(1), num_buckets)


class RelativeAttentionBias(torch.nn.Module):
    """Learned bias ``w_pos[N - 1 + j - i] + w_ts[bucket(|t_{i+1} - t_j|)]``."""

    def __init__(self, max_sequence_len: int, num_buckets: int = NUM_TIME_BUCKETS) -> None:
        super().__init__()
        self.max_sequence_len = max_sequence_len
        self.position_weights = torch.nn.Parameter(
            torch.empty(2 * max_sequence_len - 1).normal_(mean=0.0, std=0.02)
        )
        self.time_weights = torch.nn.Parameter(
            torch.empty(num_buckets + 1).normal_(mean=0.0, std=0.02)
        )

    def forward(self, time_buckets: torch.Tensor) -> torch.Tensor:
        """``time_buckets [B, L, L]`` (from :func:`request_time_buckets`) -> bias ``[B, L, L]``."""
        length = time_buckets.size(-1)
        if length > self.max_sequence_len:
            raise ValueError(
                f"sequence of length {length} exceeds max_sequence_len {self.max_sequence_len}"
            )
        positions = torch.arange(length, device=time_buckets.device)
        relative = positions.unsqueeze(0) - positions.unsqueeze(1) + self.max_sequence_len - 1
        return self.position_weights[relative].unsqueeze(0) + self.time_weights[time_buckets]


class HSTUBlock(torch.nn.Module):
    """One pre-norm HSTU layer on jagged inputs ``x [T, D]``."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        attention_dim: int,
        linear_dim: int,
        dropout_rate: float,
        attn_dropout_rate: float,
        max_sequence_len: int,
        enable_relative_attention_bias: bool,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.attention_dim = attention_dim
        self.linear_dim = linear_dim
        self.dropout_rate = dropout_rate
        self.attn_dropout_rate = attn_dropout_rate
        self.max_sequence_len = max_sequence_len
        self.eps = eps
        self.uvqk = torch.nn.Parameter(
            torch.empty(embedding_dim, 2 * num_heads * (linear_dim + attention_dim)).normal_(
                mean=0.0, std=0.02
            )
        )
        self.output = torch.nn.Linear(linear_dim * num_heads, embedding_dim)
        torch.nn.init.xavier_uniform_(self.output.weight)
        self.relative_attention_bias = (
            RelativeAttentionBias(max_sequence_len) if enable_relative_attention_bias else None
        )

    def forward(
        self,
        x: torch.Tensor,
        offsets: torch.Tensor,
        padded_length: int,
        time_buckets: Optional[torch.Tensor],
        causal_mask: torch.Tensor,
    ) -> torch.Tensor:
        h, dqk, dv = self.num_heads, self.attention_dim, self.linear_dim
        batch_size = offsets.numel() - 1
        normed = F.layer_norm(x, [self.embedding_dim], eps=self.eps)
        u, v, q, k = torch.split(
            F.silu(normed @ self.uvqk), [h * dv, h * dv, h * dqk, h * dqk], dim=1
        )
        padded_q = jagged.jagged_to_padded_dense(q, offsets, padded_length)
        padded_k = jagged.jagged_to_padded_dense(k, offsets, padded_length)
        padded_v = jagged.jagged_to_padded_dense(v, offsets, padded_length)
        scores = torch.einsum(
            "bnhd,bmhd->bhnm",
            padded_q.view(batch_size, padded_length, h, dqk),
            padded_k.view(batch_size, padded_length, h, dqk),
        )
        if self.relative_attention_bias is not None and time_buckets is not None:
            scores = scores + self.relative_attention_bias(time_buckets).unsqueeze(1)
        # Pointwise SiLU attention, normalized by the configured length, not the batch's.
        weights = F.silu(scores) / self.max_sequence_len * causal_mask
        weights = F.dropout(weights, p=self.attn_dropout_rate, training=self.training)
        attended = torch.einsum(
            "bhnm,bmhd->bnhd", weights, padded_v.view(batch_size, padded_length, h, dv)
        ).reshape(batch_size, padded_length, h * dv)
        attended = jagged.dense_to_jagged(attended, offsets)
        gated = u * F.layer_norm(attended, [h * dv], eps=self.eps)
        return self.output(F.dropout(gated, p=self.dropout_rate, training=self.training)) + x


@gin.configurable("hstu_encoder")
class HSTUEncoder(torch.nn.Module):
    """A stack of HSTU blocks: padded ``[B, L, D]`` in and out.

    Configured as ``hstu_encoder.*`` with the reference configs' names.
    """

    def __init__(
        self,
        embedding_dim: int,
        max_sequence_len: int,
        num_blocks: int = 2,
        num_heads: int = 1,
        dqk: int = 64,
        dv: int = 64,
        linear_dropout_rate: float = 0.0,
        attn_dropout_rate: float = 0.0,
        enable_relative_attention_bias: bool = True,
    ) -> None:
        super().__init__()
        self.max_sequence_len = max_sequence_len
        self.blocks = torch.nn.ModuleList(
            HSTUBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                attention_dim=dqk,
                linear_dim=dv,
                dropout_rate=linear_dropout_rate,
                attn_dropout_rate=attn_dropout_rate,
                max_sequence_len=max_sequence_len,
                enable_relative_attention_bias=enable_relative_attention_bias,
            )
            for _ in range(num_blocks)
        )
        self.register_buffer(
            "causal_mask",
            torch.tril(torch.ones(max_sequence_len, max_sequence_len)),
            persistent=False,
        )
        self.description = (
            f"HSTU-b{num_blocks}-h{num_heads}-dqk{dqk}-dv{dv}-d{linear_dropout_rate}"
            + ("" if enable_relative_attention_bias else "-norab")
        )

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        padded_length = x.size(1)
        offsets = jagged.complete_cumsum(lengths)
        # The buckets are the same for every block: computed once per batch.
        time_buckets = request_time_buckets(timestamps)
        causal_mask = self.causal_mask[:padded_length, :padded_length]
        values = jagged.dense_to_jagged(x, offsets)
        for block in self.blocks:
            values = block(values, offsets, padded_length, time_buckets, causal_mask)
        return jagged.jagged_to_padded_dense(values, offsets, padded_length)

