import pytest
import torch

from generative_recommenders.ops import jagged


def _random_jagged(lengths, dim=3):
    lengths = torch.tensor(lengths)
    values = torch.randn(int(lengths.sum()), dim, requires_grad=True)
    return lengths, values


def test_complete_cumsum(jagged_backend):
    assert jagged.complete_cumsum(torch.tensor([2, 0, 3])).tolist() == [0, 2, 2, 5]


def test_jagged_to_padded_dense_by_hand(jagged_backend):
    values = torch.arange(1.0, 6.0).view(5, 1)  # rows: [1, 2], [], [3, 4, 5]
    offsets = torch.tensor([0, 2, 2, 5])
    padded = jagged.jagged_to_padded_dense(values, offsets, 3, padding_value=-1.0)
    assert padded.squeeze(-1).tolist() == [[1, 2, -1], [-1, -1, -1], [3, 4, 5]]
    # Longer rows are cut at max_length.
    assert jagged.jagged_to_padded_dense(values, offsets, 2).squeeze(-1).tolist() == [[1, 2], [0, 0], [3, 4]]


def test_dense_to_jagged_by_hand(jagged_backend):
    dense = torch.arange(12.0).view(3, 4, 1)
    offsets = torch.tensor([0, 1, 1, 4])
    assert jagged.dense_to_jagged(dense, offsets).squeeze(-1).tolist() == [0, 8, 9, 10]


@pytest.mark.parametrize("lengths", [[1], [4, 1, 7, 7], [3, 0, 2]])
def test_backends_agree_with_gradients(lengths):
    if not jagged.fbgemm_available():
        pytest.skip("fbgemm_gpu does not import")
    results = {}
    for backend in jagged.BACKENDS:
        jagged.set_backend(backend)
        torch.manual_seed(1)
        lengths_t, values = _random_jagged(lengths)
        offsets = jagged.complete_cumsum(lengths_t)
        padded = jagged.jagged_to_padded_dense(values, offsets, max(lengths) + 2)
        weights = torch.randn_like(padded)
        back = jagged.dense_to_jagged(padded * weights, offsets)
        (back.square().sum()).backward()
        results[backend] = (offsets, padded.detach(), back.detach(), values.grad)
    jagged.set_backend(None)
    for a, b in zip(results["torch"], results["fbgemm"]):
        torch.testing.assert_close(a, b)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError):
        jagged.set_backend("cuda-magic")
