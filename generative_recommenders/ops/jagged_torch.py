"""Jagged <-> padded conversions in plain PyTorch: the backend that always works."""

from __future__ import annotations

import torch


def complete_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([lengths.new_zeros(1), torch.cumsum(lengths, dim=0)])


def jagged_to_padded_dense(
    values: torch.Tensor, offsets: torch.Tensor, max_length: int, padding_value: float
) -> torch.Tensor:
    lengths = offsets[1:] - offsets[:-1]
    if values.size(0) == 0:
        return values.new_full((lengths.size(0), max_length, values.size(1)), padding_value)
    positions = torch.arange(max_length, device=values.device)
    mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # [B, max_length]
    index = (offsets[:-1].unsqueeze(1) + positions.unsqueeze(0)).clamp(max=values.size(0) - 1)
    gathered = values[index]  # [B, max_length, D]
    return torch.where(mask.unsqueeze(-1), gathered, gathered.new_tensor(padding_value))


def dense_to_jagged(dense: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    lengths = offsets[1:] - offsets[:-1]
    positions = torch.arange(dense.size(1), device=dense.device)
    return dense[positions.unsqueeze(0) < lengths.unsqueeze(1)]
