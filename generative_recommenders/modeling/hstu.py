"""HSTU (Hierarchical Sequential Transduction Unit), Zhai et al., ICML 2024.

Layers run on jagged tensors (no work on padding); the attention is
``ops.hstu_attention`` (its backend, which the encoder carries from its
config, picks how it pads, or whether it does).
``num_positions`` (``N``) is fixed by the config: the SiLU attention is
divided by ``N`` and the position bias is indexed relative to ``N``, so outputs
do not depend on how much a batch is padded.
"""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from generative_recommenders.errors import require_heads
from generative_recommenders.modeling.registry import ModelInputs, register_model
from generative_recommenders.modeling.sequential import SequentialRecommender, encoder_arguments, sequential_recommender
from generative_recommenders.ops import hstu_attention, jagged
from generative_recommenders.ops.dropout import Dropout
from generative_recommenders.ops.sequences import (
    DEFAULT_ATTENTION_BACKEND,
    NUM_TIME_BUCKETS,
    JaggedSequences,
    check_attention_backend,
)


def request_timestamps(timestamps: torch.Tensor) -> torch.Tensor:
    """``t_{i+1}`` for every position of padded ``timestamps [B, L]``: ``[B, L]``.

    The next event's time is when position i's prediction is requested; the
    last position repeats its own time.
    """
    return torch.cat([timestamps[:, 1:], timestamps[:, -1:]], dim=1)


class RelativeAttentionBias(torch.nn.Module):
    """The weights of the bias ``w_pos[N - 1 + j - i] + w_ts[bucket(|t_{i+1} - t_j|)]``."""

    def __init__(self, num_positions: int, num_buckets: int = NUM_TIME_BUCKETS) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.position_weights = torch.nn.Parameter(
            torch.empty(2 * num_positions - 1).normal_(mean=0.0, std=0.02)
        )
        self.time_weights = torch.nn.Parameter(
            torch.empty(num_buckets + 1).normal_(mean=0.0, std=0.02)
        )


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
        num_positions: int,
        enable_relative_attention_bias: bool,
        attention_backend: str,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.attention_dim = attention_dim
        self.linear_dim = linear_dim
        self.attn_dropout_rate = attn_dropout_rate
        self.num_positions = num_positions
        self.attention_backend = attention_backend
        self.eps = eps
        self.uvqk = torch.nn.Parameter(
            torch.empty(embedding_dim, 2 * num_heads * (linear_dim + attention_dim)).normal_(
                mean=0.0, std=0.02
            )
        )
        self.output_dropout = Dropout(dropout_rate)
        self.output = torch.nn.Linear(linear_dim * num_heads, embedding_dim)
        torch.nn.init.xavier_uniform_(self.output.weight)
        self.relative_attention_bias = (
            RelativeAttentionBias(num_positions) if enable_relative_attention_bias else None
        )

    def forward(self, x: torch.Tensor, sequences: JaggedSequences) -> torch.Tensor:
        h, dqk, dv = self.num_heads, self.attention_dim, self.linear_dim
        normed = F.layer_norm(x, [self.embedding_dim], eps=self.eps)
        u, v, q, k = torch.split(
            F.silu(normed @ self.uvqk), [h * dv, h * dv, h * dqk, h * dqk], dim=1
        )
        bias = self.relative_attention_bias
        attended = hstu_attention.hstu_attention(
            q.view(-1, h, dqk),
            k.view(-1, h, dqk),
            v.view(-1, h, dv),
            sequences,
            self.num_positions,
            position_weights=None if bias is None else bias.position_weights,
            time_weights=None if bias is None else bias.time_weights,
            dropout_rate=self.attn_dropout_rate,
            training=self.training,
            backend=self.attention_backend,
        ).reshape(-1, h * dv)
        gated = u * F.layer_norm(attended, [h * dv], eps=self.eps)
        return self.output(self.output_dropout(gated)) + x


@gin.configurable("hstu_encoder")
class HSTUEncoder(torch.nn.Module):
    """A stack of HSTU blocks: padded ``[B, L, D]`` in and out.

    Configured as ``hstu_encoder.*`` with the reference configs' names;
    ``attention_backend`` and ``jagged_backend`` choose the ops' backends
    (``ops.hstu_attention``, ``ops.jagged``).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_positions: int,
        num_blocks: int = 2,
        num_heads: int = 1,
        dqk: int = 64,
        dv: int = 64,
        linear_dropout_rate: float = 0.0,
        attn_dropout_rate: float = 0.0,
        enable_relative_attention_bias: bool = True,
        attention_backend: str = DEFAULT_ATTENTION_BACKEND,
        jagged_backend: str = jagged.DEFAULT_BACKEND,
    ) -> None:
        super().__init__()
        require_heads("hstu_encoder.num_heads", num_heads, embedding_dim, must_divide=False)  # heads have their own dqk, dv
        self.num_positions = num_positions
        self.enable_relative_attention_bias = enable_relative_attention_bias
        self.jagged_backend = jagged.check_backend(jagged_backend)
        self.blocks = torch.nn.ModuleList(
            HSTUBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                attention_dim=dqk,
                linear_dim=dv,
                dropout_rate=linear_dropout_rate,
                attn_dropout_rate=attn_dropout_rate,
                num_positions=num_positions,
                enable_relative_attention_bias=enable_relative_attention_bias,
                attention_backend=check_attention_backend(attention_backend),
            )
            for _ in range(num_blocks)
        )
        self.description = (
            f"HSTU-b{num_blocks}-h{num_heads}-dqk{dqk}-dv{dv}-d{linear_dropout_rate}"
            + ("" if enable_relative_attention_bias else "-norab")
        )

    def attention_backend_in_use(self, device: torch.device, training: bool) -> str:
        """The attention backend that runs on ``device`` (training: with the blocks' attention dropout)."""
        dropout = training and any(block.attn_dropout_rate > 0 for block in self.blocks)
        return hstu_attention.resolve_backend(self.blocks[0].attention_backend, device, dropout)

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        padded_length, backend = x.size(1), self.jagged_backend
        offsets = jagged.complete_cumsum(lengths, backend=backend)
        sequences = JaggedSequences(offsets, padded_length, jagged_backend=backend)

        def to_jagged(dense: torch.Tensor) -> torch.Tensor:
            return jagged.dense_to_jagged(dense.unsqueeze(-1), offsets, backend=backend).squeeze(-1)

        if self.enable_relative_attention_bias:
            sequences.timestamps = to_jagged(timestamps)
            sequences.request_timestamps = to_jagged(request_timestamps(timestamps))
        values = jagged.dense_to_jagged(x, offsets, backend=backend)
        for block in self.blocks:
            values = block(values, sequences)
        return jagged.jagged_to_padded_dense(values, offsets, padded_length, backend=backend)


@register_model("HSTU")
def build_hstu(inputs: ModelInputs) -> SequentialRecommender:
    # The reference re-initializes HSTU's positions with xavier_normal_ after construction (SASRec's it keeps).
    return sequential_recommender(HSTUEncoder(**encoder_arguments(inputs)), inputs, position_init="xavier_normal")
