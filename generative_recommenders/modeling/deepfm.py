"""DeepFM as GRE-B's ``models/deepfm.py``: a linear part, a factorization machine over the fields
and an MLP, summed.

Fields (width ``D``): the user's id, the target's fields (``ctr_fields.ItemFields``: id,
categories when the data has them, text for ``TE_ID_DeepFM``) and the same fields
averaged over the behaviour sequence. The linear part (RecStudio's ``LinearLayer``
over GRE-B's CTR fields) has first-order weights for the user and the target's id and
categories (mean over its categories), none for the behaviours or the text. The MLP is
``Dropout -> Linear -> BatchNorm -> ReLU`` per width (128-64-64), then
``Dropout -> Linear`` to the logit.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import gin
import torch

from generative_recommenders.modeling.ctr_fields import (
    CTRModel,
    mlp,
    pooled_categories,
    user_ids,
    xavier_initialization,
)
from generative_recommenders.modeling.registry import ModelInputs, register_model
from generative_recommenders.ops.dropout import Dropout


def fm_interaction(fields: torch.Tensor) -> torch.Tensor:
    """``sum_{i < j} <v_i, v_j>`` over the fields ``[B, F, D]``, as ``((sum v)^2 - sum v^2) / 2``."""
    return 0.5 * (fields.sum(1).pow(2) - fields.pow(2).sum(1)).sum(-1)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of ``values [B, L, ...]`` (already zero where not ``valid [B, L]``)."""
    counts = valid.sum(1).clamp(min=1).to(values.dtype)
    return values.sum(1) / counts.view(-1, *([1] * (values.dim() - 2)))


@gin.configurable("deepfm")
class DeepFM(CTRModel):
    """GRE-B's DeepFM: linear part, FM over the fields and an MLP 128-64-64 (ReLU, batch norm, dropout 0.5)."""

    def __init__(
        self,
        num_items: int,
        embedding_dim: int = 32,
        num_categories: int = 0,
        text_embeddings: Optional[torch.Tensor] = None,
        num_users: int = 0,
        mlp_dims: Sequence[int] = (128, 64, 64),
        activation: str = "relu",
        dropout_rate: float = 0.5,
    ) -> None:
        super().__init__(num_items, embedding_dim, num_categories, text_embeddings, num_users)
        self.user_weight = torch.nn.Embedding(num_users + 1, 1, padding_idx=0)
        self.item_weight = torch.nn.Embedding(num_items + 1, 1, padding_idx=0)
        self.category_weight = (
            torch.nn.Embedding(num_categories + 1, 1, padding_idx=0) if num_categories > 0 else None
        )
        self.bias = torch.nn.Parameter(torch.zeros(()))
        dnn_input = (1 + 2 * self.fields.num_fields) * embedding_dim
        self.dnn = torch.nn.Sequential(
            mlp(dnn_input, mlp_dims, activation, dropout_rate, batch_norm=True),
            Dropout(dropout_rate),
            torch.nn.Linear(mlp_dims[-1] if mlp_dims else dnn_input, 1),
        )
        self.apply(xavier_initialization)

    def first_order(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The linear part ``[B]``: bias + user's, target id's and target categories' (mean) weights."""
        targets = batch["target_ids"]
        linear = self.bias + self.user_weight(user_ids(batch, targets)).squeeze(-1) + self.item_weight(targets).squeeze(-1)
        if self.category_weight is not None:
            linear = linear + pooled_categories(self.category_weight, batch["target_categories"]).squeeze(-1)
        return linear

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Click logits ``[B]`` of a CTR batch (keys as ``collate_ctr``'s, on the model's device)."""
        target, history, valid = self.fields.target_and_history(batch)
        user = self.user_field(batch).unsqueeze(1)
        fields = torch.cat([user, target, _masked_mean(history, valid)], dim=1)  # [B, 1 + 2F, D]
        return self.first_order(batch) + fm_interaction(fields) + self.dnn(fields.flatten(1)).squeeze(-1)


@register_model("DeepFM", task="ctr")
def build_deepfm(inputs: ModelInputs) -> DeepFM:
    """DeepFM (naive) or TE_ID_DeepFM (with ``inputs.text_embeddings [num_items + 1, T]``); ``deepfm.*`` from gin."""
    return DeepFM(inputs.num_items, inputs.embedding_dim, inputs.num_categories, inputs.text_embeddings, inputs.num_users)
