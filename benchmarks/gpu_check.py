"""The first thing to run on a CUDA machine: is this code right and fast on the GPU?

    python3 benchmarks/gpu_check.py --out gpu_check/      # about 5 minutes on one H100/H200

Each check runs on its own; one that fails is a row of the table, the others
still run. At the end it prints one table and writes it, with every number,
to ``DIR/gpu_check.json``:

1. ``tests``: the CUDA-marked tests (``pytest -m cuda``);
2. ``attention``: the Triton kernel, the length-grouped PyTorch path and the
   padded reference on the same inputs, values and every gradient (q, k, v and
   both bias tables), at lengths 50, 200, 1024 and 4096, fp32 and bf16
   (bf16: each path under autocast against fp32 attention on the
   bf16-rounded inputs); and forward + backward milliseconds per backend;
3. ``probe``: the Triton kernel's start-up probe (``hstu_attention.triton_passes_probe``);
4. ``train step``: the whole training step's sequences/s (the trainer's
   ``train_step``, through ``benchmarks/train_throughput.py``) on the
   amzn14_office HSTU config and a synthetic long-sequence config (histories
   up to 1,024), fp32 and bf16, with the peak GPU memory;
5. ``fbgemm``: fbgemm's CUDA jagged ops against the PyTorch ones, values and
   gradients (when ``fbgemm-gpu`` imports);
6. ``ml100k 3 epochs``: HSTU on ml100k for 3 epochs on the GPU and on the CPU
   (``main.py``, same seed): the test metrics must agree within seed noise.

Data: ``tmp/amzn14_office`` and ``tmp/ml100k``, prepared from
``../shared/data`` (or ``--shared_data``) when missing; a check whose data is
absent says so. Without CUDA it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from generative_recommenders.ops import hstu_attention, jagged  # noqa: E402
from generative_recommenders.ops.sequences import NUM_TIME_BUCKETS, JaggedSequences  # noqa: E402

LENGTHS = (50, 200, 1024, 4096)
HEADS, DIM = 4, 64
# fp32 (TF32 off) paths agree to float rounding; bf16 paths against fp32 attention on the same rounded inputs.
TOLERANCE = {"fp32": (1e-4, 1e-4), "bf16": (3e-2, 3e-2)}
# Seed noise of HSTU on ml100k (std of HR@10 over 3 seeds, README): GPU and CPU runs must agree within 3 std.
ML100K_HR10_NOISE = 0.0071


class Check:
    """One row of the table: a name, ``ok`` / ``FAIL`` / ``skipped``, and a short detail."""

    def __init__(self, name: str) -> None:
        self.name, self.status, self.detail, self.numbers = name, "ok", "", {}

    def fail(self, detail: str) -> None:
        self.status, self.detail = "FAIL", detail


def _run_check(checks: List[Check], name: str, body: Callable[[Check], None]) -> None:
    check = Check(name)
    start = time.perf_counter()
    try:
        body(check)
    except Exception as error:  # one check's failure is a result; the others still run
        check.fail(" ".join(f"{type(error).__name__}: {error}".split())[:300])
    check.numbers["seconds"] = round(time.perf_counter() - start, 1)
    checks.append(check)
    print(f"[{check.status}] {name} ({check.numbers['seconds']} s) {check.detail}", flush=True)


# --- 1. the CUDA-marked tests -----------------------------------------------------------------


def check_tests(check: Check) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests", "-p", "no:cacheprovider"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    check.detail = summary
    if proc.returncode != 0:
        check.fail(summary + " | " + " ".join(proc.stdout.splitlines()[-15:])[:400])


# --- 2. attention: values, gradients, milliseconds ---------------------------------------------


def attention_inputs(length: int, device: torch.device, tokens: int = 16384, seed: int = 0):
    """Lengths from 1 to ``length`` (always including both), about ``tokens`` tokens, random times."""
    generator = torch.Generator().manual_seed(seed)
    batch = max(2, tokens // length)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    lengths[0], lengths[1] = 1, length
    total = int(lengths.sum())
    times = torch.cumsum(torch.randint(0, 200_000, (total + 1,), generator=generator), 0)
    num_positions = length + 11
    sequences = JaggedSequences(
        jagged.complete_cumsum(lengths).to(device), length, times[:total].to(device), times[1:].to(device)
    )
    leaves = [torch.randn(total, HEADS, DIM, generator=generator) * 0.5 for _ in range(3)]
    leaves += [torch.randn(2 * num_positions - 1, generator=generator) * 0.1,
               torch.randn(NUM_TIME_BUCKETS + 1, generator=generator) * 0.1]
    return [t.to(device) for t in leaves], sequences, num_positions


def attention_and_gradients(backend: str, inputs, bf16: bool) -> List[torch.Tensor]:
    leaves, sequences, num_positions = inputs
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    sequences.cache.clear()
    device = leaves[0].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        out = hstu_attention.hstu_attention(*leaves[:3], sequences, num_positions, *leaves[3:], backend=backend)
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (out.float() * cotangent).sum().backward()
    return [out.detach().float()] + [leaf.grad.float() for leaf in leaves]


def _worst_excess(got: List[torch.Tensor], want: List[torch.Tensor], rtol: float, atol: float) -> float:
    """The largest ``|got - want| - rtol |want| - atol`` over every tensor: > 0 means out of tolerance."""
    return max(float(((g - w).abs() - rtol * w.abs() - atol).max()) for g, w in zip(got, want))


def milliseconds(fn: Callable[[], Any], device: torch.device, repeats: int = 5) -> float:
    fn()  # compile / warm up
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize(device)
    return 1000 * (time.perf_counter() - start) / repeats


def check_attention(check: Check, device: torch.device) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    failures = []
    for length in LENGTHS:
        inputs = attention_inputs(length, device)
        reference = attention_and_gradients("torch", inputs, bf16=False)
        backends = ["triton", "torch"] + (["padded"] if length <= 1024 else [])  # padded: [B, N, N] at 4096 is huge
        for dtype in ("fp32", "bf16"):
            bf16 = dtype == "bf16"
            want = reference
            if bf16:  # fp32 attention on the bf16-rounded inputs
                rounded = [t.bfloat16().float() if i < 3 else t for i, t in enumerate(inputs[0])]
                want = attention_and_gradients("torch", (rounded, inputs[1], inputs[2]), bf16=False)
            rtol, atol = TOLERANCE[dtype]
            for backend in backends:
                if backend == "padded" and bf16:
                    continue  # the reference path is the fp32 one
                key = f"L{length}/{dtype}/{backend}"
                try:
                    got = attention_and_gradients(backend, inputs, bf16)
                    excess = _worst_excess(got, want, rtol, atol)
                    ms = milliseconds(lambda: attention_and_gradients(backend, inputs, bf16), device)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    check.numbers[key] = "out of memory"
                    continue
                check.numbers[key] = {"max_excess_over_tolerance": excess, "fwd_bwd_ms": round(ms, 2)}
                if excess > 0:
                    failures.append(f"{key} off by {excess:.2g} beyond tolerance")
    triton_ms = {k: v["fwd_bwd_ms"] for k, v in check.numbers.items() if k.endswith("triton") and isinstance(v, dict)}
    check.detail = "fwd+bwd ms (triton): " + ", ".join(f"{k.split('/')[0]} {k.split('/')[1]} {v}" for k, v in triton_ms.items())
    if failures:
        check.fail("; ".join(failures))


# --- 3. the probe --------------------------------------------------------------------------------


def check_probe(check: Check, device: torch.device) -> None:
    passed = hstu_attention.triton_passes_probe(device)
    chosen = hstu_attention.resolve_backend("auto", device, dropout=False)
    check.numbers.update(passed=passed, auto_backend=chosen)
    check.detail = f"probe {'passed' if passed else 'FAILED'}; auto -> {chosen}"
    if not passed or chosen != "triton":
        check.fail(check.detail)


# --- 4. the training step ------------------------------------------------------------------------


def check_train_step(check: Check, data_root: Path) -> None:
    cases = ["synthetic"] + (["amzn14_office-hstu"] if (data_root / "amzn14_office").is_dir() else [])
    if len(cases) == 1:
        check.detail = "amzn14_office not prepared: synthetic only. "
    out = data_root / "gpu_check_train_step.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--cases", *cases,
         "--paths", "reference", "optimized", "bf16", "--lengths", "1024", "--tokens_per_batch", "65536",
         "--steps", "10", "--warmup", "3", "--data_root", str(data_root), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        check.fail((proc.stderr.strip().splitlines() or ["no output"])[-1])
        return
    results = json.loads(out.read_text())
    check.numbers["results"] = results
    rows = []
    for case, paths in results.items():
        if "failed" in paths:
            check.fail(f"{case}: {paths['failed']}")
            return
        for path, numbers in paths.items():
            rate, peak = numbers.get("train_seq_per_s"), numbers.get("peak_mib")
            rows.append(f"{case} {path}: {rate:,.0f} seq/s, peak {peak or 0:,.0f} MiB" if rate else f"{case} {path}: {numbers}")
    check.detail += "; ".join(rows)


# --- 5. fbgemm's CUDA jagged ops -----------------------------------------------------------------


def check_fbgemm(check: Check, device: torch.device) -> None:
    if not jagged.fbgemm_available():
        check.status, check.detail = "skipped", "fbgemm-gpu does not import (the PyTorch path serves)"
        return
    generator = torch.Generator().manual_seed(0)
    lengths = torch.tensor([3, 0, 17, 1, 64, 9]).to(device)
    results = {}
    for backend in ("torch", "fbgemm"):
        values = (torch.randn(int(lengths.sum()), 8, generator=generator.manual_seed(1))).to(device).requires_grad_()
        offsets = jagged.complete_cumsum(lengths, backend=backend)
        padded = jagged.jagged_to_padded_dense(values, offsets, 70, backend=backend)
        back = jagged.dense_to_jagged(padded * 2.0, offsets, backend=backend)
        back.square().sum().backward()
        results[backend] = [offsets.float(), padded.detach(), back.detach(), values.grad]
    excess = _worst_excess(results["fbgemm"], results["torch"], 1e-6, 1e-6)
    check.numbers["max_excess_over_tolerance"] = excess
    check.detail = "complete_cumsum, jagged_to_padded_dense, dense_to_jagged and gradients: " + (
        "equal" if excess <= 0 else f"off by {excess:.2g}"
    )
    if excess > 0:
        check.fail(check.detail)


# --- 6. the same run on the GPU and the CPU ------------------------------------------------------


def _ml100k_run(data_root: Path, output_root: Path, on_gpu: bool) -> Dict[str, float]:
    env = dict(os.environ)
    if not on_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    bindings = [
        'train_fn.dataset_name = "ml100k"', "train_fn.num_epochs = 3", f'train_fn.data_root = "{data_root}"',
        f'train_fn.output_root = "{output_root}"', f'train_fn.run_name = "gpu-check-{"gpu" if on_gpu else "cpu"}"',
    ]
    proc = subprocess.run(
        [sys.executable, "main.py", "--gin_config_file=configs/ml100k/hstu-sampled-softmax-n128-final.gin",
         "--overwrite", *(f"--gin_bindings={b}" for b in bindings)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["no output"])[-1])
    results = json.loads((output_root / "ml100k" / f"gpu-check-{'gpu' if on_gpu else 'cpu'}-s42" / "results.json").read_text())
    return dict(results["best"]["test"], seconds=results["train_seconds"], device=results["device"])


def check_ml100k(check: Check, data_root: Path, out: Path) -> None:
    if not (data_root / "ml100k").is_dir():
        check.status, check.detail = "skipped", f"{data_root / 'ml100k'} not prepared"
        return
    gpu = _ml100k_run(data_root, out / "exps", on_gpu=True)
    cpu = _ml100k_run(data_root, out / "exps", on_gpu=False)
    check.numbers.update(gpu=gpu, cpu=cpu)
    gap = abs(gpu["hr@10"] - cpu["hr@10"])
    check.detail = (
        f"test HR@10 GPU {gpu['hr@10']:.4f} vs CPU {cpu['hr@10']:.4f} (|diff| {gap:.4f}, seed noise "
        f"{ML100K_HR10_NOISE}); NDCG@10 {gpu['ndcg@10']:.4f} vs {cpu['ndcg@10']:.4f}; "
        f"training {gpu['seconds']:.0f} s vs {cpu['seconds']:.0f} s"
    )
    if gap > 3 * ML100K_HR10_NOISE:
        check.fail(check.detail)


# --- the run -------------------------------------------------------------------------------------


def prepare(data_root: Path, shared_data: Path) -> None:
    """The shared datasets in the local format, prepared once (without text embeddings)."""
    for name in ("amzn14_office", "ml100k"):
        if (data_root / name).is_dir() or not (shared_data / name).is_dir():
            continue
        subprocess.run(
            [sys.executable, "preprocess_public_data.py", "--local_dir", str(shared_data / name),
             "--dataset_name", name, "--output_root", str(data_root), "--text_embedding_model", "none"],
            cwd=REPO, check=False, capture_output=True, timeout=600,
        )


def table(checks: List[Check], device_name: str) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"GPU check on {device_name}", f"{'check'.ljust(width)}  status   seconds  detail"]
    lines += [f"{c.name.ljust(width)}  {c.status:<7}  {c.numbers['seconds']:>7}  {c.detail}" for c in checks]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and the check runs")
    parser.add_argument("--data_root", default=str(REPO / "tmp"))
    parser.add_argument("--shared_data", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--skip", nargs="*", default=[], help="checks to leave out (names as in the table)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here (torch sees none); nothing to check")
        return 0
    device = torch.device("cuda", 0)
    out, data_root = Path(args.out), Path(args.data_root)
    out.mkdir(parents=True, exist_ok=True)
    prepare(data_root, Path(args.shared_data))
    plan: List[Tuple[str, Callable[[Check], None]]] = [
        ("tests", check_tests),
        ("attention", lambda c: check_attention(c, device)),
        ("probe", lambda c: check_probe(c, device)),
        ("train step", lambda c: check_train_step(c, data_root)),
        ("fbgemm", lambda c: check_fbgemm(c, device)),
        ("ml100k 3 epochs", lambda c: check_ml100k(c, data_root, out)),
    ]
    checks: List[Check] = []
    for name, body in plan:
        if name not in args.skip:
            _run_check(checks, name, body)
    name = f"{torch.cuda.get_device_name(device)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    report = table(checks, name)
    print("\n" + report)
    (out / "gpu_check.json").write_text(
        json.dumps({"device": name, "checks": [vars(c) for c in checks], "table": report}, indent=1, default=str)
    )
    return 0 if all(c.status != "FAIL" for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
