"""HSTU's causal SiLU attention with a relative position and time bias, on jagged tensors.

For each sequence, with ``N`` the configured ``num_positions``::

    out_i = sum_{j <= i} silu(q_i . k_j + w_pos[N - 1 + j - i] + w_ts[bucket(|r_i - t_j|)]) / N * v_j

where ``t_j`` is the time of event ``j`` and ``r_i`` the time at which position
``i``'s prediction is requested. ``q, k [T, H, dqk]`` and ``v [T, H, dv]`` are
jagged: sequence ``b`` owns rows ``offsets[b]:offsets[b + 1]``.

Backends, all computing the same values and gradients, each in its own module:

* ``padded`` (``hstu_attention_padded``): the reference's computation: every
  sequence padded to ``N``, the ``[B, N, N]`` bias built from scratch on every call.
* ``torch`` (``hstu_attention_grouped``): sequences grouped by length (each
  group padded to its own longest member) and the bias indices built once per
  batch, shared by all layers.
* ``triton`` (``hstu_attention_triton``): a fused kernel, forward and
  backward, that never materializes an ``[L, L]`` matrix; fp32 or, under
  ``torch.autocast``, bf16/fp16 inputs.
* ``auto``: ``triton`` where the kernel runs (CUDA; or the CPU under Triton's
  interpreter, ``TRITON_INTERPRET=1``) when triton imports, passes its probe and
  there is no attention dropout, else ``torch``. The probe (:func:`triton_passes_probe`,
  once per process and device) runs the kernel against the ``torch`` backend
  on a small random batch, values and gradients; a kernel that fails to
  compile or disagrees leaves the process on ``torch``, with one warning.

Models carry their backend from their config; the default is the
environment variable ``GR_ATTENTION_BACKEND``, read once at import, else
``auto`` (``sequences.DEFAULT_ATTENTION_BACKEND``).
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import torch

from generative_recommenders.logs import get_logger

from generative_recommenders.ops.hstu_attention_grouped import grouped_hstu_attention
from generative_recommenders.ops.hstu_attention_padded import padded_hstu_attention
from generative_recommenders.ops.sequences import (
    DEFAULT_ATTENTION_BACKEND,
    NUM_TIME_BUCKETS,
    JaggedSequences,
    check_attention_backend,
)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


logger = get_logger(__name__)
# Probe tolerance: fp32 with TF32 off agrees to ~1e-6; a wrong kernel is off by far more.
_PROBE_TOLERANCE = dict(rtol=1e-3, atol=1e-4)


def _probe_inputs(device: torch.device, seed: int = 0):
    """A small random batch: lengths 1 to 70 (tiles cut mid-sequence), 2 heads, with the bias."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([1, 70, 33, 5])
    total, num_positions = int(lengths.sum()), 80
    q, k, v = (torch.randn(total, 2, 16, generator=generator) for _ in range(3))
    times = torch.cumsum(torch.randint(0, 100_000, (total + 1,), generator=generator), 0)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    weights = (torch.randn(2 * num_positions - 1, generator=generator) * 0.1,
               torch.randn(NUM_TIME_BUCKETS + 1, generator=generator) * 0.1)
    sequences = JaggedSequences(offsets.to(device), int(lengths.max()), times[:total].to(device), times[1:].to(device))
    leaves = [t.to(device).requires_grad_() for t in (q, k, v, *weights)]
    return leaves, sequences, num_positions


def _output_and_gradients(attend, device: torch.device):
    leaves, sequences, num_positions = _probe_inputs(device)
    out = attend(*leaves[:3], sequences, num_positions, *leaves[3:])
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (out * cotangent).sum().backward()
    return [out.detach()] + [leaf.grad for leaf in leaves]


@functools.lru_cache(maxsize=None)
def triton_passes_probe(device: torch.device) -> bool:
    """Whether the Triton kernel compiles and agrees with the ``torch`` backend on ``device``
    (values and every gradient), checked once per process and device; warns once when not."""
    from generative_recommenders.ops.hstu_attention_grouped import grouped_hstu_attention

    def reference(q, k, v, sequences, num_positions, pw, tw):
        return grouped_hstu_attention(q, k, v, sequences, num_positions, pw, tw, 0.0)

    try:
        from generative_recommenders.ops.hstu_attention_triton import triton_hstu_attention

        with torch.autocast(device.type, enabled=False):
            got = _output_and_gradients(triton_hstu_attention, device)
            want = _output_and_gradients(reference, device)
        worst = max(float(((g - w).abs() - _PROBE_TOLERANCE["rtol"] * w.abs()).max()) for g, w in zip(got, want))
        if worst > _PROBE_TOLERANCE["atol"]:
            raise ValueError(f"it disagrees with the PyTorch path by up to {worst:.3g} beyond tolerance")
    except Exception as error:  # a kernel that cannot compile or run fails in many ways
        reason = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        logger.warning("the Triton attention kernel failed its check on %s (%s); using the PyTorch path", device, reason)
        return False
    return True


def _triton_runs_on(device: torch.device) -> bool:
    # The interpreter (TRITON_INTERPRET=1) runs kernels on CPU tensors: that is how they are tested.
    return device.type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def resolve_backend(backend: str, device: torch.device, dropout: bool) -> str:
    """The concrete backend ``backend`` stands for on ``device``; ``dropout``: attention dropout is active."""
    check_attention_backend(backend)
    if backend == "auto":
        usable = not dropout and triton_available() and _triton_runs_on(device) and triton_passes_probe(device)
        return "triton" if usable else "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("the triton attention backend was requested but triton does not import")
        if not _triton_runs_on(device):
            raise RuntimeError(
                f"the triton attention backend runs on CUDA (or with TRITON_INTERPRET=1), not on {device}"
            )
        if dropout:
            raise ValueError("the triton attention backend has no attention dropout; use the torch backend")
    return backend


def hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    num_positions: int,
    position_weights: Optional[torch.Tensor] = None,
    time_weights: Optional[torch.Tensor] = None,
    dropout_rate: float = 0.0,
    training: bool = False,
    backend: str = DEFAULT_ATTENTION_BACKEND,
) -> torch.Tensor:
    """Jagged HSTU attention: ``q, k [T, H, dqk]``, ``v [T, H, dv]`` -> ``[T, H, dv]``.

    ``position_weights [2 * num_positions - 1]`` and ``time_weights [num_buckets + 1]``
    (both or neither) add the relative bias; attention dropout (``dropout_rate``
    while ``training``) drops entries of the attention matrix.
    """
    if (position_weights is None) != (time_weights is None):
        raise ValueError("position_weights and time_weights go together (pass both, or neither)")
    if position_weights is not None:
        if position_weights.numel() != 2 * num_positions - 1:
            raise ValueError(
                f"position_weights has {position_weights.numel()} entries; "
                f"num_positions {num_positions} needs {2 * num_positions - 1}"
            )
        if sequences.timestamps is None or sequences.request_timestamps is None:
            raise ValueError("a relative bias needs the sequences' timestamps and request_timestamps")
    if sequences.max_length > num_positions:
        raise ValueError(
            f"sequence of length {sequences.max_length} exceeds num_positions {num_positions}"
        )
    dropout = training and dropout_rate > 0.0
    backend = resolve_backend(backend, q.device, dropout)
    if backend == "triton":
        from generative_recommenders.ops.hstu_attention_triton import triton_hstu_attention

        return triton_hstu_attention(q, k, v, sequences, num_positions, position_weights, time_weights)
    attend = padded_hstu_attention if backend == "padded" else grouped_hstu_attention
    return attend(
        q, k, v, sequences, num_positions, position_weights, time_weights, dropout_rate if dropout else 0.0
    )
