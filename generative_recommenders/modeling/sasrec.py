"""SASRec (Kang & McAuley, ICDM 2018) as configured in the HSTU reference.

Blocks run on jagged tensors (no work on padding); the attention is
``ops.softmax_attention`` (sequences of similar length attend together).
"""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

from generative_recommenders.errors import require_heads
from generative_recommenders.modeling.registry import ModelInputs, register_model
from generative_recommenders.modeling.sequential import SequentialRecommender, encoder_arguments, sequential_recommender
from generative_recommenders.ops import jagged, softmax_attention
from generative_recommenders.ops.dropout import Dropout
from generative_recommenders.ops.sequences import DEFAULT_ATTENTION_BACKEND, JaggedSequences, check_attention_backend

_ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU}


class SASRecBlock(torch.nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        ffn_hidden_dim: int,
        ffn_activation_fn: str,
        ffn_dropout_rate: float,
        attention_backend: str,
    ) -> None:
        super().__init__()
        if ffn_activation_fn not in _ACTIVATIONS:
            raise ValueError(
                f"sasrec_encoder.ffn_activation_fn must be one of {sorted(_ACTIVATIONS)}, "
                f"got {ffn_activation_fn!r}"
            )
        self.embedding_dim = embedding_dim
        self.attention_backend = attention_backend
        self.attention = torch.nn.MultiheadAttention(
            embed_dim=embedding_dim,
            num_heads=num_heads,
            dropout=ffn_dropout_rate,
            batch_first=True,
        )
        self.ffn = torch.nn.Sequential(
            torch.nn.Linear(embedding_dim, ffn_hidden_dim),
            _ACTIVATIONS[ffn_activation_fn](),
            Dropout(ffn_dropout_rate),
            torch.nn.Linear(ffn_hidden_dim, embedding_dim),
            Dropout(ffn_dropout_rate),
        )

    def forward(self, x: torch.Tensor, sequences: JaggedSequences, num_positions: int) -> torch.Tensor:
        """``x [T, D]`` jagged by ``sequences``."""
        queries = F.layer_norm(x, [self.embedding_dim], eps=1e-8)
        attended = self._attention(queries, x, sequences, num_positions)
        # As in the reference, the FFN's residual is its own (normed) input.
        hidden = F.layer_norm(queries + attended, [self.embedding_dim], eps=1e-8)
        return self.ffn(hidden) + hidden

    def _attention(
        self, queries: torch.Tensor, x: torch.Tensor, sequences: JaggedSequences, num_positions: int
    ) -> torch.Tensor:
        """``self.attention``'s computation (query ``queries``, key and value ``x``), causal, jagged."""
        mha = self.attention
        heads, head_dim = mha.num_heads, self.embedding_dim // mha.num_heads
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3)
        attended = softmax_attention.causal_softmax_attention(
            F.linear(queries, w_q, b_q).view(-1, heads, head_dim),
            F.linear(x, w_k, b_k).view(-1, heads, head_dim),
            F.linear(x, w_v, b_v).view(-1, heads, head_dim),
            sequences,
            num_positions,
            dropout_rate=mha.dropout,
            training=self.training,
            backend=self.attention_backend,
        )
        return mha.out_proj(attended.reshape(-1, self.embedding_dim))


@gin.configurable("sasrec_encoder")
class SASRecEncoder(torch.nn.Module):
    """Causal Transformer blocks on padded ``[B, L, D]`` inputs.

    Configured as ``sasrec_encoder.*`` with the reference configs' names;
    ``attention_backend`` (``padded`` for the reference's computation) and
    ``jagged_backend`` choose the ops' backends.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_positions: int,
        num_blocks: int = 2,
        num_heads: int = 1,
        ffn_hidden_dim: int = 64,
        ffn_activation_fn: str = "relu",
        ffn_dropout_rate: float = 0.2,
        attention_backend: str = DEFAULT_ATTENTION_BACKEND,
        jagged_backend: str = jagged.DEFAULT_BACKEND,
    ) -> None:
        super().__init__()
        require_heads("sasrec_encoder.num_heads", num_heads, embedding_dim, must_divide=True)
        self.num_positions = num_positions
        self.attention_backend = check_attention_backend(attention_backend)
        self.jagged_backend = jagged.check_backend(jagged_backend)
        self.blocks = torch.nn.ModuleList(
            SASRecBlock(
                embedding_dim, num_heads, ffn_hidden_dim, ffn_activation_fn, ffn_dropout_rate, self.attention_backend
            )
            for _ in range(num_blocks)
        )
        for name, param in self.named_parameters():
            if param.dim() >= 2:
                torch.nn.init.xavier_normal_(param)
        self.description = (
            f"SASRec-b{num_blocks}-h{num_heads}-ffn{ffn_hidden_dim}-{ffn_activation_fn}"
            f"-d{ffn_dropout_rate}"
        )

    def attention_backend_in_use(self, device: torch.device, training: bool) -> str:
        """The attention backend that runs: ``padded`` when asked for, else the length groups
        (softmax attention has no Triton kernel)."""
        del device, training
        return "padded" if self.attention_backend == "padded" else "torch"

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        del timestamps  # SASRec uses positions only
        padded_length, backend = x.size(1), self.jagged_backend
        rows = lengths
        if self.attention_backend == "padded":
            # The reference computes every padded position too: all of them count as rows.
            rows = torch.full_like(lengths, padded_length)
        offsets = jagged.complete_cumsum(rows, backend=backend)
        sequences = JaggedSequences(offsets, padded_length, jagged_backend=backend)
        values = jagged.dense_to_jagged(x, offsets, backend=backend)
        for block in self.blocks:
            values = block(values, sequences, self.num_positions)
        out = jagged.jagged_to_padded_dense(values, offsets, padded_length, backend=backend)
        valid = torch.arange(padded_length, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        return out * valid.unsqueeze(-1).to(out.dtype)


@register_model("SASRec")
def build_sasrec(inputs: ModelInputs) -> SequentialRecommender:
    return sequential_recommender(SASRecEncoder(**encoder_arguments(inputs)), inputs)
