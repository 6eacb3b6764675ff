"""HSTU's causal SiLU attention with a relative position and time bias, on jagged tensors.

For each sequence, with ``N`` the configured ``max_seq_len``::

    out_i = sum_{j <= i} silu(q_i . k_j + w_pos[N - 1 + j - i] + w_ts[bucket(|r_i - t_j|)]) / N * v_j

where ``t_j`` is the time of event ``j`` and ``r_i`` the time at which position
``i``'s prediction is requested. ``q, k [T, H, dqk]`` and ``v [T, H, dv]`` are
jagged: sequence ``b`` owns rows ``offsets[b]:offsets[b + 1]``.

Backends, all computing the same values and gradients:

* ``padded``: the reference's computation: every sequence padded to ``N``,
  the ``[B, N, N]`` bias built from scratch on every call.
* ``torch``: sequences grouped by length (each group padded to its own
  longest member) and the bias indices built once per batch, shared by all
  layers. The default on CPU.
* ``triton``: a fused kernel, forward and backward, that never materializes an
  ``[L, L]`` matrix (``triton_hstu_attention.py``). The default on CUDA when
  triton imports; it runs fp32 or, under ``torch.autocast``, bf16/fp16 inputs.

``set_backend`` or the environment variable ``GR_ATTENTION_BACKEND`` forces one.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from generative_recommenders.ops import jagged

BACKENDS = ("padded", "torch", "triton")
NUM_TIME_BUCKETS = 128
# Bucket k starts at a gap of e^(0.301 k): each bucket spans ~1.35x the gaps of the last.
LOG_BUCKET_BASE = 0.301

_forced_backend: Optional[str] = os.environ.get("GR_ATTENTION_BACKEND") or None


def time_bucket(delta: torch.Tensor, num_buckets: int = NUM_TIME_BUCKETS) -> torch.Tensor:
    """``clamp(floor(ln(max(|d|, 1)) / 0.301), 0, num_buckets)`` for time gaps ``d``."""
    buckets = (torch.log(delta.abs().clamp(min=1).to(torch.float32)) / LOG_BUCKET_BASE).long()
    return buckets.clamp(min=0, max=num_buckets)


def dense_relative_bias(
    position_weights: torch.Tensor, time_weights: torch.Tensor, time_buckets: torch.Tensor
) -> torch.Tensor:
    """``w_pos[N - 1 + j - i] + w_ts[time_buckets]`` for ``time_buckets [B, L, L]``.

    ``N`` is read off ``position_weights [2N - 1]``.
    """
    max_seq_len = (position_weights.numel() + 1) // 2
    length = time_buckets.size(-1)
    if length > max_seq_len:
        raise ValueError(f"sequence of length {length} exceeds max_sequence_len {max_seq_len}")
    positions = torch.arange(length, device=time_buckets.device)
    relative = positions.unsqueeze(0) - positions.unsqueeze(1) + max_seq_len - 1
    return position_weights[relative].unsqueeze(0) + time_weights[time_buckets]


@dataclasses.dataclass
class JaggedSequences:
    """The per-batch inputs every attention layer shares.

    ``offsets [B + 1]``; ``max_length`` bounds the longest sequence;
    ``timestamps [T]`` are the event times ``t_j``, ``request_timestamps [T]``
    the request times ``r_i`` (both needed only with a relative bias).
    Backends keep what they derive from these in ``cache``, so it is built
    once per batch, not once per layer.
    """

    offsets: torch.Tensor
    max_length: int
    timestamps: Optional[torch.Tensor] = None
    request_timestamps: Optional[torch.Tensor] = None
    cache: Dict[str, object] = dataclasses.field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1


def set_backend(backend: Optional[str]) -> None:
    """Forces a backend for every call; ``None`` restores the automatic choice."""
    global _forced_backend
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose from {BACKENDS}")
    _forced_backend = backend


def padded_reference_forced() -> bool:
    """Whether the ``padded`` reference is forced (it also applies to ``softmax_attention``)."""
    return _forced_backend == "padded"


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _triton_runs_on(device: torch.device) -> bool:
    # The interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors: that is how they are tested.
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def active_backend(device: torch.device, dropout: bool) -> str:
    """The backend a call on ``device`` uses; ``dropout``: attention dropout is active."""
    if _forced_backend is None:
        use_triton = device.type == "cuda" and not dropout and triton_available()
        return "triton" if use_triton else "torch"
    if _forced_backend not in BACKENDS:
        raise ValueError(f"GR_ATTENTION_BACKEND={_forced_backend!r} is not one of {BACKENDS}")
    if _forced_backend == "triton":
        if not triton_available():
            raise RuntimeError("the triton attention backend was requested but triton does not import")
        if not _triton_runs_on(device):
            raise RuntimeError(
                f"the triton attention backend runs on CUDA (or with TRITON_INTERPRET=1), not on {device}"
            )
        if dropout:
            raise ValueError("the triton attention backend has no attention dropout; use the torch backend")
    return _forced_backend


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    max_seq_len: int,
    position_weights: Optional[torch.Tensor] = None,
    time_weights: Optional[torch.Tensor] = None,
    dropout_rate: float = 0.0,
    training: bool = False,
) -> torch.Tensor:
    """Jagged HSTU attention: ``q, k [T, H, dqk]``, ``v [T, H, dv]`` -> ``[T, H, dv]``.

    ``position_weights [2 * max_seq_len - 1]`` and ``time_weights [num_buckets + 1]``
    (both or neither) add the relative bias; attention dropout (``dropout_rate``
    while ``training``) drops entries of the attention matrix.
    """
    if (position_weights is None) != (time_weights is None):
        raise ValueError("position_weights and time_weights go together (pass both, or neither)")
    if position_weights is not None:
        if position_weights.numel() != 2 * max_seq_len - 1:
            raise ValueError(
                f"position_weights has {position_weights.numel()} entries; "
                f"max_seq_len {max_seq_len} needs {2 * max_seq_len - 1}"
            )
        if sequences.timestamps is None or sequences.request_timestamps is None:
            raise ValueError("a relative bias needs the sequences' timestamps and request_timestamps")
    if sequences.max_length > max_seq_len:
        raise ValueError(
            f"sequence of length {sequences.max_length} exceeds max_sequence_len {max_seq_len}"
        )
    dropout = training and dropout_rate > 0.0
    backend = active_backend(q.device, dropout)
    if backend == "triton":
        from generative_recommenders.ops.triton_hstu_attention import triton_hstu_attention

        return triton_hstu_attention(q, k, v, sequences, max_seq_len, position_weights, time_weights)
    attend = _padded_hstu_attention if backend == "padded" else _grouped_hstu_attention
    return attend(
        q, k, v, sequences, max_seq_len, position_weights, time_weights, dropout_rate if dropout else 0.0
    )


# attend(q [n, L, H, dqk], k [n, L, H, dqk], v [n, L, H, dv], bias [n, L, L] or None) -> [n, L, H, dv]:
# causal attention over a padded block, the mask its own business.
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


def _silu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: Optional[torch.Tensor],
    max_seq_len: int,
    dropout_rate: float,
) -> torch.Tensor:
    """HSTU's attention on a padded block: ``silu(q k^T + bias) / N``, causal."""
    scores = torch.einsum("bnhd,bmhd->bhnm", q, k)
    if bias is not None:
        scores = scores + bias.unsqueeze(1)
    width = q.size(1)
    mask = torch.tril(torch.ones(width, width, device=q.device, dtype=q.dtype))
    weights = F.silu(scores) / max_seq_len * mask
    if dropout_rate > 0.0:
        weights = F.dropout(weights, p=dropout_rate)
    return torch.einsum("bhnm,bmhd->bnhd", weights, v)


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
    offsets, batch = sequences.offsets, sequences.batch_size
    num_heads, dv = v.shape[1:]

    def pad(values: torch.Tensor) -> torch.Tensor:
        padded = jagged.jagged_to_padded_dense(values.reshape(values.size(0), -1), offsets, width)
        return padded.view(batch, width, num_heads, -1)

    attended = attend(pad(q), pad(k), pad(v), bias)
    return jagged.dense_to_jagged(attended.reshape(batch, width, num_heads * dv), offsets).view(-1, num_heads, dv)


def _padded_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    max_seq_len: int,
    position_weights: Optional[torch.Tensor],
    time_weights: Optional[torch.Tensor],
    dropout_rate: float,
) -> torch.Tensor:
    """The reference: everything padded to ``max_seq_len``, the bias rebuilt on every call."""
    bias = None
    if position_weights is not None:

        def pad(times: torch.Tensor) -> torch.Tensor:
            return jagged.jagged_to_padded_dense(times.unsqueeze(-1), sequences.offsets, max_seq_len).squeeze(-1)

        request, times = pad(sequences.request_timestamps), pad(sequences.timestamps)
        buckets = time_bucket(request.unsqueeze(2) - times.unsqueeze(1), time_weights.numel() - 1)
        bias = dense_relative_bias(position_weights, time_weights, buckets)
    attend = functools.partial(_silu_attention, max_seq_len=max_seq_len, dropout_rate=dropout_rate)
    return padded_attention(q, k, v, sequences, max_seq_len, attend, bias)


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
    sequences: JaggedSequences, max_seq_len: int, num_buckets: Optional[int] = None
) -> GroupedPlan:
    """The batch's length groups, cached in ``sequences``.

    ``num_buckets``: with a relative bias, the time bias's bucket count; each
    group then carries its bias indices into the ``(2N - 1) x (num_buckets + 1)``
    table of every (position, time bucket) bias value.
    """
    key = f"grouped:{max_seq_len}:{num_buckets}"
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
            relative = positions.unsqueeze(0) - positions.unsqueeze(1) + max_seq_len - 1
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


def _grouped_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    max_seq_len: int,
    position_weights: Optional[torch.Tensor],
    time_weights: Optional[torch.Tensor],
    dropout_rate: float,
) -> torch.Tensor:
    """Sequences of similar length attend together; the bias indices are shared by all layers."""
    if q.size(0) == 0:
        return v.new_zeros(v.shape)
    with_bias = position_weights is not None
    plan = grouped_plan(sequences, max_seq_len, time_weights.numel() - 1 if with_bias else None)
    # One gather per layer from the (2N - 1) x (buckets + 1) table of every bias value.
    table = (position_weights.unsqueeze(1) + time_weights.unsqueeze(0)).view(-1) if with_bias else None
    attend = functools.partial(_silu_attention, max_seq_len=max_seq_len, dropout_rate=dropout_rate)
    return grouped_attention(q, k, v, plan, attend, table)
