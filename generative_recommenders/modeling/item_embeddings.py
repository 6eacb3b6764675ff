"""Item embeddings: learned ids, optionally fused with frozen item text embeddings.

Whatever module is used, its output is *the* embedding of an item: encoder
input, positive target, sampled negative and evaluation candidate alike.
"""

from __future__ import annotations

from typing import Optional

import gin
import torch

from generative_recommenders.errors import SettingError
from generative_recommenders.ops.dropout import Dropout

FUSION_MODES = ("add", "gate", "concat", "text_only")
PROJECTIONS = ("linear", "mlp", "dropout_linear_relu")


def _trunc_normal_(tensor: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    return torch.nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def _linear(in_dim: int, out_dim: int) -> torch.nn.Linear:
    layer = torch.nn.Linear(in_dim, out_dim)
    _trunc_normal_(layer.weight)
    _trunc_normal_(layer.bias)
    return layer


class ItemEmbedding(torch.nn.Module):
    """Learned id embeddings ``[num_items + 1, D]`` with a zero padding row."""

    def __init__(self, num_items: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.weight = torch.nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        _trunc_normal_(self.weight.weight)
        with torch.no_grad():
            self.weight.weight[0].zero_()
        self.description = f"id{embedding_dim}"

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.weight(item_ids)

    def all_embeddings(self) -> torch.Tensor:
        """Every row ``[num_items + 1, D]``: the weight itself, not a lookup of every id (whose
        backward would sort and scatter the whole table at every step)."""
        return self.weight.weight


@gin.configurable("text_fusion")
class ItemEmbeddingWithText(torch.nn.Module):
    """Id embedding fused with a projection of a frozen text embedding.

    Modes (``text_fusion.mode``):

    * ``add`` (HSTU-BLaIR): ``id(i) + P(text(i))``;
    * ``gate``: ``g * id(i) + (1 - g) * P(text(i))`` with a per-dimension gate
      ``g = sigmoid(W [id(i); P(text(i))] + b)``, starting near 1/2;
    * ``concat``: ``W [id(i); P(text(i))] + b``;
    * ``text_only``: ``P(text(i))``, no id embedding (items unseen in training
      still get a meaningful embedding).

    ``P`` is a linear map (the paper), with ``projection="mlp"`` a two-layer
    GELU MLP of width ``mlp_hidden_dim``, or with ``"dropout_linear_relu"``
    ``ReLU(Linear(Dropout(text_dropout_rate)(text)))`` (GRE-B's ``TE_ID_*``
    models). The text table stays frozen and is not part of the state dict: it
    is reloaded from its embedding file.
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        text_embeddings: torch.Tensor,
        mode: str = "add",
        projection: str = "linear",
        mlp_hidden_dim: Optional[int] = None,
        text_dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise SettingError(f"text_fusion.mode must be one of {', '.join(FUSION_MODES)}, got {mode!r}")
        if projection not in PROJECTIONS:
            raise SettingError(f"text_fusion.projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
        if text_embeddings.dim() != 2 or text_embeddings.size(0) != num_items + 1:
            raise ValueError(
                f"text embeddings of shape {tuple(text_embeddings.shape)} do not fit "
                f"{num_items} items (expected [{num_items + 1}, text_dim])"
            )
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.mode = mode
        self.register_buffer("text_embeddings", text_embeddings.float(), persistent=False)
        text_dim = text_embeddings.size(1)
        if projection == "linear":
            self.text_projection: torch.nn.Module = _linear(text_dim, embedding_dim)
        elif projection == "dropout_linear_relu":
            self.text_projection = torch.nn.Sequential(
                Dropout(text_dropout_rate), _linear(text_dim, embedding_dim), torch.nn.ReLU()
            )
        else:
            hidden = mlp_hidden_dim or 2 * embedding_dim
            self.text_projection = torch.nn.Sequential(
                _linear(text_dim, hidden), torch.nn.GELU(), _linear(hidden, embedding_dim)
            )
        self.id_embedding = None if mode == "text_only" else ItemEmbedding(num_items, embedding_dim)
        self.mix = _linear(2 * embedding_dim, embedding_dim) if mode in ("gate", "concat") else None
        if mode == "gate":
            torch.nn.init.zeros_(self.mix.bias)  # g starts near 1/2: both sources count
        self.description = f"{'' if mode == 'text_only' else f'id{embedding_dim}-'}text{text_dim}-{mode}-{projection}"

    def forward(self, item_ids: torch.Tensor) -> torch.Tensor:
        text = self.text_projection(self.text_embeddings[item_ids])
        if self.id_embedding is None:
            return text
        ids = self.id_embedding(item_ids)
        if self.mode == "add":
            return ids + text
        mixed = self.mix(torch.cat([ids, text], dim=-1))
        if self.mode == "concat":
            return mixed
        gate = torch.sigmoid(mixed)
        return gate * ids + (1 - gate) * text


def item_embedding_module(
    num_items: int, embedding_dim: int, text_embeddings: Optional[torch.Tensor] = None
) -> torch.nn.Module:
    """Id embeddings, fused with the frozen text table when there is one (``text_fusion.*``)."""
    if text_embeddings is None:
        return ItemEmbedding(num_items, embedding_dim)
    return ItemEmbeddingWithText(num_items, embedding_dim, text_embeddings)
