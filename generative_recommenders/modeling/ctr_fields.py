"""Building blocks of the CTR models (DIN, DeepFM): item fields, MLPs, Dice, the BCE step.

An item is described by fields of one width ``D``: its id, its category when the
data has categories, and with text its frozen text embedding as one more field
(``LayerNorm(Dropout(Linear(text)))``, GRE-B's text field). CTR batches are those
of ``data/ctr.py``'s ``collate_ctr``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F


class Dice(torch.nn.Module):
    """DIN's data-adaptive activation: ``p(x) x + (1 - p(x)) alpha x``, ``p = sigmoid(BN(x))``.

    Takes ``[N, C]``; batch statistics (training) or running ones (evaluation)
    per channel, as in the DIN paper.
    """

    def __init__(self, num_channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm1d(num_channels, eps=eps, affine=False)
        self.alpha = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(x))
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
    """``Linear -> [BatchNorm] -> activation -> Dropout`` per width in ``dims`` (inputs ``[N, C]``)."""
    layers = []
    for width in dims:
        layers.append(torch.nn.Linear(input_dim, width))
        if batch_norm:
            layers.append(torch.nn.BatchNorm1d(width))
        layers += [_activation(activation, width), torch.nn.Dropout(dropout_rate)]
        input_dim = width
    return torch.nn.Sequential(*layers)


def mlp_to_logit(
    input_dim: int,
    dims: Sequence[int],
    activation: str,
    dropout_rate: float,
    batch_norm: bool = False,
) -> torch.nn.Sequential:
    """:func:`mlp`, then a linear layer to one output."""
    return torch.nn.Sequential(
        mlp(input_dim, dims, activation, dropout_rate, batch_norm),
        torch.nn.Linear(dims[-1] if dims else input_dim, 1),
    )


class ItemFields(torch.nn.Module):
    """Item ids (and categories) -> field embeddings ``[..., num_fields, D]``.

    Fields in order: id; category when ``num_categories > 0``; text when a text
    table ``[num_items + 1, T]`` is given (frozen, not in the state dict). Padding
    (id 0, category 0) has zero id/category embeddings; its text row is zeros too,
    but the text field's bias and LayerNorm make it non-zero, so callers mask
    padded positions.
    """

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        num_categories: int = 0,
        text_embeddings: Optional[torch.Tensor] = None,
        text_dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.num_items = num_items
        self.embedding_dim = embedding_dim
        self.id_embedding = torch.nn.Embedding(num_items + 1, embedding_dim, padding_idx=0)
        self.category_embedding = (
            torch.nn.Embedding(num_categories + 1, embedding_dim, padding_idx=0) if num_categories > 0 else None
        )
        for table in (self.id_embedding, self.category_embedding):
            if table is not None:
                torch.nn.init.trunc_normal_(table.weight, std=0.02, a=-0.04, b=0.04)
                with torch.no_grad():
                    table.weight[0].zero_()
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
                torch.nn.Dropout(text_dropout_rate),
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
            fields.append(self.category_embedding(categories))
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
    """A CTR model over :class:`ItemFields`: ``forward(batch) -> logits [B]``."""

    def __init__(
        self,
        num_items: int,
        embedding_dim: int,
        num_categories: int,
        text_embeddings: Optional[torch.Tensor],
        text_dropout_rate: float,
    ) -> None:
        super().__init__()
        self.fields = ItemFields(num_items, embedding_dim, num_categories, text_embeddings, text_dropout_rate)

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
