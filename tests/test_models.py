import math

import pytest
import torch
import torch.nn.functional as F

from generative_recommenders.modeling.hstu import HSTUEncoder, RelativeAttentionBias, request_timestamps
from generative_recommenders.modeling.item_embeddings import ItemEmbedding
from generative_recommenders.modeling.sasrec import SASRecEncoder
from generative_recommenders.modeling.sequential import SequentialRecommender
from generative_recommenders.ops import jagged
from generative_recommenders.ops.hstu_attention_padded import dense_relative_bias
from generative_recommenders.ops.sequences import time_bucket

NUM_ITEMS, DIM, MAX_LEN = 30, 16, 12


def test_time_bucket_known_values():
    deltas = torch.tensor([0, 1, -1, 2, 3, 10, 60, 3600, 86400, -86400, 10**12, 10**15])
    expected = [
        0, 0, 0,
        int(math.log(2) / 0.301),  # 2
        int(math.log(3) / 0.301),  # 3
        int(math.log(10) / 0.301),  # 7
        int(math.log(60) / 0.301),  # 13
        int(math.log(3600) / 0.301),  # 27
        int(math.log(86400) / 0.301),  # 37
        int(math.log(86400) / 0.301),
        91,  # ln(1e12) / 0.301
        114,  # ln(1e15) / 0.301
    ]
    assert time_bucket(deltas).tolist() == expected
    assert time_bucket(torch.tensor([10**18])).item() == 128  # ln(1e18) / 0.301 = 137.7, clamped


def test_request_time_buckets_use_the_next_event_time():
    ts = torch.tensor([[100, 110, 1100]])
    buckets = time_bucket(request_timestamps(ts).unsqueeze(2) - ts.unsqueeze(1))
    # Query 0 is asked at t_1 = 110: gaps to keys 100, 110, 1100 are 10, 0, 990.
    assert buckets[0, 0].tolist() == time_bucket(torch.tensor([10, 0, 990])).tolist()
    # The last query repeats its own time (1100).
    assert buckets[0, 2].tolist() == time_bucket(torch.tensor([1000, 990, 0])).tolist()


def test_relative_bias_matches_the_reference_pad_repeat_construction():
    n = 7
    bias = RelativeAttentionBias(n)
    w = bias.position_weights.detach()
    # The reference builds the [N, N] position bias by padding, repeating and slicing.
    t = F.pad(w[: 2 * n - 1], [0, n]).repeat(n)[:-n].reshape(1, n, 3 * n - 2)
    r = (2 * n - 1) // 2
    expected = t[..., r:-r][0]
    zero_buckets = torch.zeros(1, n, n, dtype=torch.long)

    def dense(buckets):
        return dense_relative_bias(bias.position_weights, bias.time_weights, buckets)[0].detach()

    torch.testing.assert_close(dense(zero_buckets) - bias.time_weights[0].detach(), expected)
    # A shorter batch sees the top-left block of the same matrix.
    torch.testing.assert_close(dense(zero_buckets[:, :4, :4]) - bias.time_weights[0].detach(), expected[:4, :4])


def _model(kind: str, attention: str = "auto", jagged_backend: str = "auto", relative_bias: bool = True,
           seed: int = 0) -> SequentialRecommender:
    """A small model; the same ``seed`` gives the same weights whatever the backends."""
    torch.manual_seed(seed)
    backends = dict(attention_backend=attention, jagged_backend=jagged_backend)
    if kind == "hstu":
        encoder = HSTUEncoder(DIM, MAX_LEN, num_blocks=2, num_heads=2, dqk=4, dv=8,
                              linear_dropout_rate=0.0, attn_dropout_rate=0.0,
                              enable_relative_attention_bias=relative_bias, **backends)
    else:
        encoder = SASRecEncoder(DIM, MAX_LEN, num_blocks=2, num_heads=2, ffn_hidden_dim=DIM,
                                ffn_activation_fn="relu", ffn_dropout_rate=0.0, **backends)
    model = SequentialRecommender(ItemEmbedding(NUM_ITEMS, DIM), encoder, MAX_LEN, dropout_rate=0.0)
    return model.eval()


def _batch(lengths, width):
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    ts = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(1, NUM_ITEMS + 1, (n,))
        m = min(n + 1, width)
        ts[b, :m] = torch.cumsum(torch.randint(0, 5000, (m,)), 0)
    return ids, torch.tensor(lengths), ts


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_outputs_are_unit_norm_and_zero_free(kind, jagged_backend):
    model = _model(kind, jagged_backend=jagged_backend)
    ids, lengths, ts = _batch([1, 5, 11], 11)
    out = model.encode(ids, lengths, ts)
    for b, n in enumerate(lengths.tolist()):
        norms = out[b, :n].norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_causality(kind, jagged_backend):
    model = _model(kind, jagged_backend=jagged_backend)
    ids, lengths, ts = _batch([9, 9], 10)
    out = model.encode(ids, lengths, ts)
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] % NUM_ITEMS) + 1
    changed_ts = ts.clone()
    changed_ts[:, 7:] += 10**6  # later events, and the requests after them
    out2 = model.encode(changed, lengths, changed_ts)
    # Position 5 is requested at t_6 (unchanged) and sees items 0..5 only.
    torch.testing.assert_close(out[:, :6], out2[:, :6])
    assert not torch.allclose(out[:, 6:9], out2[:, 6:9])


@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_padding_invariance(kind, jagged_backend):
    model = _model(kind, jagged_backend=jagged_backend)
    ids, lengths, ts = _batch([1, 4, 7], 8)
    out = model.encode(ids, lengths, ts)
    wide_ids = F.pad(ids, [0, 4])
    wide_ts = F.pad(ts, [0, 4])
    wide = model.encode(wide_ids, lengths, wide_ts)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(out[b, :n], wide[b, :n])
    # A sequence alone in its batch gives what it gives beside others.
    alone = model.encode(ids[1:2, :5], lengths[1:2], ts[1:2, :5])
    torch.testing.assert_close(alone[0, :4], out[1, :4])


def test_query_embedding_is_the_last_history_position():
    model = _model("hstu")
    ids, lengths, ts = _batch([3, 6], 7)
    q = model.query_embeddings(ids, lengths, ts)
    out = model.encode(ids, lengths, ts)
    torch.testing.assert_close(q, torch.stack([out[0, 2], out[1, 5]]))


def test_hstu_same_on_torch_and_fbgemm_backends():
    if not jagged.fbgemm_available():
        pytest.skip("fbgemm_gpu does not import")
    ids, lengths, ts = _batch([2, 9, 5], 10)
    grads = {}
    for backend in ("torch", "fbgemm"):
        model = _model("hstu", jagged_backend=backend).train()
        out = model.encode(ids, lengths, ts)
        out.square().sum().backward()
        grads[backend] = (out.detach(), model.encoder.blocks[0].uvqk.grad.clone())
    torch.testing.assert_close(grads["torch"], grads["fbgemm"])


def test_too_long_batch_is_a_clear_error():
    model = _model("hstu")
    ids, lengths, ts = _batch([3], MAX_LEN + 1)
    with pytest.raises(ValueError, match="num_positions"):
        model.encode(ids, lengths, ts)


def _position_weights(num_positions: int, dim: int, **options) -> torch.Tensor:
    torch.manual_seed(0)
    model = SequentialRecommender(
        ItemEmbedding(NUM_ITEMS, dim), torch.nn.Identity(), num_positions, dropout_rate=0.0, **options
    )
    return model.position_embedding.weight.detach()


def test_xavier_normal_positions_have_the_reference_hstu_std():
    # 2,000 x 64 draws: the sample std is within 1% of the true one; 3% leaves room.
    weights = _position_weights(2000, 64, position_init="xavier_normal")
    std = math.sqrt(2 / (2000 + 64))
    assert weights.std().item() == pytest.approx(std, rel=0.03)
    assert weights.mean().item() == pytest.approx(0.0, abs=0.01 * std)
    # Untruncated: about 4.6% of a normal's draws lie beyond two std.
    beyond = (weights.abs() > 2 * std).float().mean().item()
    assert 0.035 < beyond < 0.057
    # The paper's Amazon config: 50 + 10 + 1 positions of dimension 64, std sqrt(2 / 125) = 0.126.
    assert _position_weights(61, 64, position_init="xavier_normal").std().item() == pytest.approx(0.126, rel=0.05)


def test_truncated_normal_positions_by_default():
    weights = _position_weights(2000, 64)
    std = math.sqrt(1 / 64)
    # A normal truncated at two std keeps 0.88 of its std: 0.110 here, and nothing beyond 2 std.
    assert weights.std().item() == pytest.approx(0.8796 * std, rel=0.03)
    assert weights.abs().max().item() <= 2 * std
    assert torch.equal(weights, _position_weights(2000, 64, position_init="truncated_normal"))
    with pytest.raises(ValueError, match="position_init"):
        _position_weights(4, 4, position_init="uniform")


def _encode_with_grads(model, ids, lengths, ts):
    out = model.encode(ids, lengths, ts)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out.device)
    (out * weights).sum().backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("relative_bias", [True, False])
def test_hstu_optimized_attention_gives_the_padded_reference_outputs_and_gradients(relative_bias, jagged_backend):
    def model(attention):
        return _model("hstu", attention, jagged_backend, relative_bias).train()

    # Length 1, full length (the whole configured N) and lengths between.
    ids, lengths, ts = _batch([1, MAX_LEN, 5, 2, 9], MAX_LEN)
    reference_out, reference_grads = _encode_with_grads(model("padded"), ids, lengths, ts)
    out, grads = _encode_with_grads(model("torch"), ids, lengths, ts)
    valid = torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1)
    torch.testing.assert_close(out[valid], reference_out[valid])
    assert reference_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    assert len(grads) == len(list(model("torch").parameters()))


def _sasrec_with_multihead_attention(encoder, x, lengths):
    """SASRec's blocks as first written: padded, through torch.nn.MultiheadAttention."""
    width = x.size(1)
    causal = torch.triu(torch.ones(width, width, dtype=torch.bool), 1)
    valid = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1).float()
    for block in encoder.blocks:
        queries = F.layer_norm(x, [DIM], eps=1e-8)
        attended, _ = block.attention(queries, x, x, attn_mask=causal, need_weights=False)
        hidden = F.layer_norm(queries + attended, [DIM], eps=1e-8)
        x = (block.ffn(hidden) + hidden) * valid
    return x


def test_jagged_sasrec_equals_multihead_attention_on_padded_inputs():
    model = _model("sasrec")
    ids, lengths, ts = _batch([1, MAX_LEN, 5, 2], MAX_LEN)
    x = model.item_embeddings(ids) * math.sqrt(DIM) + model.position_embedding(torch.arange(MAX_LEN))
    x = x * (torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    torch.testing.assert_close(model.encoder(x, lengths, ts), _sasrec_with_multihead_attention(model.encoder, x, lengths))


def test_sasrec_grouped_attention_gives_the_padded_reference_outputs_and_gradients(jagged_backend):
    model = _model("sasrec", "auto", jagged_backend)
    ids, lengths, ts = _batch([1, MAX_LEN, 5, 2, 9], MAX_LEN)
    reference_out, reference_grads = _encode_with_grads(_model("sasrec", "padded", jagged_backend), ids, lengths, ts)
    out, grads = _encode_with_grads(model, ids, lengths, ts)
    torch.testing.assert_close(out, reference_out)
    assert reference_grads.keys() == grads.keys() and len(grads) == len(list(model.parameters()))
    for name, grad in grads.items():
        torch.testing.assert_close(grad, reference_grads[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", ["hstu", "sasrec"])
def test_models_on_cuda_give_the_cpu_outputs_and_gradients(kind):
    """The default backends on CUDA (HSTU: the Triton kernel once its probe passes) against the CPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu_model = _model(kind, "torch").train()
    cuda_model = _model(kind, "auto").train().cuda()
    ids, lengths, ts = _batch([1, MAX_LEN, 5, 2, 9], MAX_LEN)
    want_out, want_grads = _encode_with_grads(cpu_model, ids, lengths, ts)
    got_out, got_grads = _encode_with_grads(cuda_model, ids.cuda(), lengths.cuda(), ts.cuda())
    valid = torch.arange(MAX_LEN).unsqueeze(0) < lengths.unsqueeze(1)
    torch.testing.assert_close(got_out.cpu()[valid], want_out[valid], rtol=1e-4, atol=1e-5)
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name].cpu(), grad, rtol=1e-3, atol=1e-5, msg=name)
    if kind == "hstu":
        assert cuda_model.encoder.attention_backend_in_use(torch.device("cuda", 0), training=True) == "triton"
