"""SASRec (Kang & McAuley, ICDM 2018) as configured in the HSTU reference."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F

_ACTIVATIONS = {"relu": torch.nn.ReLU, "gelu": torch.nn.GELU}


class SASRecBlock(torch.nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        ffn_hidden_dim: int,
        ffn_activation_fn: str,
        ffn_dropout_rate: float,
    ) -> None:
        super().__init__()
        if ffn_activation_fn not in _ACTIVATIONS:
            raise ValueError(
                f"sasrec_encoder.ffn_activation_fn must be one of {sorted(_ACTIVATIONS)}, "
                f"got {ffn_activation_fn!r}"
            )
        self.embedding_dim = embedding_dim
        self.attention = torch.nn.MultiheadAttention(
            embed_dim=embedding_dim,
            num_heads=num_heads,
            dropout=ffn_dropout_rate,
            batch_first=True,
        )
        self.ffn = torch.nn.Sequential(
            torch.nn.Linear(embedding_dim, ffn_hidden_dim),
            _ACTIVATIONS[ffn_activation_fn](),
            torch.nn.Dropout(ffn_dropout_rate),
            torch.nn.Linear(ffn_hidden_dim, embedding_dim),
            torch.nn.Dropout(ffn_dropout_rate),
        )

    def forward(
        self, x: torch.Tensor, causal_mask: torch.Tensor, valid_mask: torch.Tensor
    ) -> torch.Tensor:
        queries = F.layer_norm(x, [self.embedding_dim], eps=1e-8)
        attended, _ = self.attention(
            queries, x, x, attn_mask=causal_mask, need_weights=False
        )
        # As in the reference, the FFN's residual is its own (normed) input.
        hidden = F.layer_norm(queries + attended, [self.embedding_dim], eps=1e-8)
        return (self.ffn(hidden) + hidden) * valid_mask


@gin.configurable("sasrec_encoder")
class SASRecEncoder(torch.nn.Module):
    """Causal Transformer blocks on padded ``[B, L, D]`` inputs.

    Configured as ``sasrec_encoder.*`` with the reference configs' names.
    """

    def __init__(
        self,
        embedding_dim: int,
        max_sequence_len: int,
        num_blocks: int = 2,
        num_heads: int = 1,
        ffn_hidden_dim: int = 64,
        ffn_activation_fn: str = "relu",
        ffn_dropout_rate: float = 0.2,
    ) -> None:
        super().__init__()
        self.max_sequence_len = max_sequence_len
        self.blocks = torch.nn.ModuleList(
            SASRecBlock(embedding_dim, num_heads, ffn_hidden_dim, ffn_activation_fn, ffn_dropout_rate)
            for _ in range(num_blocks)
        )
        for name, param in self.named_parameters():
            if param.dim() >= 2:
                torch.nn.init.xavier_normal_(param)
        self.register_buffer(
            "causal_mask",
            torch.triu(torch.ones(max_sequence_len, max_sequence_len, dtype=torch.bool), 1),
            persistent=False,
        )
        self.description = (
            f"SASRec-b{num_blocks}-h{num_heads}-ffn{ffn_hidden_dim}-{ffn_activation_fn}"
            f"-d{ffn_dropout_rate}"
        )

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        del timestamps  # SASRec uses positions only
        padded_length = x.size(1)
        positions = torch.arange(padded_length, device=x.device)
        valid_mask = (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1).to(x.dtype)
        causal_mask = self.causal_mask[:padded_length, :padded_length]
        for block in self.blocks:
            x = block(x, causal_mask, valid_mask)
        return x

