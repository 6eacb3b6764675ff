"""GRE-B's published formulas, written out in plain torch from GREB's code, against this project's modules
with the same weights; GRE-B's per-position samples, evaluation mask and CTR negatives on hand cases."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generative_recommenders.data.dataset import SequenceView, collate_sequences
from generative_recommenders.data.per_position import (
    PerPositionView,
    SeenItemsView,
    collate_with_seen_items,
    seen_item_ids,
)
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.evaluation.ranking import user_target_ranks
from generative_recommenders.modeling.ctr_fields import ItemFields
from generative_recommenders.modeling.deepfm import DeepFM
from generative_recommenders.modeling.din import DIN
from generative_recommenders.modeling.greb_sasrec import GREBSASRec
from generative_recommenders.modeling.item_embeddings import ItemEmbedding
from generative_recommenders.modeling.losses import binary_cross_entropy_loss

CPU = torch.device("cpu")


def randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Every parameter and BatchNorm running statistic random (so no term can hide behind a zero or a one);
    embedding padding rows stay zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            if name.endswith("num_batches_tracked") or "text_embeddings" in name:
                continue
            values = torch.randn(tensor.shape, generator=generator) * 0.5
            if name.endswith("running_var"):
                values = values.abs() + 0.5
            tensor.copy_(values)
        for sub in module.modules():
            if isinstance(sub, torch.nn.Embedding) and sub.padding_idx is not None:
                sub.weight[sub.padding_idx].zero_()


def linear(x, layer):
    return x @ layer.weight.T + layer.bias


def batch_norm(x, norm):  # evaluation: running statistics
    return (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias


def dice(x, unit):  # RecStudio's Dice
    p = torch.sigmoid(batch_norm(x, unit.norm))
    return p * x + (1 - p) * x * unit.alpha


def text_field(text, fields):  # GRE-B's lm_projection, dropout 0: LayerNorm(ReLU(Linear(text)))
    projection, _, norm = fields.text_field
    return F.layer_norm(torch.relu(linear(text, projection)), norm.normalized_shape, norm.weight, norm.bias, norm.eps)


def item_vector(item, categories, fields, text_table):
    """GRE-B's item embedding: [id, mean of its categories' embeddings, text field] concatenated."""
    parts = [fields.id_embedding.weight[item]]
    nonzero = [c for c in categories if c > 0]
    category_rows = fields.category_embedding.weight[nonzero] if nonzero else torch.zeros(1, fields.embedding_dim)
    parts.append(category_rows.sum(0) / max(len(nonzero), 1))
    parts.append(text_field(text_table[item], fields))
    return torch.cat(parts)


# A hand CTR batch: 2 samples, behaviours right-padded, every item with up to 2 categories.
TEXT = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
CATEGORIES = torch.tensor([[0, 0], [1, 2], [3, 0], [0, 0], [2, 0], [1, 3], [2, 3], [1, 0], [3, 2]])
BATCH = {
    "user_index": torch.tensor([2, 0]),
    "history_ids": torch.tensor([[1, 4, 6], [3, 0, 0]]),
    "history_lengths": torch.tensor([3, 1]),
    "target_ids": torch.tensor([5, 8]),
    "labels": torch.tensor([1.0, 0.0]),
}
BATCH["history_categories"] = CATEGORIES[BATCH["history_ids"]]
BATCH["target_categories"] = CATEGORIES[BATCH["target_ids"]]


def hand_items(model):
    fields = model.fields
    target = torch.stack([item_vector(int(t), CATEGORIES[t].tolist(), fields, TEXT) for t in BATCH["target_ids"]])
    histories = [
        torch.stack([item_vector(int(i), CATEGORIES[i].tolist(), fields, TEXT) for i in row[:n]])
        for row, n in zip(BATCH["history_ids"], BATCH["history_lengths"])
    ]
    users = model.user_embedding.weight[BATCH["user_index"] + 1]
    return target, histories, users


def test_text_field_is_layer_norm_of_relu_of_linear():
    fields = ItemFields(num_items=8, embedding_dim=4, text_embeddings=TEXT)
    randomize(fields)
    items = torch.tensor([[5, 2], [0, 8]])
    torch.testing.assert_close(fields(items)[..., -1, :], text_field(TEXT[items], fields))


def test_din_attention_weights_and_logit_follow_grebs_formula():
    model = DIN(num_items=8, embedding_dim=4, num_categories=3, text_embeddings=TEXT, num_users=3,
                attention_mlp_dims=(6, 5), mlp_dims=(7, 6)).eval()
    randomize(model)
    target, histories, users = hand_items(model)
    d = target.size(1)
    hidden1, dice1, hidden2, dice2 = (m for m in model.attention[0] if not isinstance(m, torch.nn.Dropout))
    output_layers = [m for m in model.output[0] if not isinstance(m, torch.nn.Dropout)]
    logits, all_weights = [], []
    for b, s in enumerate(histories):
        t = target[b].expand_as(s)
        # GREB's AttentionLayer: MLP over [query, key] = [t, t, t*s, t-s], / sqrt(d), softmax.
        scores = linear(dice(linear(dice(linear(torch.cat([t, t, t * s, t - s], -1), hidden1), dice1), hidden2), dice2),
                        model.attention[1])
        weights = torch.softmax(scores.squeeze(-1) / math.sqrt(d), dim=0)
        all_weights.append(weights)
        interest = linear(batch_norm(weights @ s, model.interest_norm[0]), model.interest_norm[1])
        x = torch.cat([interest, target[b], target[b] * interest, users[b]])
        for lin, norm, act in zip(output_layers[0::3], output_layers[1::3], output_layers[2::3]):
            x = dice(batch_norm(linear(x, lin), norm), act)
        logits.append(linear(x, model.output[1]))
    torch.testing.assert_close(model(BATCH), torch.cat(logits))
    on_device = model.fields.target_and_history(BATCH)
    got = model.attention_weights(on_device[0].flatten(-2), on_device[1].flatten(-2), on_device[2])
    torch.testing.assert_close(got[0], all_weights[0])
    torch.testing.assert_close(got[1], torch.cat([all_weights[1], torch.zeros(2)]))


def test_deepfm_logit_follows_grebs_formula():
    model = DeepFM(num_items=8, embedding_dim=4, num_categories=3, text_embeddings=TEXT, num_users=3,
                   mlp_dims=(7, 6)).eval()
    randomize(model)
    target, histories, users = hand_items(model)
    layers = [m for m in model.dnn[0] if not isinstance(m, torch.nn.Dropout)]
    logits = []
    for b, s in enumerate(histories):
        # Fields: the user, the target's id, categories and text, the behaviours' mean of each.
        fields = torch.cat([users[b], target[b], s.mean(0)]).view(-1, 4)
        fm = sum((fields[i] * fields[j]).sum() for i in range(len(fields)) for j in range(i + 1, len(fields)))
        target_id, categories = int(BATCH["target_ids"][b]), [c for c in BATCH["target_categories"][b].tolist() if c]
        # RecStudio's LinearLayer over the CTR fields: user, target id, target categories (mean).
        first_order = (model.bias + model.user_weight.weight[BATCH["user_index"][b] + 1, 0]
                       + model.item_weight.weight[target_id, 0]
                       + model.category_weight.weight[categories, 0].mean())
        x = fields.flatten()
        for lin, norm in zip(layers[0::3], layers[1::3]):
            x = torch.relu(batch_norm(linear(x, lin), norm))
        logits.append(first_order + fm + linear(x, model.dnn[2]).squeeze())
    torch.testing.assert_close(model(BATCH), torch.stack(logits))


def test_a_batch_without_users_gets_the_zero_user_field():
    model = DeepFM(num_items=8, embedding_dim=4, num_users=3).eval()
    randomize(model)
    anonymous = {key: value for key, value in BATCH.items() if key != "user_index"}
    with torch.no_grad():
        model.user_embedding.weight[1:].zero_()
        model.user_weight.weight[1:].zero_()
    torch.testing.assert_close(model(anonymous), model(BATCH))


def post_ln_sasrec(model, ids, length):
    """RecStudio's SASRec query at the last position, written out: x = emb + pos; per block
    x = LN1(x + MHA(x)), x = LN2(x + W2 gelu(W1 x)); no final norm."""
    x = model.item_embedding.weight.weight[ids[:length]] + model.position_embedding.weight[:length]
    for block in model.encoder.layers:
        attention = block.self_attn
        heads, dim = attention.num_heads, x.size(1)
        q, k, v = (x @ w.T + b for w, b in zip(attention.in_proj_weight.chunk(3), attention.in_proj_bias.chunk(3)))
        split = lambda t: t.view(length, heads, dim // heads).transpose(0, 1)  # noqa: E731
        scores = split(q) @ split(k).transpose(1, 2) / math.sqrt(dim // heads)
        scores = scores.masked_fill(torch.triu(torch.ones(length, length, dtype=torch.bool), 1), float("-inf"))
        attended = (torch.softmax(scores, -1) @ split(v)).transpose(0, 1).reshape(length, dim)
        x = F.layer_norm(x + linear(attended, attention.out_proj), (dim,), block.norm1.weight, block.norm1.bias, 1e-12)
        feed_forward = linear(F.gelu(linear(x, block.linear1)), block.linear2)
        x = F.layer_norm(x + feed_forward, (dim,), block.norm2.weight, block.norm2.bias, 1e-12)
    return x[-1]


def test_greb_sasrec_user_embedding_follows_recstudios_formula():
    model = GREBSASRec(ItemEmbedding(10, 8), num_positions=6, num_blocks=2, num_heads=2, ffn_hidden_dim=12).eval()
    randomize(model)
    ids, lengths = torch.tensor([[3, 7, 1, 0, 0], [9, 2, 5, 6, 4]]), torch.tensor([3, 5])
    expected = torch.stack([post_ln_sasrec(model, ids[b], int(lengths[b])) for b in range(2)])
    torch.testing.assert_close(model.query_embeddings(ids, lengths, torch.zeros_like(ids)), expected)
    assert model.encoder.layers[0].norm1.eps == 1e-12 and not model.encoder.layers[0].norm_first


def test_greb_sasrec_blocks_equal_torchs_transformer_encoder_with_gradients():
    # The written-out post-LN blocks against the nn.TransformerEncoder whose weights they use,
    # every position and the last-position query alike, with the gradient of every weight.
    model = GREBSASRec(ItemEmbedding(10, 8), num_positions=6, num_blocks=2, num_heads=2, ffn_hidden_dim=12,
                       dropout_rate=0.0).train()
    randomize(model)
    ids, lengths = torch.tensor([[3, 7, 1, 0, 0], [9, 2, 5, 6, 4], [4, 0, 0, 0, 0]]), torch.tensor([3, 5, 1])
    x = model.item_embedding(ids) + model.position_embedding(torch.arange(5))
    causal = torch.triu(torch.ones(5, 5, dtype=torch.bool), 1)
    padding = torch.arange(5).unsqueeze(0) >= lengths.unsqueeze(1)
    reference = model.encoder(x, mask=causal, src_key_padding_mask=padding)
    real = ~padding.unsqueeze(-1)
    encoded = model.encode(ids, lengths, torch.zeros_like(ids))
    torch.testing.assert_close(encoded * real, reference * real)
    queries = model.query_embeddings(ids, lengths, torch.zeros_like(ids))
    torch.testing.assert_close(queries, reference[torch.arange(3), lengths - 1])
    weights = [p for p in model.parameters() if p.requires_grad]
    expected = torch.autograd.grad((reference[torch.arange(3), lengths - 1] ** 2).sum(), weights, allow_unused=True)
    actual = torch.autograd.grad((queries ** 2).sum(), weights, allow_unused=True)
    for e, a in zip(expected, actual):
        torch.testing.assert_close(a, e, atol=1e-6, rtol=1e-5)


def test_greb_sasrec_starts_from_recstudios_normal_initialization():
    torch.manual_seed(0)
    model = GREBSASRec(ItemEmbedding(2000, 64), num_positions=21)
    item_table = model.item_embedding.weight.weight
    assert abs(item_table[1:].std().item() - 0.02) < 0.001 and item_table[0].abs().sum() == 0
    assert abs(model.encoder.layers[0].linear1.weight.std().item() - 0.02) < 0.002
    assert model.encoder.layers[0].linear1.bias.abs().sum() == 0


# --- GRE-B's retrieval samples and evaluation mask ----------------------------------------------------------


def hand_data():
    # User 0: items 0..5 (6 items), user 1: 7 2 7 (a repeat), user 2: 4 1 (too short to train).
    return SequenceDataset.from_item_sequences("hand", 8, [[0, 1, 2, 3, 4, 5], [7, 2, 7], [4, 1]])


def test_per_position_samples_count_and_content():
    view = PerPositionView(hand_data(), max_history_length=2, ignore_last_n=2)
    # Training positions 1 .. n - 3: user 0 has 1, 2, 3; user 1 none (its only one is validation); user 2 none.
    assert len(view) == 3 and view.num_skipped_users == 2
    examples = [view[i] for i in range(len(view))]
    assert [e["user_index"] for e in examples] == [0, 0, 0]
    assert [e["history_ids"].tolist() for e in examples] == [[1], [1, 2], [2, 3]]  # <= 2 preceding, ids + 1
    assert [e["target_id"] for e in examples] == [2, 3, 4]
    batch = collate_sequences(examples)
    assert batch["history_lengths"].tolist() == [1, 2, 2]


def test_per_position_loss_is_taken_at_the_target_only():
    # With one sample, the window loss at every position differs; the last-position loss is the
    # binary cross-entropy of the target's logit alone.
    torch.manual_seed(0)
    model = GREBSASRec(ItemEmbedding(8, 4), num_positions=6, dropout_rate=0.0).eval()
    batch = collate_sequences([PerPositionView(hand_data(), 4, 2)[2]])  # history 1 2 3, target 4
    torch.manual_seed(1)
    loss = binary_cross_entropy_loss(model, batch, CPU, num_negatives=1, last_position_only=True)
    torch.manual_seed(1)
    negative = torch.randint(1, 9, (1, 1)).item()
    query = model.query_embeddings(batch["history_ids"], batch["history_lengths"], batch["history_timestamps"])[0]
    items = model.item_embedding.weight.weight
    expected = F.softplus(-(query @ items[4])) + F.softplus(query @ items[negative])
    if negative == 4:
        expected = F.softplus(-(query @ items[4]))
    torch.testing.assert_close(loss, expected)


def test_seen_items_are_every_item_before_the_target():
    items = np.array([7, 2, 7, 5])
    assert seen_item_ids(items, 3).tolist() == [3, 8]  # 1-based, each once
    valid = SeenItemsView(SequenceView(hand_data(), 2, ignore_last_n=1))
    test = SeenItemsView(SequenceView(hand_data(), 2, ignore_last_n=0))
    # User 0: validation masks its training items 0..3; test adds the validation item 4.
    assert valid[0]["seen_item_ids"].tolist() == [1, 2, 3, 4] and valid[0]["history_ids"].tolist() == [3, 4]
    assert test[0]["seen_item_ids"].tolist() == [1, 2, 3, 4, 5]


class FixedScores(torch.nn.Module):
    """A scorer whose every user prefers items in the order of ``preference`` (scores fixed)."""

    def __init__(self, scores):
        super().__init__()
        self.scores = torch.nn.Parameter(scores)

    def query_embeddings(self, history, lengths, timestamps):
        return torch.ones(history.size(0), 1)

    def all_item_embeddings(self):
        return self.scores.view(-1, 1)

    def normalize_items(self, embeddings):
        return embeddings


def test_a_seen_item_is_never_ranked_nor_counted():
    data = hand_data()
    # Item id 1 (0-based 0) scores highest for everyone, then id 2, 3, ...
    model = FixedScores(torch.tensor([0.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0]))
    test = SeenItemsView(SequenceView(data, 2, ignore_last_n=0))
    batch = collate_with_seen_items([test[i] for i in range(len(test))])
    _, _, ranks = next(user_target_ranks(model, [batch], CPU, repeated_target="miss"))
    # User 0, target id 6: ids 1-5 were seen (only 4 and 5 are in its capped history), so it ranks first.
    # User 1, target id 8 was seen at position 0: a miss, ranked where no reported K reaches (the
    # reference's miss rank, 2,501, on a catalogue smaller than that).
    # User 2, target id 2: id 5 was seen, id 1 was not: rank 2.
    assert ranks.tolist() == [1, 2501, 2]
    windowed = collate_sequences([SequenceView(data, 2, ignore_last_n=0)[i] for i in range(3)])
    _, _, capped = next(user_target_ranks(model, [windowed], CPU))
    assert capped.tolist()[0] == 4  # the project's window mask leaves ids 1-3 rankable


# --- GRE-B's text ---------------------------------------------------------------------------------------------


def test_greb_amazon_text_is_title_dot_features_then_description():
    from generative_recommenders.text.item_text import item_texts

    record = {"item_id": "B1", "title": "Stapler <b>Pro</b>", "features": ["Metal body", "20 sheets"],
              "description": ["Staples paper."], "categories": ["Office", "Staplers"], "price": 9.5}
    # GRE-B's filter.py: title + ". " + features + description (no separator before the description).
    assert item_texts([record], "greb_amazon") == ["Stapler Pro. Metal body 20 sheetsStaples paper."]
    assert item_texts([{"item_id": "B2", "title": "Pen"}], "greb_amazon") == ["Pen."]


def test_gre_encoders_pool_with_cls_unnormalized(monkeypatch):
    from generative_recommenders.text import encoders

    built = {}

    class Recorder:
        def __init__(self, model, **settings):
            built[model] = settings

    monkeypatch.setattr(encoders, "HFTextEncoder", Recorder)
    for size in ("small", "base", "large"):
        encoders.get_text_encoder(f"gre-{size}")
    assert {model: (s["pooling"], s["normalize"]) for model, s in built.items()} == {
        f"pepsiness/gre-{size}": ("cls", False) for size in ("small", "base", "large")}
