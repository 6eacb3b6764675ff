"""What every attention over jagged sequences shares: the per-batch sequences record,
time buckets, and running a padded-block attention on jagged inputs, either with every
sequence padded to one width or grouped by length.

``q, k [T, H, d]`` and ``v [T, H, dv]`` are jagged: sequence ``b`` owns rows
``offsets[b]:offsets[b + 1]``. An ``Attend`` function computes causal
attention over a padded block ``q, k, v [n, L, H, d]`` (optionally with a
``[n, L, L]`` bias) and returns ``[n, L, H, dv]``; the functions here feed it
blocks and put its outputs back in jagged order.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Optional

import torch

from generative_recommenders.ops import jagged

# One attention setting for every model's attention (``hstu_attention``, ``softmax_attention``);
# models carry theirs from their config, by default this environment variable, read once.
ATTENTION_BACKENDS = ("auto", "padded", "torch", "triton")
DEFAULT_ATTENTION_BACKEND = os.environ.get("GR_ATTENTION_BACKEND") or "auto"

NUM_TIME_BUCKETS = 128
# Bucket k starts at a gap of e^(0.301 k): each bucket spans ~1.35x the gaps of the last.
LOG_BUCKET_BASE = 0.301

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def check_attention_backend(backend: str) -> str:
    """``backend`` if it names one (for configs: fails before anything runs)."""
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {ATTENTION_BACKENDS}")
    return backend


def time_bucket(delta: torch.Tensor, num_buckets: int = NUM_TIME_BUCKETS) -> torch.Tensor:
    """``clamp(floor(ln(max(|d|, 1)) / 0.301), 0, num_buckets)`` for time gaps ``d``."""
    buckets = (torch.log(delta.abs().clamp(min=1).to(torch.float32)) / LOG_BUCKET_BASE).long()
    return buckets.clamp(min=0, max=num_buckets)


@dataclasses.dataclass
class JaggedSequences:
    """The per-batch inputs every attention layer shares.

    ``offsets [B + 1]``; ``max_length`` bounds the longest sequence;
    ``timestamps [T]`` are the event times ``t_j``, ``request_timestamps [T]``
    the request times ``r_i`` (both needed only with a relative bias);
    ``jagged_backend`` the backend of the jagged conversions (``ops.jagged``).
    Backends keep what they derive from these in ``cache``, so it is built
    once per batch, not once per layer.
    """

    offsets: torch.Tensor
    max_length: int
    timestamps: Optional[torch.Tensor] = None
    request_timestamps: Optional[torch.Tensor] = None
    jagged_backend: str = jagged.DEFAULT_BACKEND
    cache: Dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1


def padded_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    width: int,
    attend: Attend,
    bias: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Every sequence padded to ``width`` (the reference's way), attended, and back to jagged."""
    offsets, batch, backend = sequences.offsets, sequences.batch_size, sequences.jagged_backend
    num_heads, dv = v.shape[1:]

    def pad(values: torch.Tensor) -> torch.Tensor:
        flat = values.reshape(values.size(0), -1)
        return jagged.jagged_to_padded_dense(flat, offsets, width, backend=backend).view(batch, width, num_heads, -1)

    attended = attend(pad(q), pad(k), pad(v), bias).reshape(batch, width, num_heads * dv)
    return jagged.dense_to_jagged(attended, offsets, backend=backend).view(-1, num_heads, dv)


@dataclasses.dataclass
class _LengthGroup:
    token_index: torch.Tensor  # [n, L]: rows of the jagged values (padding repeats a valid row)
    valid: torch.Tensor  # [n * L]: which padded slots hold a token
    bias_index: Optional[torch.Tensor]  # [n, L, L] into the flattened (position, time) bias table


@dataclasses.dataclass
class GroupedPlan:
    """Sequences grouped by length, each group padded to its own longest; built once per batch."""

    groups: List[_LengthGroup]
    inverse_order: torch.Tensor  # jagged row t is row inverse_order[t] of the groups' outputs


def _length_groups(lengths: torch.Tensor) -> List[torch.Tensor]:
    """Sequence indices grouped by ``ceil(log2(length))``: padding within a group is < 2x."""
    nonempty = lengths > 0
    classes = torch.ceil(torch.log2(lengths.clamp(min=1).double())).long()
    return [
        torch.nonzero(nonempty & (classes == c)).squeeze(1)
        for c in torch.unique(classes[nonempty]).tolist()
    ]


def grouped_plan(
    sequences: JaggedSequences, num_positions: int, num_buckets: Optional[int] = None
) -> GroupedPlan:
    """The batch's length groups, cached in ``sequences``.

    ``num_buckets``: with a relative bias, the time bias's bucket count; each
    group then carries its bias indices into the ``(2N - 1) x (num_buckets + 1)``
    table of every (position, time bucket) bias value.
    """
    key = f"grouped:{num_positions}:{num_buckets}"
    if key in sequences.cache:
        return sequences.cache[key]
    offsets = sequences.offsets
    device = offsets.device
    lengths = (offsets[1:] - offsets[:-1]).cpu()
    starts = offsets[:-1]
    groups, rows = [], []
    for members in _length_groups(lengths):
        group_lengths = lengths[members]
        width = int(group_lengths.max())
        members, group_lengths = members.to(device), group_lengths.to(device)
        positions = torch.arange(width, device=device)
        valid = positions.unsqueeze(0) < group_lengths.unsqueeze(1)
        # Padding slots point at the sequence's last row: finite values that only padded
        # (discarded) queries can see under the causal mask.
        token_index = starts[members].unsqueeze(1) + torch.minimum(
            positions.unsqueeze(0), (group_lengths - 1).unsqueeze(1)
        )
        bias_index = None
        if num_buckets is not None:
            buckets = time_bucket(
                sequences.request_timestamps[token_index].unsqueeze(2)
                - sequences.timestamps[token_index].unsqueeze(1),
                num_buckets,
            )
            relative = positions.unsqueeze(0) - positions.unsqueeze(1) + num_positions - 1
            bias_index = relative.unsqueeze(0) * (num_buckets + 1) + buckets
        groups.append(_LengthGroup(token_index, valid.reshape(-1), bias_index))
        rows.append(token_index[valid])
    order = torch.cat(rows)
    inverse_order = torch.empty_like(order)
    inverse_order[order] = torch.arange(order.numel(), device=device)
    plan = GroupedPlan(groups, inverse_order)
    sequences.cache[key] = plan
    return plan


def grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: GroupedPlan,
    attend: Attend,
    bias_table: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``attend`` on each length group; ``bias_table`` is indexed by the groups' bias indices."""
    num_heads, dv = v.shape[1:]
    outputs = []
    for group in plan.groups:
        n, width = group.token_index.shape
        index = group.token_index.reshape(-1)
        attended = attend(
            q.index_select(0, index).view(n, width, num_heads, -1),
            k.index_select(0, index).view(n, width, num_heads, -1),
            v.index_select(0, index).view(n, width, num_heads, dv),
            None if bias_table is None else bias_table[group.bias_index],
        )
        outputs.append(attended.reshape(n * width, num_heads, dv)[group.valid])
    return torch.cat(outputs).index_select(0, plan.inverse_order)
