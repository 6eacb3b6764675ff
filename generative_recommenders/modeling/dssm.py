"""DSSM, the two-tower retrieval model, and its training loss.

User tower: the mean of the history's item embeddings through an MLP; item tower:
the item embedding through an MLP of the same shape (its own weights); the score
is their inner product. The item embedding is a learned id embedding (DSSM) or
the id embedding plus projected frozen text (``TE_ID_DSSM``, ``ItemEmbeddingWithText``
configured by ``text_fusion.*``), the same in both towers.

The model has the retrieval evaluation's interface (``query_embeddings``,
``all_item_embeddings``, ``normalize_items``, ``num_items``).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import gin
import torch

from generative_recommenders.modeling.ctr_fields import mlp
from generative_recommenders.modeling.item_embeddings import item_embedding_module
from generative_recommenders.modeling.losses import (
    binary_cross_entropy_with_negatives,
    predicting_positions,
    sample_negatives,
)
from generative_recommenders.modeling.registry import ModelInputs, register_model


@gin.configurable("dssm")
class DSSM(torch.nn.Module):
    """GRE-B's DSSM: towers MLP 128-128-128 with tanh and dropout 0.3, inner product."""

    def __init__(
        self,
        item_embedding: torch.nn.Module,
        mlp_dims: Sequence[int] = (128, 128, 128),
        activation: str = "tanh",
        dropout_rate: float = 0.3,
    ) -> None:
        super().__init__()
        if not mlp_dims:
            raise ValueError("dssm.mlp_dims needs at least one layer")
        self.item_embedding = item_embedding
        dim = item_embedding.embedding_dim
        self.user_tower = mlp(dim, mlp_dims, activation, dropout_rate)
        self.item_tower = mlp(dim, mlp_dims, activation, dropout_rate)
        self.embedding_dim = mlp_dims[-1]

    @property
    def num_items(self) -> int:
        return self.item_embedding.num_items

    def description(self) -> str:
        return f"DSSM-{self.item_embedding.description}"

    def item_vectors(self, item_ids: torch.Tensor) -> torch.Tensor:
        """Item tower outputs ``[..., D]`` for ids of any shape."""
        embedded = self.item_embedding(item_ids)
        return self.item_tower(embedded.reshape(-1, embedded.size(-1))).view(*item_ids.shape, -1)

    def all_item_embeddings(self) -> torch.Tensor:
        """Item tower outputs of ids ``0..num_items`` ``[I + 1, D]`` (row 0, padding, is never ranked)."""
        device = next(self.item_tower.parameters()).device
        return self.item_vectors(torch.arange(self.num_items + 1, device=device))

    def normalize_items(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings  # inner-product scores, no normalization

    def user_vectors(self, history_means: torch.Tensor) -> torch.Tensor:
        return self.user_tower(history_means)

    def query_embeddings(
        self, item_ids: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        """User tower on the mean of the first ``lengths[b]`` items of ``item_ids [B, L]``: ``[B, D]``."""
        del timestamps  # DSSM ignores time and order
        valid = torch.arange(item_ids.size(1), device=item_ids.device).unsqueeze(0) < lengths.unsqueeze(1)
        embedded = self.item_embedding(item_ids) * valid.unsqueeze(-1)
        means = embedded.sum(1) / lengths.clamp(min=1).unsqueeze(-1).to(embedded.dtype)
        return self.user_vectors(means)


def dssm_training_loss(
    model: DSSM,
    batch: Dict[str, torch.Tensor],
    device: torch.device,
    num_negatives: int = 1,
    negative_item_ids: Optional[torch.Tensor] = None,
    last_position_only: bool = False,
) -> torch.Tensor:
    """Binary cross-entropy with uniform negatives (from ``negative_item_ids`` when given) at
    every position of the sequence (``last_position_only``: at the target only).

    Over a batch of ``collate_sequences`` (history with the target appended), position
    ``p >= 1`` is a sample: its query is the user tower on the mean of the items before
    it, its positive the item at ``p``, and ``num_negatives`` items drawn uniformly from
    the catalogue are its negatives (see ``binary_cross_entropy_with_negatives``).
    """
    lengths = batch["history_lengths"].to(device, non_blocking=True)
    ids = batch["history_ids"].to(device, non_blocking=True).scatter(
        1, lengths.view(-1, 1), batch["target_ids"].to(device).view(-1, 1)
    )
    embedded = model.item_embedding(ids)  # padding rows are masked below
    positions = torch.arange(ids.size(1), device=device)
    valid = (positions.unsqueeze(0) <= lengths.unsqueeze(1)).unsqueeze(-1)
    prefix_sums = torch.cumsum(embedded * valid, dim=1)[:, :-1]
    prefix_means = prefix_sums / positions[1:].view(1, -1, 1).to(embedded.dtype)
    predicts_next = predicting_positions(lengths, ids.size(1) - 1, last_position_only)
    queries = model.user_vectors(prefix_means[predicts_next])
    positive_ids = ids[:, 1:][predicts_next]
    negative_ids = sample_negatives("local", positive_ids, num_negatives, model.num_items, candidate_ids=negative_item_ids)
    positive_logits = (queries * model.item_vectors(positive_ids)).sum(-1)
    negative_logits = torch.einsum("pd,prd->pr", queries, model.item_vectors(negative_ids))
    return binary_cross_entropy_with_negatives(positive_logits, negative_logits, positive_ids, negative_ids)


@register_model("DSSM", task="retrieval", losses={"BinaryCrossEntropyLoss": dssm_training_loss})
def build_dssm(inputs: ModelInputs) -> DSSM:
    """DSSM (naive) or TE_ID_DSSM (id + projected ``text_embeddings [num_items + 1, T]``); ids only,
    no categories."""
    return DSSM(item_embedding_module(inputs.num_items, inputs.embedding_dim, inputs.text_embeddings))
