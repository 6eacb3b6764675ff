"""DIN (Deep Interest Network): target-aware attention over the behaviour sequence.

Each behaviour ``k_j`` gets the weight ``w_j = a([q, k_j, q - k_j, q * k_j])`` with
respect to the target ``q`` (``a``: the attention MLP then a linear output, no
softmax, as in the DIN paper); the interest ``sum_j w_j k_j`` over the real
behaviours and the target go through an MLP to a click logit. Items are the
concatenation of their fields (``ctr_fields.ItemFields``): id, category when the
data has one, text for ``TE_ID_DIN``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import gin
import torch

from generative_recommenders.modeling.ctr_fields import CTRModel, mlp_to_logit
from generative_recommenders.modeling.registry import ModelInputs, register_model


@gin.configurable("din")
class DIN(CTRModel):
    """GRE-B's DIN: attention MLP 64-32, MLP 128-64-64 with Dice, batch norm and dropout 0.5."""

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 32,
        num_categories: int = 0,
        text_embeddings: Optional[torch.Tensor] = None,
        attention_mlp_dims: Sequence[int] = (64, 32),
        attention_activation: str = "dice",
        mlp_dims: Sequence[int] = (128, 64, 64),
        activation: str = "dice",
        dropout_rate: float = 0.5,
        text_dropout_rate: float = 0.1,
    ) -> None:
        super().__init__(num_items, embedding_dim, num_categories, text_embeddings, text_dropout_rate)
        item_dim = self.fields.num_fields * embedding_dim
        self.attention = mlp_to_logit(4 * item_dim, attention_mlp_dims, attention_activation, 0.0)
        self.output = mlp_to_logit(2 * item_dim, mlp_dims, activation, dropout_rate, batch_norm=True)

    def attention_weights(self, query: torch.Tensor, keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Weights ``[B, L]`` of ``keys [B, L, E]`` for ``query [B, E]``; 0 where not ``valid``.

        The attention MLP runs on the valid positions only, so padding never
        enters its (batch-normalized) activations.
        """
        q = query.unsqueeze(1).expand_as(keys)
        unit_inputs = torch.cat([q, keys, q - keys, q * keys], dim=-1)[valid]
        weights = torch.zeros(valid.shape, dtype=keys.dtype, device=keys.device)
        return weights.masked_scatter(valid, self.attention(unit_inputs).squeeze(-1))

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Click logits ``[B]`` of a CTR batch (keys as ``collate_ctr``'s, on the model's device)."""
        target, history, valid = self.fields.target_and_history(batch)
        query, keys = target.flatten(-2), history.flatten(-2)
        weights = self.attention_weights(query, keys, valid)
        interest = (weights.unsqueeze(-1) * keys).sum(1)
        return self.output(torch.cat([interest, query], dim=-1)).squeeze(-1)


@register_model("DIN", task="ctr")
def build_din(inputs: ModelInputs) -> DIN:
    """DIN (naive) or TE_ID_DIN (with ``inputs.text_embeddings [num_items + 1, T]``); ``din.*`` from gin."""
    return DIN(inputs.num_items, inputs.embedding_dim, inputs.num_categories, inputs.text_embeddings)
