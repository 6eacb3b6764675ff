"""Jagged <-> padded conversions with fbgemm's kernels (``fbgemm-gpu`` on CUDA, ``fbgemm-gpu-cpu`` on CPU).

Importing this module imports fbgemm_gpu, which registers ``torch.ops.fbgemm``.
"""

from __future__ import annotations

import fbgemm_gpu  # noqa: F401  (registers torch.ops.fbgemm)
import torch


def complete_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    return torch.ops.fbgemm.asynchronous_complete_cumsum(lengths)


def jagged_to_padded_dense(
    values: torch.Tensor, offsets: torch.Tensor, max_length: int, padding_value: float
) -> torch.Tensor:
    return torch.ops.fbgemm.jagged_to_padded_dense(values, [offsets], [max_length], padding_value)


def dense_to_jagged(dense: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    return torch.ops.fbgemm.dense_to_jagged(dense, [offsets])[0]
