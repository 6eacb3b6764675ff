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
import torch.nn.functional as F

from generative_recommenders.modeling.item_embeddings import item_embedding_module
from generative_recommenders.modeling.registry import ModelInputs, register_model
from generative_recommenders.modeling.sequential import SequentialRecommender
from generative_recommenders.ops.dropout import dropout


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
        x, positions = self.embedded_inputs(item_ids, input_embeddings)
        allowed = self.attended_keys(positions.unsqueeze(0), positions, lengths)
        for layer in self.encoder.layers:
            x = post_ln_block(layer, x, allowed)
        return x

    def query_embeddings(
        self, item_ids: torch.Tensor, lengths: torch.Tensor, timestamps: torch.Tensor
    ) -> torch.Tensor:
        """The output at the last history position ``[B, D]``, as ``encode`` gives it; the last block
        computes that position's query alone (its other outputs are never read)."""
        del timestamps  # positions only
        x, positions = self.embedded_inputs(item_ids, None)
        last = (lengths - 1).clamp(min=0)
        layers = list(self.encoder.layers)
        allowed = self.attended_keys(positions.unsqueeze(0), positions, lengths)
        for layer in layers[:-1]:
            x = post_ln_block(layer, x, allowed)
        last_allowed = self.attended_keys(last.view(-1, 1), positions, lengths)
        return post_ln_block(layers[-1], x, last_allowed, query_positions=last).squeeze(1)

    def embedded_inputs(
        self, item_ids: torch.Tensor, input_embeddings: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Dropout(items + positions) [B, L, D], positions [L])``."""
        input_embeddings, positions = self.inputs_and_positions(item_ids, input_embeddings)
        return self.input_dropout(input_embeddings + self.position_embedding(positions)), positions

    @staticmethod
    def attended_keys(query_positions: torch.Tensor, positions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``[B, Q, L]``: may the query at ``query_positions [B or 1, Q]`` attend to the key at each of
        ``positions [L]``: causal and not padding (key 0 always, so that an empty history is no NaN)."""
        keys = positions.view(1, 1, -1)
        real = (keys < lengths.view(-1, 1, 1)) | (keys == 0)
        return (keys <= query_positions.unsqueeze(-1)) & real

    def description(self) -> str:
        return f"{self.encoder_description}-{self.item_embedding.description}"


def post_ln_block(
    layer: torch.nn.TransformerEncoderLayer,
    x: torch.Tensor,
    allowed: torch.Tensor,
    query_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """``layer``'s post-LN block (what its ``forward`` computes, with its weights and dropouts) on
    ``x [B, L, D]``: ``h = LN1(x + Dropout(MHA(x)))``, ``LN2(h + Dropout(W2 Dropout(act(W1 h))))``.
    ``allowed [B, Q, L]`` says which keys each query attends to. The queries are every position
    (``Q = L``) or, with ``query_positions [B]``, that one position per row (``Q = 1``): the same
    output rows for a fraction of the work. Written out rather than calling the layer because
    ``MultiheadAttention``'s packed projection spends more on its backward (zero-filled
    ``[3, L, B, D]`` gradients) than on the attention itself."""
    attention = layer.self_attn
    dim = x.size(-1)
    queries = x if query_positions is None else x.gather(1, query_positions.view(-1, 1, 1).expand(-1, 1, dim))
    query_weight, key_value_weight = attention.in_proj_weight.split([dim, 2 * dim])
    query_bias, key_value_bias = attention.in_proj_bias.split([dim, 2 * dim])
    keys, values = F.linear(x, key_value_weight, key_value_bias).chunk(2, dim=-1)

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (attention.num_heads, dim // attention.num_heads)).transpose(1, 2)

    attended = F.scaled_dot_product_attention(
        heads(F.linear(queries, query_weight, query_bias)), heads(keys), heads(values),
        attn_mask=allowed.unsqueeze(1), dropout_p=attention.dropout if layer.training else 0.0,
    )
    attended = attention.out_proj(attended.transpose(1, 2).flatten(2))
    h = layer.norm1(queries + dropout(attended, layer.dropout1.p, layer.training))
    feed_forward = layer.linear2(dropout(layer.activation(layer.linear1(h)), layer.dropout.p, layer.training))
    return layer.norm2(h + dropout(feed_forward, layer.dropout2.p, layer.training))


@register_model("GREBSASRec", title="SASRec")  # GRE-B's tables call it SASRec
def build_greb_sasrec(inputs: ModelInputs) -> GREBSASRec:
    """GRE-B's SASRec (or TE_ID_SASRec with ``inputs.text_embeddings``); ``greb_sasrec.*`` from gin."""
    item_embedding = item_embedding_module(inputs.num_items, inputs.embedding_dim, inputs.text_embeddings)
    return GREBSASRec(item_embedding, inputs.num_positions, dropout_rate=inputs.dropout_rate)
