"""DeepFM: a linear part, a factorization machine over the fields and an MLP, summed.

Fields (``ctr_fields.ItemFields``, width ``D``): the target's id, category (when the
data has one) and text (``TE_ID_DeepFM``), then the same fields averaged over the
behaviour sequence. The linear part has first-order weights for the ids and
categories (target, and the mean over behaviours), not for the text.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import gin
import torch

from generative_recommenders.modeling.ctr_fields import CTRModel, mlp_to_logit
from generative_recommenders.modeling.registry import ModelInputs, register_model


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """``sum_{i < j} <v_i, v_j>`` over the fields ``[B, F, D]``, as ``((sum v)^2 - sum v^2) / 2``."""
    return 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(-1)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``values [B, L, ...]`` (already zero where not ``valid [B, L]``)."""
    counts = valid.sum(1).clamp(min=1).to(values.dtype)
    return values.sum(1) / counts.view(-1, *([1] * (values.dim() - 2)))


@gin.configurable("deepfm")
class DeepFM(CTRModel):
    """GRE-B's DeepFM: FM over the fields plus an MLP 128-64-64 (ReLU, batch norm, dropout 0.5)."""

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 32,
        num_categories: int = 0,
        text_embeddings: Optional[torch.Tensor] = None,
        mlp_dims: Sequence[int] = (128, 64, 64),
        activation: str = "relu",
        dropout_rate: float = 0.5,
        text_dropout_rate: float = 0.1,
    ) -> None:
        super().__init__(num_items, embedding_dim, num_categories, text_embeddings, text_dropout_rate)
        self.item_weight = torch.nn.Embedding(num_items + 1, 1, padding_idx=0)
        self.category_weight = (
            torch.nn.Embedding(num_categories + 1, 1, padding_idx=0) if num_categories > 0 else None
        )
        for table in (self.item_weight, self.category_weight):
            if table is not None:
                torch.nn.init.zeros_(table.weight)
        self.bias = torch.nn.Parameter(torch.zeros(()))
        dnn_input = 2 * self.fields.num_fields * embedding_dim
        self.dnn = mlp_to_logit(dnn_input, mlp_dims, activation, dropout_rate, batch_norm=True)

    def _first_order(
        self, table: torch.nn.Embedding, target: torch.Tensor, history: torch.Tensor, valid: torch.Tensor
    ) -> torch.Tensor:
        behaviours = table(history).squeeze(-1) * valid.to(torch.float32)
        return table(target).squeeze(-1) + _masked_mean(behaviours, valid)

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Click logits ``[B]`` of a CTR batch (keys as ``collate_ctr``'s, on the model's device)."""
        target, history, valid = self.fields.target_and_history(batch)
        fields = torch.cat([target, _masked_mean(history, valid)], dim=1)  # [B, 2F, D]
        linear = self.bias + self._first_order(self.item_weight, batch["target_ids"], batch["history_ids"], valid)
        if self.category_weight is not None:
            linear = linear + self._first_order(
                self.category_weight, batch["target_categories"], batch["history_categories"], valid
            )
        return linear + fm_interaction(fields) + self.dnn(fields.flatten(1)).squeeze(-1)


@register_model("DeepFM", task="ctr")
def build_deepfm(inputs: ModelInputs) -> DeepFM:
    """DeepFM (naive) or TE_ID_DeepFM (with ``inputs.text_embeddings [num_items + 1, T]``); ``deepfm.*`` from gin."""
    return DeepFM(inputs.num_items, inputs.embedding_dim, inputs.num_categories, inputs.text_embeddings)
