"""Building blocks of the CTR models (DIN, DeepFM): fields, MLPs, Dice, the BCE step, as GRE-B's.

GRE-B's ranker (``models/baseranker.py`` on RecStudio's feature preparation): an item
is described by fields of one width ``D``: its id, its categories when the data has
them (every category of the item, embeddings mean-pooled), and with text its frozen
text embedding as one more field, ``LayerNorm(ReLU(Linear(text)))`` (GRE-B's
``lm_projection`` with its dropout 0); the user's id is one more field. Weights start
as GRE-B's ``init_parameters``: Xavier-normal embeddings and linear weights, zero
biases, padding rows zero. CTR batches are those of ``data/ctr.py``'s ``collate_ctr``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from generative_recommenders.ops.dropout import Dropout


class Dice(torch.nn.Module):
    """DIN's data-adaptive activation: ``p(x) x + (1 - p(x)) alpha x``, ``p = sigmoid(BN(x))``.

    RecStudio's ``Dice``: a BatchNorm1d (affine, eps 1e-8) per channel of the last
    dimension, over every other dimension flattened; ``alpha`` starts at 0.
    """

    def __init__(self, num_channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(num_channels, eps=eps)
        self.alpha = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(x.reshape(-1, x.size(-1)))).view_as(x)
        return p * x + (1 - p) * self.alpha * x


ACTIVATIONS = ("dice", "relu", "tanh", "sigmoid")


def _activation(name: str, width: int) -> torch.nn.Module:
    if name == "dice":
        return Dice(width)
    if name == "relu":
        return torch.nn.ReLU()
    if name == "tanh":
        return torch.nn.Tanh()
    if name == "sigmoid":
        return torch.nn.Sigmoid()
    raise ValueError(f"unknown activation {name!r}; choose from {ACTIVATIONS}")


def mlp(
    input_dim: int,
    dims: Sequence[int],
    activation: str,
    dropout_rate: float,
    batch_norm: bool = False,
) -> torch.nn.Sequential:
    """RecStudio's ``MLPModule``: ``Dropout -> Linear -> [BatchNorm] -> activation`` per width in ``dims``
    (inputs ``[N, C]``)."""
    layers = []
    for width in dims:
        layers += [Dropout(dropout_rate), torch.nn.Linear(input_dim, width)]
        if batch_norm:
            layers.append(torch.nn.BatchNorm1d(width))
        layers.append(_activation(activation, width))
        input_dim = width
    return torch.nn.Sequential(*layers)


def mlp_to_logit(
    input_dim: int,
    dims: Sequence[int],
    activation: str,
    dropout_rate: float,
    batch_norm: bool = False,
) -> torch.nn.Sequential:
    """:func:`mlp`, then a linear layer to one output (no dropout before it: GRE-B's DIN ``fc``)."""
    return torch.nn.Sequential(
        mlp(input_dim, dims, activation, dropout_rate, batch_norm),
        torch.nn.Linear(dims[-1] if dims else input_dim, 1),
    )


def xavier_initialization(module: torch.nn.Module) -> None:
    """GRE-B's ``init_parameters`` for one module (``module.apply`` it): Xavier-normal embeddings
    (padding row zero) and linear weights, zero biases, LayerNorm 1 and 0."""
    if isinstance(module, torch.nn.Embedding):
        torch.nn.init.xavier_normal_(module.weight)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, torch.nn.Linear):
        torch.nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)


def pooled_categories(table: torch.nn.Embedding, categories: torch.Tensor) -> torch.Tensor:
    """The mean of ``table``'s rows over each item's categories ``[..., C]`` (0: padding) -> ``[..., D]``;
    an item without categories gets zeros (RecStudio's mean ``SeqPoolingLayer``)."""
    counts = (categories > 0).sum(-1, keepdim=True).clamp(min=1)
    return table(categories).sum(-2) / counts.to(table.weight.dtype)


def user_ids(batch: Dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The 1-based user ids of a CTR batch (``user_index + 1``); 0 (the padding user, a zero
    embedding) where the batch names no user, e.g. a history typed in for recommendations."""
    if "user_index" not in batch:
        return torch.zeros_like(like)
    return batch["user_index"].clamp(min=-1) + 1


class ItemFields(torch.nn.Module):
    """Item ids (and categories ``[..., C]``) -> field embeddings ``[..., num_fields, D]``.

    Fields in order: id; categories (mean-pooled) when ``num_categories > 0``; text
    when a text table ``[num_items + 1, T]`` is given (frozen, not in the state dict),
    ``LayerNorm(ReLU(Linear(text)))``. Padding (id 0, categories 0) has zero
    id/category embeddings; its text field is not zero (the LayerNorm), so callers
    mask padded positions.
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        num_categories: int = 0,
        text_embeddings: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.id_embedding = torch.nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        self.category_embedding = (
            torch.nn.Embedding(num_categories + 1, embedding_dim, padding_idx=0) if num_categories > 0 else None
        )
        self.text_field: Optional[torch.nn.Module] = None
        if text_embeddings is not None:
            if text_embeddings.dim() != 2 or text_embeddings.size(0) != num_items + 1:
                raise ValueError(
                    f"text embeddings of shape {tuple(text_embeddings.shape)} do not fit "
                    f"{num_items} items (expected [{num_items + 1}, text_dim])"
                )
            self.register_buffer("text_embeddings", text_embeddings.float(), persistent=False)
            self.text_field = torch.nn.Sequential(
                torch.nn.Linear(text_embeddings.size(1), embedding_dim),
                torch.nn.ReLU(),
                torch.nn.LayerNorm(embedding_dim),
            )
        self.num_fields = 1 + (self.category_embedding is not None) + (self.text_field is not None)

    @property
    def uses_categories(self) -> bool:
        return self.category_embedding is not None

    def forward(self, item_ids: torch.Tensor, categories: Optional[torch.Tensor] = None) -> torch.Tensor:
        fields = [self.id_embedding(item_ids)]
        if self.category_embedding is not None:
            if categories is None:
                raise ValueError(
                    "the model was built with item categories but the batch has none "
                    "(build it with num_categories=0 for data without categories)"
                )
            fields.append(pooled_categories(self.category_embedding, categories))
        if self.text_field is not None:
            fields.append(self.text_field(self.text_embeddings[item_ids]))
        return torch.stack(fields, dim=-2)

    def target_and_history(self, batch: Dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(target fields [B, F, D], history fields [B, L, F, D], valid [B, L])``, padding zeroed."""
        target = self(batch["target_ids"], batch.get("target_categories"))
        history = self(batch["history_ids"], batch.get("history_categories"))
        positions = torch.arange(history.size(1), device=history.device)
        valid = positions.unsqueeze(0) < batch["history_lengths"].unsqueeze(1)
        return target, history * valid[..., None, None].to(history.dtype), valid


class CTRModel(torch.nn.Module):
    """A CTR model over :class:`ItemFields` and a user-id field: ``forward(batch) -> logits [B]``."""

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        num_categories: int,
        text_embeddings: Optional[torch.Tensor],
        num_users: int,
    ) -> None:
        super().__init__()
        self.fields = ItemFields(num_items, embedding_dim, num_categories, text_embeddings)
        self.user_embedding = torch.nn.Embedding(num_users + 1, embedding_dim, padding_idx=0)

    def user_field(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The user-id field ``[B, D]`` (zeros for a batch without users)."""
        return self.user_embedding(user_ids(batch, batch["target_ids"]))

    @property
    def num_items(self) -> int:
        return self.fields.num_items

    def description(self) -> str:
        """E.g. ``DIN-id32-cat-text384``: the model and its item fields."""
        fields = self.fields
        parts = [type(self).__name__, f"id{fields.embedding_dim}"]
        if fields.uses_categories:
            parts.append("cat")
        if fields.text_field is not None:
            parts.append(f"text{fields.text_embeddings.size(1)}")
        return "-".join(parts)


def ctr_training_loss(
    model: torch.nn.Module, batch: Dict[str, torch.Tensor], device: torch.device
) -> torch.Tensor:
    """Mean binary cross-entropy of ``model(batch)`` logits against ``batch["labels"]``."""
    on_device = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
    return F.binary_cross_entropy_with_logits(model(on_device), on_device["labels"])
