"""``ops.dropout`` against ``torch.nn.functional.dropout``: the same outputs, gradients and masks, bit for bit,
and the generator left in the same state (so a seed trains as it did with torch's dropout)."""

import pytest
import torch
import torch.nn.functional as F

from generative_recommenders.ops.dropout import DRAWS_PER_BLOCK, Dropout, dropout


def _output_gradient_next_draws(fn, x, p, upstream):
    torch.manual_seed(11)
    out = fn(x, p)
    (gradient,) = torch.autograd.grad(out, x, upstream)
    return out, gradient, torch.rand(4)


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5, 1 / 3, 0.9])
@pytest.mark.parametrize("shape", [(7,), (16, 51, 64), (3, DRAWS_PER_BLOCK + 5)])  # the last: blocks of draws
def test_equals_torchs_dropout_bit_for_bit_with_its_gradient_and_generator_state(p, shape):
    x = torch.randn(*shape, requires_grad=True)
    upstream = torch.randn(*shape)
    ours = _output_gradient_next_draws(dropout, x, p, upstream)
    torchs = _output_gradient_next_draws(lambda t, q: F.dropout(t, q, training=True), x, p, upstream)
    for mine, theirs in zip(ours, torchs):
        assert torch.equal(mine.detach().view(torch.int32), theirs.detach().view(torch.int32))  # bits, signed zeros too


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_equals_torchs_dropout_in_other_dtypes(dtype):
    x = torch.randn(33, 17).to(dtype)
    torch.manual_seed(1)
    expected = F.dropout(x, 0.3)
    torch.manual_seed(1)
    assert torch.equal(dropout(x, 0.3), expected)


def test_a_non_contiguous_input_goes_through_torchs_dropout():
    x = torch.randn(40, 30).t()
    torch.manual_seed(4)
    expected = F.dropout(x, 0.5)
    torch.manual_seed(4)
    assert torch.equal(dropout(x, 0.5), expected)


def test_kept_values_are_scaled_and_the_keep_rate_is_one_minus_p():
    torch.manual_seed(1)
    out = dropout(torch.ones(1_000_000), 0.2)
    dropped, kept = torch.unique(out).tolist()
    assert dropped == 0.0 and kept == pytest.approx(1.25, rel=1e-7)
    # 1M draws: the keep rate's standard deviation is 0.0004, so 0.003 is over seven of them.
    assert abs(float((out != 0).float().mean()) - 0.8) < 0.003


def test_off_when_not_training_or_p_zero_and_all_dropped_at_p_one():
    x = torch.randn(5, 4)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros(5, 4))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_a_probability_outside_zero_one_is_refused(p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(torch.ones(3), p)


def test_the_module_is_torchs_dropout_with_the_same_state_and_modes():
    module = Dropout(0.5)
    assert isinstance(module, torch.nn.Dropout) and module.state_dict() == {}
    x = torch.randn(10, 10)
    assert module.eval()(x) is x
    torch.manual_seed(2)
    trained = module.train()(x)
    torch.manual_seed(2)
    assert torch.equal(trained, torch.nn.Dropout(0.5)(x))
