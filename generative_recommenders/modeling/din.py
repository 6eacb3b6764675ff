"""DIN (Deep Interest Network) as GRE-B's ``models/din.py``.

With ``t`` the target's fields and ``s_j`` behaviour ``j``'s (each the concatenation
of the item's fields, width ``d``; ``ctr_fields.ItemFields``), RecStudio's feed-forward
``AttentionLayer`` scores ``a_j = MLP([t, t, t * s_j, t - s_j]) / sqrt(d)`` (MLP 64-32
with Dice, then a linear output), a softmax over the real behaviours gives the
weights, and the interest ``i = Linear(BatchNorm(sum_j w_j s_j))``. The click logit
is ``Linear(MLP([i, t, t * i, u]))`` with ``u`` the user-id field and the MLP
``Dropout -> Linear -> BatchNorm -> Dice`` per width (128-64-64, dropout 0.5).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import gin
import torch

from generative_recommenders.modeling.ctr_fields import CTRModel, mlp_to_logit, xavier_initialization
from generative_recommenders.modeling.registry import ModelInputs, register_model


@gin.configurable("din")
class DIN(CTRModel):
    """GRE-B's DIN: attention MLP 64-32 (Dice), MLP 128-64-64 with Dice, batch norm and dropout 0.5."""

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 32,
        num_categories: int = 0,
        text_embeddings: Optional[torch.Tensor] = None,
        num_users: int = 0,
        attention_mlp_dims: Sequence[int] = (64, 32),
        attention_activation: str = "dice",
        mlp_dims: Sequence[int] = (128, 64, 64),
        activation: str = "dice",
        dropout_rate: float = 0.5,
    ) -> None:
        super().__init__(num_items, embedding_dim, num_categories, text_embeddings, num_users)
        item_dim = self.fields.num_fields * embedding_dim
        self.item_dim = item_dim
        self.attention = mlp_to_logit(4 * item_dim, attention_mlp_dims, attention_activation, 0.0)
        self.interest_norm = torch.nn.Sequential(torch.nn.BatchNorm1d(item_dim), torch.nn.Linear(item_dim, item_dim))
        self.output = mlp_to_logit(3 * item_dim + embedding_dim, mlp_dims, activation, dropout_rate, batch_norm=True)
        self.apply(xavier_initialization)

    def attention_weights(self, query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Softmax weights ``[B, L]`` of ``keys [B, L, d]`` for ``query [B, d]``; 0 where not ``valid``.

        The attention MLP runs on the valid positions only, so padding never
        enters its Dice batch statistics.
        """
        q = query.unsqueeze(1).expand_as(keys)
        unit_inputs = torch.cat([q, q, q * keys, q - keys], dim=-1)[valid]
        scores = torch.full(valid.shape, float("-inf"), dtype=keys.dtype, device=keys.device)
        scores = scores.masked_scatter(valid, self.attention(unit_inputs).squeeze(-1) / math.sqrt(self.item_dim))
        return torch.softmax(scores, dim=-1)

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Click logits ``[B]`` of a CTR batch (keys as ``collate_ctr``'s, on the model's device)."""
        target, history, valid = self.fields.target_and_history(batch)
        query, keys = target.flatten(-2), history.flatten(-2)
        weights = self.attention_weights(query, keys, valid)
        interest = self.interest_norm((weights.unsqueeze(-1) * keys).sum(1))
        features = torch.cat([interest, query, query * interest, self.user_field(batch)], dim=-1)
        return self.output(features).squeeze(-1)


@register_model("DIN", task="ctr")
def build_din(inputs: ModelInputs) -> DIN:
    """DIN (naive) or TE_ID_DIN (with ``inputs.text_embeddings [num_items + 1, T]``); ``din.*`` from gin."""
    return DIN(inputs.num_items, inputs.embedding_dim, inputs.num_categories, inputs.text_embeddings, inputs.num_users)
