import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from generative_recommenders.ops import hstu_attention, jagged
from generative_recommenders.ops.sequences import NUM_TIME_BUCKETS, JaggedSequences


def _random_jagged(lengths, dim=3):
    lengths = torch.tensor(lengths)
    values = torch.randn(int(lengths.sum()), dim, requires_grad=True)
    return lengths, values


def test_complete_cumsum(jagged_backend):
    assert jagged.complete_cumsum(torch.tensor([2, 0, 3]), backend=jagged_backend).tolist() == [0, 2, 2, 5]


def test_jagged_to_padded_dense_by_hand(jagged_backend):
    values = torch.arange(1.0, 6.0).view(5, 1)  # rows: [1, 2], [], [3, 4, 5]
    offsets = torch.tensor([0, 2, 2, 5])
    padded = jagged.jagged_to_padded_dense(values, offsets, 3, padding_value=-1.0, backend=jagged_backend)
    assert padded.squeeze(-1).tolist() == [[1, 2, -1], [-1, -1, -1], [3, 4, 5]]
    # Longer rows are cut at max_length.
    cut = jagged.jagged_to_padded_dense(values, offsets, 2, backend=jagged_backend)
    assert cut.squeeze(-1).tolist() == [[1, 2], [0, 0], [3, 4]]


def test_dense_to_jagged_by_hand(jagged_backend):
    dense = torch.arange(12.0).view(3, 4, 1)
    offsets = torch.tensor([0, 1, 1, 4])
    assert jagged.dense_to_jagged(dense, offsets, backend=jagged_backend).squeeze(-1).tolist() == [0, 8, 9, 10]


@pytest.mark.parametrize("lengths", [[1], [4, 1, 7, 7], [3, 0, 2]])
def test_backends_agree_with_gradients(lengths):
    if not jagged.fbgemm_available():
        pytest.skip("fbgemm_gpu does not import")
    results = {}
    for backend in ("torch", "fbgemm"):
        torch.manual_seed(1)
        lengths_t, values = _random_jagged(lengths)
        offsets = jagged.complete_cumsum(lengths_t, backend=backend)
        padded = jagged.jagged_to_padded_dense(values, offsets, max(lengths) + 2, backend=backend)
        weights = torch.randn_like(padded)
        back = jagged.dense_to_jagged(padded * weights, offsets, backend=backend)
        (back.square().sum()).backward()
        results[backend] = (offsets, padded.detach(), back.detach(), values.grad)
    for a, b in zip(results["torch"], results["fbgemm"]):
        torch.testing.assert_close(a, b)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown jagged backend 'cuda-magic'"):
        jagged.complete_cumsum(torch.tensor([1]), backend="cuda-magic")
    assert jagged.resolve_backend("auto") == ("fbgemm" if jagged.fbgemm_available() else "torch")


# --- HSTU attention -------------------------------------------------------------------------

N = 16  # num_positions of the attention tests
LENGTH_SETS = [[1], [N], [1, 5, N, 9, 3, 1, 16, 2]]


def _attention_inputs(lengths, num_heads=2, dqk=8, dv=4, with_bias=True, seed=0):
    """Random jagged q, k, v (leaves), sequences with random increasing times, bias weights."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    total = int(lengths.sum())
    q, k, v = (
        torch.randn(total, num_heads, d, generator=generator).requires_grad_() for d in (dqk, dqk, dv)
    )
    times, requests = [], []
    for n in lengths.tolist():
        # Gaps up to ~3 days span many time buckets; t_{i+1} is the request time of position i.
        seq = torch.cumsum(torch.randint(0, 300_000, (n + 1,), generator=generator), 0)
        times.append(seq[:n])
        requests.append(seq[1:])
    sequences = JaggedSequences(
        jagged.complete_cumsum(lengths), int(lengths.max()), torch.cat(times), torch.cat(requests)
    )
    weights = (
        (torch.randn(2 * N - 1, generator=generator) * 0.3).requires_grad_(),
        (torch.randn(NUM_TIME_BUCKETS + 1, generator=generator) * 0.3).requires_grad_(),
    ) if with_bias else (None, None)
    return (q, k, v), sequences, weights


def _attention_and_grads(backend, inputs, attend=None):
    """Output and gradients of q, k, v (and the bias weights) under a fixed random cotangent."""
    (q, k, v), sequences, weights = inputs
    leaves = [q, k, v] + [w for w in weights if w is not None]
    for leaf in leaves:
        leaf.grad = None
    sequences.cache.clear()
    if attend is None:
        out = hstu_attention.hstu_attention(q, k, v, sequences, N, *weights, backend=backend)
    else:
        out = attend(q, k, v, sequences, N, *weights)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out.float() * cotangent).sum().backward()
    return [out.detach().float()] + [leaf.grad.clone() for leaf in leaves]


def _by_hand(q, k, v, times, requests, position_weights, time_weights):
    """The formula, one query and key at a time, for one sequence."""
    n = q.size(0)
    out = torch.zeros(n, q.size(1), v.size(2), dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1):
            gap = max(abs(int(requests[i]) - int(times[j])), 1)
            bucket = min(max(int(math.log(gap) / 0.301), 0), NUM_TIME_BUCKETS)
            for h in range(q.size(1)):
                score = float(q[i, h] @ k[j, h]) + float(position_weights[N - 1 + j - i]) + float(time_weights[bucket])
                out[i, h] += score / (1 + math.exp(-score)) / N * v[j, h].double()
    return out


@pytest.mark.parametrize("backend", ["padded", "torch"])
def test_attention_matches_the_formula_by_hand(backend):
    (q, k, v), sequences, (pw, tw) = _attention_inputs([3, 1, 4])
    out = hstu_attention.hstu_attention(q, k, v, sequences, N, pw, tw, backend=backend)
    for b in range(3):
        rows = slice(int(sequences.offsets[b]), int(sequences.offsets[b + 1]))
        expected = _by_hand(
            q[rows].detach(), k[rows].detach(), v[rows].detach(),
            sequences.timestamps[rows], sequences.request_timestamps[rows], pw.detach(), tw.detach(),
        )
        torch.testing.assert_close(out[rows].double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("lengths", LENGTH_SETS)
def test_grouped_attention_equals_the_padded_reference(lengths, with_bias, jagged_backend):
    inputs = _attention_inputs(lengths, with_bias=with_bias)
    reference = _attention_and_grads("padded", inputs)
    grouped = _attention_and_grads("torch", inputs)
    for expected, got in zip(reference, grouped):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_grouped_plan_is_built_once_per_batch_and_holds_no_weights():
    (q, k, v), sequences, (pw, tw) = _attention_inputs([2, 7, 16])
    first = hstu_attention.hstu_attention(q, k, v, sequences, N, pw, tw)
    assert len(sequences.cache) == 1
    # A second layer (other weights) reuses the plan and still sees its own weights.
    pw2, tw2 = pw.detach() * -2, tw.detach() + 0.5
    second = hstu_attention.hstu_attention(q, k, v, sequences, N, pw2, tw2)
    assert len(sequences.cache) == 1
    sequences.cache.clear()
    fresh = hstu_attention.hstu_attention(q, k, v, sequences, N, pw2, tw2)
    torch.testing.assert_close(second, fresh)
    assert not torch.allclose(first, second)


def test_a_sequence_attends_alike_whatever_its_batch():
    (q, k, v), sequences, (pw, tw) = _attention_inputs([16, 3, 9])
    together = hstu_attention.hstu_attention(q, k, v, sequences, N, pw, tw)
    rows = slice(16, 19)
    alone = JaggedSequences(
        torch.tensor([0, 3]), 3, sequences.timestamps[rows], sequences.request_timestamps[rows]
    )
    torch.testing.assert_close(
        hstu_attention.hstu_attention(q[rows], k[rows], v[rows], alone, N, pw, tw), together[rows]
    )


def test_attention_rejects_bad_arguments():
    (q, k, v), sequences, (pw, tw) = _attention_inputs([2, 3])
    with pytest.raises(ValueError, match="go together"):
        hstu_attention.hstu_attention(q, k, v, sequences, N, pw, None)
    with pytest.raises(ValueError, match="position_weights has"):
        hstu_attention.hstu_attention(q, k, v, sequences, N + 1, pw, tw)
    with pytest.raises(ValueError, match="exceeds num_positions"):
        hstu_attention.hstu_attention(q, k, v, sequences, 2, None, None)
    no_times = JaggedSequences(sequences.offsets, 3)
    with pytest.raises(ValueError, match="timestamps"):
        hstu_attention.hstu_attention(q, k, v, no_times, N, pw, tw)
    with pytest.raises(ValueError, match="unknown attention backend"):
        hstu_attention.hstu_attention(q, k, v, sequences, N, pw, tw, backend="flash")


def test_backend_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert hstu_attention.resolve_backend("auto", cpu, dropout=False) == "torch"
    monkeypatch.setattr(hstu_attention, "triton_available", lambda: True)
    monkeypatch.setattr(hstu_attention, "triton_passes_probe", lambda device: True)
    assert hstu_attention.resolve_backend("auto", cuda, dropout=False) == "triton"
    # Attention dropout has no kernel: the PyTorch path takes over.
    assert hstu_attention.resolve_backend("auto", cuda, dropout=True) == "torch"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="runs on CUDA"):
        hstu_attention.resolve_backend("triton", cpu, dropout=False)
    with pytest.raises(ValueError, match="no attention dropout"):
        hstu_attention.resolve_backend("triton", cuda, dropout=True)
    assert hstu_attention.resolve_backend("padded", cuda, dropout=True) == "padded"


def _grouped_reference(q, k, v, sequences, num_positions, pw, tw):
    return hstu_attention.hstu_attention(q, k, v, sequences, num_positions, pw, tw, backend="torch")


def _raising_kernel(*args, **kwargs):
    raise RuntimeError("no kernel image is available for execution on the device")


def _wrong_kernel(q, k, v, sequences, num_positions, pw, tw):
    return _grouped_reference(q, k, v, sequences, num_positions, pw, tw) * 1.01


@pytest.mark.parametrize(
    "kernel, passes, reason",
    [(_grouped_reference, True, None), (_raising_kernel, False, "RuntimeError: no kernel image"),
     (_wrong_kernel, False, "disagrees with the PyTorch path")],
)
def test_the_triton_probe_passes_a_right_kernel_and_fails_a_broken_or_wrong_one(monkeypatch, caplog, kernel, passes,
                                                                              reason):
    from generative_recommenders.ops import hstu_attention_triton

    monkeypatch.setattr(hstu_attention_triton, "triton_hstu_attention", kernel)
    hstu_attention.triton_passes_probe.cache_clear()
    try:
        assert hstu_attention.triton_passes_probe(torch.device("cpu")) is passes
    finally:
        hstu_attention.triton_passes_probe.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if passes:
        assert warnings == []
    else:
        assert len(warnings) == 1 and reason in warnings[0] and warnings[0].endswith("; using the PyTorch path")


def test_a_failed_probe_falls_back_to_the_pytorch_path_with_its_results(monkeypatch, caplog):
    from generative_recommenders.ops import hstu_attention_triton

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # where the kernel would run: the CPU, under the interpreter
    monkeypatch.setattr(hstu_attention, "triton_available", lambda: True)
    monkeypatch.setattr(hstu_attention_triton, "triton_hstu_attention", _raising_kernel)
    hstu_attention.triton_passes_probe.cache_clear()
    try:
        inputs = _attention_inputs([1, N, 7])
        fallback = _attention_and_grads("auto", inputs)
        again = _attention_and_grads("auto", inputs)  # the probe ran once: one warning
        reference = _attention_and_grads("torch", inputs)
    finally:
        hstu_attention.triton_passes_probe.cache_clear()
    for got, want in zip(fallback, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert [torch.equal(a, b) for a, b in zip(again, fallback)] == [True] * len(fallback)
    assert sum(r.levelname == "WARNING" for r in caplog.records) == 1


def _on(device, inputs):
    """The same attention inputs, as fresh leaves on ``device``."""
    (q, k, v), sequences, weights = inputs
    moved = JaggedSequences(
        sequences.offsets.to(device), sequences.max_length,
        sequences.timestamps.to(device), sequences.request_timestamps.to(device),
    )
    leaves = [t.detach().to(device).requires_grad_() if t is not None else None for t in (q, k, v, *weights)]
    return tuple(leaves[:3]), moved, tuple(leaves[3:])


def _triton_checks(device: str) -> None:
    """The Triton kernel against the PyTorch path: outputs and every gradient.

    Runs where the kernel runs: on CUDA, or on CPU under the interpreter
    (TRITON_INTERPRET=1 before triton is first imported, hence a process of its own).
    """
    from generative_recommenders.ops.hstu_attention_triton import triton_hstu_attention

    fp32 = dict(rtol=1e-4, atol=1e-4) if device == "cuda" else dict(rtol=1e-5, atol=1e-5)
    # Lengths 1 and N, tiles cut mid-sequence, tiles of unequal height and width.
    for block_m, block_n, with_bias in [(16, 16, True), (16, 16, False), (16, 32, True), (32, 16, True)]:
        inputs = _attention_inputs([1, N, 7, 12], with_bias=with_bias)
        expected = _attention_and_grads("torch", inputs)

        def kernel(q, k, v, sequences, num_positions, pw, tw):
            return triton_hstu_attention(q, k, v, sequences, num_positions, pw, tw, block_m, block_n)

        got = _attention_and_grads("torch", _on(device, inputs), kernel)
        for want, value in zip(expected, got):
            torch.testing.assert_close(value.cpu(), want, **fp32)
    # The probe passes the real kernel; hstu_attention chooses it when forced (automatically on CUDA).
    assert hstu_attention.triton_passes_probe(torch.device(device))
    inputs = _attention_inputs([4, 16])
    expected = _attention_and_grads("torch", inputs)
    got = _attention_and_grads("triton", _on(device, inputs))
    for want, value in zip(expected, got):
        torch.testing.assert_close(value.cpu(), want, **fp32)
    # bf16 autocast: the kernel takes bf16 q, k, v and returns bf16; compared with float32
    # attention on the same bf16-rounded inputs.
    (q, k, v), sequences, (pw, tw) = _on(device, _attention_inputs([1, N, 11]))
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        out = triton_hstu_attention(q, k, v, sequences, N, pw, tw, 16, 16)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert q.grad.dtype == torch.float32 and torch.isfinite(pw.grad).all() and torch.isfinite(tw.grad).all()
    rounded = [t.detach().bfloat16().float().cpu() for t in (q, k, v)]
    cpu_sequences = _on("cpu", ((q, k, v), sequences, (pw, tw)))[1]
    expected = hstu_attention.hstu_attention(*rounded, cpu_sequences, N, pw.detach().cpu(), tw.detach().cpu())
    torch.testing.assert_close(out.float().cpu(), expected, rtol=2e-2, atol=2e-2)


def test_triton_kernel_equals_the_pytorch_path_in_the_interpreter():
    pytest.importorskip("triton")
    tests_dir = Path(__file__).resolve().parent
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(tests_dir.parent), str(tests_dir)]))
    proc = subprocess.run(
        [sys.executable, "-c", "import test_ops; test_ops._triton_checks('cpu')"],
        cwd=tests_dir, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_kernel_on_cuda():
    pytest.importorskip("triton")
    _triton_checks("cuda")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_triton_kernels_compile_for_an_h100(dtype):
    """Compiled ahead of time for sm_90 with triton's own ptxas: no GPU needed (triton caches it)."""
    pytest.importorskip("triton")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from generative_recommenders.ops import hstu_attention_triton as kernels

    pointers = {name: f"*{dtype}" for name in ("Q", "K", "V", "DOut", "Result", "DK", "DV")}
    pointers.update({name: "*i64" for name in ("Offsets", "Times", "RequestTimes")})
    pointers.update({name: "*fp32" for name in ("PW", "TW", "DPW", "DTW")})
    meta = dict(
        HAS_BIAS=True, NUM_BUCKETS=128, DIM_QK=16, DIM_V=16, BLOCK_DQK=16, BLOCK_DV=16,
        BLOCK_M=64, BLOCK_N=64, INPUT_PRECISION="tf32", DOT_IN_FP32=False,
    )
    launches = [
        (kernels._hstu_attention_by_queries, dict(GRADIENT=False, DIM_RESULT=16, BLOCK_RESULT=16)),
        (kernels._hstu_attention_by_queries, dict(GRADIENT=True, DIM_RESULT=16, BLOCK_RESULT=16)),
        (kernels._hstu_attention_backward_dkdv, dict(BLOCK_BUCKETS=256, BLOCK_DIAGONALS=128)),
    ]
    for kernel, extra in launches:
        constants = dict(meta, **extra)
        names = list(kernel.arg_names)
        signature = {
            name: "constexpr" if name in constants
            else pointers.get(name, "fp32" if name == "inv_num_positions" else "i32")
            for name in names
        }
        source = ASTSource(
            fn=kernel, signature=signature, constexprs={(names.index(k),): v for k, v in constants.items()}
        )
        compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        assert compiled.asm["cubin"]
