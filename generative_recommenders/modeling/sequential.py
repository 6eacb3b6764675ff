"""The sequential recommender: item embeddings -> positional input -> encoder -> norm.

Item ids are shifted by +1 (0 is padding). ``item_embeddings`` is the one
embedding of an item used everywhere: encoder inputs, positive targets,
sampled negatives and evaluation candidates (see ``item_embeddings.py``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Protocol, runtime_checkable

import torch
import torch.nn.functional as F

from generative_recommenders.modeling.item_embeddings import ItemEmbedding, item_embedding_module
from generative_recommenders.modeling.registry import ModelInputs
from generative_recommenders.ops.dropout import Dropout


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


@runtime_checkable
class AttentionEncoder(Protocol):
    """An encoder whose attention has backends: which one runs on ``device`` (after any start-up probe)."""

    def attention_backend_in_use(self, device: torch.device, training: bool) -> str: ...


class SequentialRecommender(torch.nn.Module):
    """Wraps an item embedding module and a sequence encoder (HSTU or SASRec).

    ``item_embedding`` maps ids to ``[..., D]`` and has ``num_items``,
    ``embedding_dim`` and ``description``.

    ``num_positions`` is the number of learned positions; the encoder's own
    ``num_positions`` must be the same.

    ``position_init`` initializes the position embeddings as the reference's
    models do: ``"truncated_normal"`` (std ``sqrt(1 / D)`` truncated at two
    std, as its SASRec keeps them) or ``"xavier_normal"`` (untruncated, std
    ``sqrt(2 / (N + D))`` for ``N`` positions: its HSTU re-initializes them so
    after construction).
    """

    def __init__(
        self,
        item_embedding: torch.nn.Module,
        encoder: torch.nn.Module,
        num_positions: int,
        dropout_rate: float,
        user_embedding_norm: str = "l2_norm",
        l2_norm_eps: float = 1e-6,
        item_l2_norm: bool = True,
        position_init: str = "truncated_normal",
    ) -> None:
        super().__init__()
        if user_embedding_norm not in ("l2_norm", "layer_norm"):
            raise ValueError(
                f"user_embedding_norm must be 'l2_norm' or 'layer_norm', got {user_embedding_norm!r}"
            )
        if position_init not in ("truncated_normal", "xavier_normal"):
            raise ValueError(
                f"position_init must be 'truncated_normal' or 'xavier_normal', got {position_init!r}"
            )
        self.item_embedding = item_embedding
        self.encoder = encoder
        self.embedding_dim = item_embedding.embedding_dim
        self.num_positions = num_positions
        self.position_embedding = torch.nn.Embedding(num_positions, self.embedding_dim)
        if position_init == "xavier_normal":
            torch.nn.init.xavier_normal_(self.position_embedding.weight)
        else:
            std = math.sqrt(1.0 / self.embedding_dim)
            torch.nn.init.trunc_normal_(self.position_embedding.weight, std=std, a=-2 * std, b=2 * std)
        self.input_dropout = Dropout(dropout_rate)
        self.user_embedding_norm = user_embedding_norm
        self.l2_norm_eps = l2_norm_eps
        self.item_l2_norm = item_l2_norm

    @property
    def num_items(self) -> int:
        return self.item_embedding.num_items

    def item_embeddings(self, item_ids: torch.Tensor) -> torch.Tensor:
        return self.item_embedding(item_ids)

    def all_item_embeddings(self) -> torch.Tensor:
        """Embeddings of ids ``0..num_items`` (row 0 is padding)."""
        if isinstance(self.item_embedding, ItemEmbedding):
            return self.item_embedding.all_embeddings()
        ids = torch.arange(self.num_items + 1, device=self.position_embedding.weight.device)
        return self.item_embeddings(ids)

    def normalize_items(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Item embeddings as they are scored, in training and evaluation alike (``item_l2_norm``)."""
        return l2_normalize(embeddings, self.l2_norm_eps) if self.item_l2_norm else embeddings

    def inputs_and_positions(
        self, item_ids: torch.Tensor, input_embeddings: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_embeddings`` (the items' when None), ``positions [L])`` of padded ``item_ids [B, L]``."""
        length = item_ids.size(1)
        if length > self.num_positions:
            raise ValueError(
                f"batch padded to {length} exceeds num_positions {self.num_positions}"
            )
        if input_embeddings is None:
            input_embeddings = self.item_embeddings(item_ids)
        return input_embeddings, torch.arange(length, device=item_ids.device)

    def encode(
        self,
        item_ids: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: torch.Tensor,
        input_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-position user embeddings ``[B, L, D]`` for padded ``item_ids [B, L]``.

        ``timestamps [B, L]`` holds, at position ``lengths[b]`` when it exists,
        the time of the request (the target's time).
        """
        input_embeddings, positions = self.inputs_and_positions(item_ids, input_embeddings)
        x = input_embeddings * math.sqrt(self.embedding_dim) + self.position_embedding(positions)
        x = self.input_dropout(x)
        valid = (positions.unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
        x = x * valid.to(x.dtype)
        out = self.encoder(x, lengths, timestamps)
        if self.user_embedding_norm == "l2_norm":
            return l2_normalize(out, self.l2_norm_eps)
        return F.layer_norm(out, [self.embedding_dim], eps=1e-6)

    def query_embeddings(
        self, item_ids: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        """The user embedding at the last history position: ``[B, D]``."""
        encoded = self.encode(item_ids, lengths, timestamps)
        index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, encoded.size(-1))
        return encoded.gather(1, index).squeeze(1)

    def description(self) -> str:
        return f"{self.encoder.description}-{self.item_embedding.description}"

    def backends_in_use(self, device: torch.device) -> Dict[str, str]:
        """The attention backend run in training and in evaluation on ``device``; {} for an encoder without."""
        if not isinstance(self.encoder, AttentionEncoder):
            return {}
        return {mode: self.encoder.attention_backend_in_use(device, training=mode == "training")
                for mode in ("training", "evaluation")}


def encoder_arguments(inputs: ModelInputs) -> Dict[str, Any]:
    """What every sequence encoder takes from the inputs: width, positions and ops backends."""
    return dict(
        embedding_dim=inputs.embedding_dim,
        num_positions=inputs.num_positions,
        attention_backend=inputs.attention_backend,
        jagged_backend=inputs.jagged_backend,
    )


def sequential_recommender(
    encoder: torch.nn.Module, inputs: ModelInputs, position_init: str = "truncated_normal"
) -> SequentialRecommender:
    """``encoder`` with the item embeddings ``inputs`` ask for (fused with text when there is a table)
    and learned positions initialized by ``position_init`` (see :class:`SequentialRecommender`)."""
    return SequentialRecommender(
        item_embedding=item_embedding_module(inputs.num_items, inputs.embedding_dim, inputs.text_embeddings),
        encoder=encoder,
        num_positions=inputs.num_positions,
        dropout_rate=inputs.dropout_rate,
        user_embedding_norm=inputs.user_embedding_norm,
        l2_norm_eps=inputs.l2_norm_eps,
        item_l2_norm=inputs.item_l2_norm,
        position_init=position_init,
    )
