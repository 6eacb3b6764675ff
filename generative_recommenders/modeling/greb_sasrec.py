"""GRE-B's SASRec: RecStudio's ``model/seq/sasrec.py``, registered as ``GREBSASRec``.

Not the HSTU paper's SASRec (``sasrec.py``, pre-LN blocks on jagged tensors, inputs
scaled by ``sqrt(D)``, a final norm): RecStudio runs ``torch.nn.TransformerEncoder``
over post-LN ``TransformerEncoderLayer`` blocks (LayerNorm eps 1e-12, GELU, its
dropout on attention weights, residuals and FFN), causal, with the padded keys
masked, on ``Dropout(item embedding + position embedding)``; the user embedding is
the output at the last history position, unnormalized, scored against the item
embeddings by inner product (``SequentialRecommender``'s interface with RecStudio's ``encode``). Every embedding and linear weight starts as
``normal(0, 0.02)`` with zero biases (RecStudio's ``init_method: normal``; the
attention's input projection, a bare parameter, keeps torch's Xavier-uniform).
The item embedding is the id (``SASRec``) or id + ``ReLU(Linear(Dropout(text)))``
(``TE_ID_SASRec``, ``text_fusion.*``), the same vector for inputs and scoring.
"""

from __future__ import annotations

import gin
import torch

from generative_recommenders.modeling.item_embeddings import item_embedding_module
from generative_recommenders.modeling.registry import ModelInputs, register_model
from generative_recommenders.modeling.sequential import SequentialRecommender


def normal_initialization(module: torch.nn.Module, std: float = 0.02) -> None:
    """RecStudio's ``normal_initialization`` for one module (``module.apply`` it)."""
    if isinstance(module, torch.nn.Embedding):
        torch.nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, torch.nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, torch.nn.LayerNorm):
        torch.nn.init.ones_(module.weight)
        torch.nn.init.zeros_(module.bias)


@gin.configurable("greb_sasrec")
class GREBSASRec(SequentialRecommender):
    """RecStudio's SASRec query encoder with its item embedding (see the module docstring); the
    retrieval interface (``query_embeddings``, item embeddings, unnormalized scoring) is
    :class:`SequentialRecommender`'s, ``encode`` RecStudio's."""

    def __init__(
        self,
        item_embedding: torch.nn.Module,
        num_positions: int,
        num_blocks: int = 2,
        num_heads: int = 2,
        ffn_hidden_dim: int = 128,
        dropout_rate: float = 0.5,
        activation: str = "gelu",
        layer_norm_eps: float = 1e-12,
    ) -> None:
        layer = torch.nn.TransformerEncoderLayer(
            d_model=item_embedding.embedding_dim,
            nhead=num_heads,
            dim_feedforward=ffn_hidden_dim,
            dropout=dropout_rate,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            batch_first=True,
            norm_first=False,
        )
        encoder = torch.nn.TransformerEncoder(layer, num_layers=num_blocks, enable_nested_tensor=False)
        super().__init__(item_embedding, encoder, num_positions, dropout_rate, item_l2_norm=False)
        self.apply(normal_initialization)
        self.encoder_description = (
            f"GREBSASRec-b{num_blocks}-h{num_heads}-ffn{ffn_hidden_dim}-{activation}-d{dropout_rate}"
        )

    def encode(
        self,
        item_ids: torch.Tensor,
        lengths: torch.Tensor,
        timestamps: torch.Tensor,
        input_embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-position outputs ``[B, L, D]`` of right-padded ``item_ids [B, L]`` (``lengths`` real items):
        ``TransformerEncoder(Dropout(items + positions))``, causal, padded keys masked, no norm after."""
        del timestamps  # positions only
        input_embeddings, positions = self.inputs_and_positions(item_ids, input_embeddings)
        causal = torch.triu(torch.ones(len(positions), len(positions), dtype=torch.bool, device=item_ids.device), 1)
        padding = positions.unsqueeze(0) >= lengths.unsqueeze(1)
        x = self.input_dropout(input_embeddings + self.position_embedding(positions))
        return self.encoder(x, mask=causal, src_key_padding_mask=padding)

    def description(self) -> str:
        return f"{self.encoder_description}-{self.item_embedding.description}"


@register_model("GREBSASRec")
def build_greb_sasrec(inputs: ModelInputs) -> GREBSASRec:
    """GRE-B's SASRec (or TE_ID_SASRec with ``inputs.text_embeddings``); ``greb_sasrec.*`` from gin."""
    item_embedding = item_embedding_module(inputs.num_items, inputs.embedding_dim, inputs.text_embeddings)
    return GREBSASRec(item_embedding, inputs.num_positions, dropout_rate=inputs.dropout_rate)
