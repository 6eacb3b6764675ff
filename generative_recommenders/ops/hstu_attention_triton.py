"""A fused Triton kernel for HSTU's jagged causal SiLU attention with its relative bias.

One program owns a block of ``BLOCK_M`` queries (forward, dq) or ``BLOCK_N``
keys (dk, dv and the bias gradients) of one sequence and one head, and walks
the other side of the causal triangle block by block: no ``[L, L]`` matrix is
ever stored, so memory grows with the number of tokens, not its square.
There is no softmax, hence no running statistics: the backward recomputes the
scores from q, k and the bias.

Bias gradients are sums over every (query, key) pair, reduced in registers
before their atomic adds: the position part by diagonals of each tile (one
add per diagonal), the time part by bucket, over all the tiles of a program
(one add per bucket and program).

The time bucket is computed in float32 as in ``sequences.time_bucket``;
a gap whose ``ln(gap) / 0.301`` lies within float rounding of an integer may
land in the neighbouring bucket on some devices.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from generative_recommenders.ops.sequences import LOG_BUCKET_BASE, JaggedSequences

_LOG_BUCKET_BASE = tl.constexpr(LOG_BUCKET_BASE)


@triton.jit
def _dot(a, b, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr):
    if DOT_IN_FP32:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=INPUT_PRECISION)


@triton.jit
def _scores(
    q,
    k,
    offs_m,
    offs_n,
    request_times,
    key_times,
    PW,
    TW,
    seq_len,
    num_positions,
    HAS_BIAS: tl.constexpr,
    NUM_BUCKETS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """q k^T plus the relative bias of one tile; also the causal/validity mask and buckets."""
    scores = _dot(q, tl.trans(k), INPUT_PRECISION, DOT_IN_FP32)
    valid = (offs_n[None, :] <= offs_m[:, None]) & (offs_m[:, None] < seq_len)
    buckets = tl.zeros(scores.shape, dtype=tl.int32)
    if HAS_BIAS:
        relative = num_positions - 1 + offs_n[None, :] - offs_m[:, None]
        scores += tl.load(PW + relative, mask=valid, other=0.0)
        gap = tl.abs(request_times[:, None] - key_times[None, :])
        gap = tl.maximum(gap, 1).to(tl.float32)
        # Correctly rounded division, as torch's (tl.div_rn wants operands of one shape).
        log_gap = tl.log(gap)
        buckets = tl.div_rn(log_gap, tl.full(log_gap.shape, _LOG_BUCKET_BASE, tl.float32)).to(tl.int32)
        buckets = tl.minimum(tl.maximum(buckets, 0), NUM_BUCKETS)
        scores += tl.load(TW + buckets, mask=valid, other=0.0)
    return scores, valid, buckets


@triton.jit
def _load_times(ptr, rows, row_mask, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        times = tl.load(ptr + rows, mask=row_mask, other=0)
    else:
        times = tl.zeros(rows.shape, dtype=tl.int64)
    return times


@triton.jit
def _load_rows(ptr, rows, row_mask, stride_t, cols, num_cols):
    """A ``[rows, cols]`` tile of one head's features, zero outside the sequence and the head dim."""
    mask = row_mask[:, None] & (cols[None, :] < num_cols)
    return tl.load(ptr + rows[:, None] * stride_t + cols[None, :], mask=mask, other=0.0)


@triton.jit
def _store_rows(ptr, value, rows, row_mask, stride_t, cols, num_cols):
    tl.store(
        ptr + rows[:, None] * stride_t + cols[None, :],
        value.to(ptr.dtype.element_ty),
        mask=row_mask[:, None] & (cols[None, :] < num_cols),
    )


@triton.jit
def _sequence_and_head(Offsets, num_heads):
    """The first row, the length and the head of the sequence this program works on."""
    sequence = tl.program_id(1) // num_heads
    start = tl.load(Offsets + sequence)
    seq_len = (tl.load(Offsets + sequence + 1) - start).to(tl.int32)
    return start, seq_len, tl.program_id(1) % num_heads


@triton.jit
def _score_gradients(scores, valid, d_weights, inv_num_positions):
    """d scores from d weights, for weights = silu(scores) / N under the mask."""
    sig = tl.sigmoid(scores)
    return tl.where(valid, d_weights * inv_num_positions * sig * (1.0 + scores * (1.0 - sig)), 0.0)


@triton.jit
def _hstu_attention_by_queries(
    Q, K, V, DOut, Result, Offsets, Times, RequestTimes, PW, TW,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_rt, stride_rh,
    num_heads, num_positions, inv_num_positions,
    GRADIENT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    NUM_BUCKETS: tl.constexpr,
    DIM_QK: tl.constexpr,
    DIM_V: tl.constexpr,
    DIM_RESULT: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_RESULT: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    """Per block of queries: the output (``GRADIENT=False``) or dq from d out (``GRADIENT=True``)."""
    block_m = tl.program_id(0)
    start, seq_len, head = _sequence_and_head(Offsets, num_heads)
    # From here on, pointers address this sequence's first row (and this head).
    Q += start * stride_qt + head * stride_qh
    K += start * stride_kt + head * stride_kh
    V += start * stride_vt + head * stride_vh
    DOut += start * stride_dot + head * stride_doh
    Result += start * stride_rt + head * stride_rh
    Times += start
    RequestTimes += start
    first_query = block_m * BLOCK_M
    if first_query < seq_len:
        offs_m = first_query + tl.arange(0, BLOCK_M)
        rows_m = offs_m < seq_len
        dqk = tl.arange(0, BLOCK_DQK)
        dv = tl.arange(0, BLOCK_DV)
        q = _load_rows(Q, offs_m, rows_m, stride_qt, dqk, DIM_QK)
        if GRADIENT:
            d_out = _load_rows(DOut, offs_m, rows_m, stride_dot, dv, DIM_V)
        else:
            d_out = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
        request_times = _load_times(RequestTimes, offs_m, rows_m, HAS_BIAS)
        acc = tl.zeros([BLOCK_M, BLOCK_RESULT], dtype=tl.float32)
        for first_key in range(0, tl.minimum(first_query + BLOCK_M, seq_len), BLOCK_N):
            offs_n = first_key + tl.arange(0, BLOCK_N)
            rows_n = offs_n < seq_len
            k = _load_rows(K, offs_n, rows_n, stride_kt, dqk, DIM_QK)
            v = _load_rows(V, offs_n, rows_n, stride_vt, dv, DIM_V)
            key_times = _load_times(Times, offs_n, rows_n, HAS_BIAS)
            scores, valid, _ = _scores(
                q, k, offs_m, offs_n, request_times, key_times, PW, TW, seq_len, num_positions,
                HAS_BIAS, NUM_BUCKETS, INPUT_PRECISION, DOT_IN_FP32,
            )
            if GRADIENT:
                d_weights = _dot(d_out, tl.trans(v), INPUT_PRECISION, DOT_IN_FP32)
                d_scores = _score_gradients(scores, valid, d_weights, inv_num_positions)
                acc += _dot(d_scores.to(k.dtype), k, INPUT_PRECISION, DOT_IN_FP32)
            else:
                weights = tl.where(valid, scores * tl.sigmoid(scores) * inv_num_positions, 0.0)
                acc += _dot(weights.to(v.dtype), v, INPUT_PRECISION, DOT_IN_FP32)
        _store_rows(Result, acc, offs_m, rows_m, stride_rt, tl.arange(0, BLOCK_RESULT), DIM_RESULT)


@triton.jit
def _hstu_attention_backward_dkdv(
    Q, K, V, DOut, DK, DV, DPW, DTW, Offsets, Times, RequestTimes, PW, TW,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh,
    num_heads, num_positions, inv_num_positions,
    HAS_BIAS: tl.constexpr,
    NUM_BUCKETS: tl.constexpr,
    BLOCK_BUCKETS: tl.constexpr,
    DIM_QK: tl.constexpr,
    DIM_V: tl.constexpr,
    BLOCK_DQK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_DIAGONALS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    DOT_IN_FP32: tl.constexpr,
):
    block_n = tl.program_id(0)
    start, seq_len, head = _sequence_and_head(Offsets, num_heads)
    # From here on, pointers address this sequence's first row (and this head).
    K += start * stride_kt + head * stride_kh
    V += start * stride_vt + head * stride_vh
    Q += start * stride_qt + head * stride_qh
    DOut += start * stride_dot + head * stride_doh
    DK += start * stride_dkt + head * stride_dkh
    DV += start * stride_dvt + head * stride_dvh
    Times += start
    RequestTimes += start
    first_key = block_n * BLOCK_N
    if first_key < seq_len:
        offs_n = first_key + tl.arange(0, BLOCK_N)
        rows_n = offs_n < seq_len
        dqk = tl.arange(0, BLOCK_DQK)
        dv = tl.arange(0, BLOCK_DV)
        k = _load_rows(K, offs_n, rows_n, stride_kt, dqk, DIM_QK)
        v = _load_rows(V, offs_n, rows_n, stride_vt, dv, DIM_V)
        key_times = _load_times(Times, offs_n, rows_n, HAS_BIAS)
        dk = tl.zeros([BLOCK_N, BLOCK_DQK], dtype=tl.float32)
        d_v = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
        bucket_ids = tl.arange(0, BLOCK_BUCKETS)
        d_time_weights = tl.zeros([BLOCK_BUCKETS], dtype=tl.float32)
        # Diagonal d of a tile holds the pairs with key - query = d - (BLOCK_M - 1) + first_key - first_query.
        diagonals = tl.arange(0, BLOCK_DIAGONALS)
        tile_rows = tl.arange(0, BLOCK_M)
        diagonal_cols = diagonals[None, :] + tile_rows[:, None] - (BLOCK_M - 1)
        on_tile = (diagonal_cols >= 0) & (diagonal_cols < BLOCK_N)
        for first_query in range((first_key // BLOCK_M) * BLOCK_M, seq_len, BLOCK_M):
            offs_m = first_query + tl.arange(0, BLOCK_M)
            rows_m = offs_m < seq_len
            q = _load_rows(Q, offs_m, rows_m, stride_qt, dqk, DIM_QK)
            d_out = _load_rows(DOut, offs_m, rows_m, stride_dot, dv, DIM_V)
            request_times = _load_times(RequestTimes, offs_m, rows_m, HAS_BIAS)
            scores, valid, buckets = _scores(
                q, k, offs_m, offs_n, request_times, key_times, PW, TW, seq_len, num_positions,
                HAS_BIAS, NUM_BUCKETS, INPUT_PRECISION, DOT_IN_FP32,
            )
            weights = tl.where(valid, scores * tl.sigmoid(scores) * inv_num_positions, 0.0)
            d_v += _dot(tl.trans(weights.to(d_out.dtype)), d_out, INPUT_PRECISION, DOT_IN_FP32)
            d_weights = _dot(d_out, tl.trans(v), INPUT_PRECISION, DOT_IN_FP32)
            d_scores = _score_gradients(scores, valid, d_weights, inv_num_positions)
            dk += _dot(tl.trans(d_scores.to(q.dtype)), q, INPUT_PRECISION, DOT_IN_FP32)
            if HAS_BIAS:
                by_diagonal = tl.gather(d_scores, tl.where(on_tile, diagonal_cols, 0), axis=1)
                diagonal_sums = tl.sum(tl.where(on_tile, by_diagonal, 0.0), axis=0)
                relative = num_positions - 1 + first_key - first_query - (BLOCK_M - 1) + diagonals
                in_range = diagonals < BLOCK_M + BLOCK_N - 1
                in_range &= (relative >= 0) & (relative < 2 * num_positions - 1)
                tl.atomic_add(DPW + relative, diagonal_sums, mask=in_range)
                lowest = tl.min(tl.where(valid, buckets, NUM_BUCKETS))
                highest = tl.max(tl.where(valid, buckets, 0))
                for bucket in range(lowest, highest + 1):
                    total = tl.sum(tl.where(valid & (buckets == bucket), d_scores, 0.0))
                    d_time_weights += tl.where(bucket_ids == bucket, total, 0.0)
        _store_rows(DK, dk, offs_n, rows_n, stride_dkt, dqk, DIM_QK)
        _store_rows(DV, d_v, offs_n, rows_n, stride_dvt, dv, DIM_V)
        if HAS_BIAS:
            tl.atomic_add(DTW + bucket_ids, d_time_weights, mask=bucket_ids <= NUM_BUCKETS)


def _block_size(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _input_precision(dtype: torch.dtype) -> str:
    # Mirrors torch: fp32 matmuls use TF32 only where torch is allowed to.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _strides(*tensors: torch.Tensor) -> Tuple[int, ...]:
    """Row and head strides of each ``[T, H, d]`` tensor, in order."""
    return tuple(stride for t in tensors for stride in (t.stride(0), t.stride(1)))


class _HSTUAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, position_weights, time_weights, sequences, num_positions, block_m, block_n):
        has_bias = position_weights is not None
        offsets = sequences.offsets
        # Kernels read nothing of the bias when it is absent: any tensor serves as a pointer.
        times = sequences.timestamps if has_bias else offsets
        request_times = sequences.request_timestamps if has_bias else offsets
        pw = position_weights.contiguous() if has_bias else q
        tw = time_weights.contiguous() if has_bias else q
        num_heads, dim_qk = q.shape[1:]
        dim_v = v.size(2)
        out = torch.empty_like(v)
        meta = dict(
            HAS_BIAS=has_bias,
            NUM_BUCKETS=tw.numel() - 1 if has_bias else 0,
            DIM_QK=dim_qk,
            DIM_V=dim_v,
            BLOCK_DQK=_block_size(dim_qk),
            BLOCK_DV=_block_size(dim_v),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            INPUT_PRECISION=_input_precision(q.dtype),
            # The interpreter's tl.dot misreads bf16/fp16 operands: it gets them as float32.
            DOT_IN_FP32=os.environ.get("TRITON_INTERPRET") == "1",
        )
        grid = (triton.cdiv(sequences.max_length, block_m), sequences.batch_size * num_heads)
        # No d out in the forward: q stands in for the pointer, never read.
        _hstu_attention_by_queries[grid](
            q, k, v, q, out, offsets, times, request_times, pw, tw,
            *_strides(q, k, v, q, out), num_heads, num_positions, 1.0 / num_positions,
            GRADIENT=False, DIM_RESULT=dim_v, BLOCK_RESULT=meta["BLOCK_DV"], **meta,
        )
        ctx.save_for_backward(q, k, v, offsets, times, request_times, pw, tw)
        ctx.meta, ctx.max_length, ctx.num_positions = meta, sequences.max_length, num_positions
        return out

    @staticmethod
    def backward(ctx, d_out):
        q, k, v, offsets, times, request_times, pw, tw = ctx.saved_tensors
        meta, num_positions = ctx.meta, ctx.num_positions
        d_out = d_out.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        has_bias = meta["HAS_BIAS"]
        # float32 sums of atomic adds; a placeholder without a bias.
        d_pw = torch.zeros(pw.numel() if has_bias else 1, dtype=torch.float32, device=q.device)
        d_tw = torch.zeros(tw.numel() if has_bias else 1, dtype=torch.float32, device=q.device)
        num_heads = q.size(1)
        batch_heads = (offsets.numel() - 1) * num_heads
        common = (num_heads, num_positions, 1.0 / num_positions)
        _hstu_attention_by_queries[(triton.cdiv(ctx.max_length, meta["BLOCK_M"]), batch_heads)](
            q, k, v, d_out, dq, offsets, times, request_times, pw, tw,
            *_strides(q, k, v, d_out, dq), *common,
            GRADIENT=True, DIM_RESULT=q.size(2), BLOCK_RESULT=meta["BLOCK_DQK"], **meta,
        )
        _hstu_attention_backward_dkdv[(triton.cdiv(ctx.max_length, meta["BLOCK_N"]), batch_heads)](
            q, k, v, d_out, dk, dv, d_pw, d_tw, offsets, times, request_times, pw, tw,
            *_strides(q, k, v, d_out, dk, dv), *common,
            BLOCK_BUCKETS=triton.next_power_of_2(meta["NUM_BUCKETS"] + 1),
            BLOCK_DIAGONALS=triton.next_power_of_2(meta["BLOCK_M"] + meta["BLOCK_N"] - 1),
            **meta,
        )
        d_position = d_pw.to(pw.dtype) if has_bias else None
        d_time = d_tw.to(tw.dtype) if has_bias else None
        return dq, dk, dv, d_position, d_time, None, None, None, None


def _kernel_inputs(*tensors: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Rows may be strided (split views of one projection); each row's features must be contiguous."""
    return tuple(t if t.stride(-1) == 1 else t.contiguous() for t in tensors)


def triton_hstu_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    sequences: JaggedSequences,
    num_positions: int,
    position_weights: Optional[torch.Tensor],
    time_weights: Optional[torch.Tensor],
    block_m: int = 64,
    block_n: int = 64,
) -> torch.Tensor:
    """The ``triton`` backend of ``hstu_attention`` (same arguments and result).

    Under ``torch.autocast`` q, k and v run in the autocast dtype (bf16 or fp16)
    with float32 accumulation; the output has their dtype.
    """
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    elif not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    q, k, v = _kernel_inputs(q, k, v)
    with torch.autocast(q.device.type, enabled=False):
        return _HSTUAttention.apply(
            q, k, v, position_weights, time_weights, sequences, num_positions, block_m, block_n
        )
