"""HSTU attention alone, forward + backward, per backend and sequence length.

    python3 benchmarks/attention.py                                  # CPU: padded vs torch
    python3 benchmarks/attention.py --lengths 200 512 1024 2048 4096 --tokens_per_batch 262144   # GPU

The Amazon config's attention (4 heads, dqk = dv = 16, relative bias), one
layer, ``--tokens_per_batch // L`` sequences per batch with lengths uniform in
``1..L`` and ``N = L + 11``. Backends take turns step by step in one process;
the speed-up is against ``padded``, the reference. Peak memory (CUDA only) is
measured per backend in a step of its own; ``out of memory`` is a result.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generative_recommenders.ops import hstu_attention, jagged  # noqa: E402
from generative_recommenders.ops.sequences import NUM_TIME_BUCKETS, JaggedSequences  # noqa: E402

HEADS, DIM = 4, 16


def make_inputs(length: int, tokens_per_batch: int, device: torch.device, seed: int = 0) -> Dict:
    generator = torch.Generator().manual_seed(seed)
    batch = max(1, tokens_per_batch // length)
    lengths = torch.randint(1, length + 1, (batch,), generator=generator)
    total = int(lengths.sum())
    times = torch.cumsum(torch.randint(0, 86_400, (total,), generator=generator), 0)
    sequences = JaggedSequences(
        jagged.complete_cumsum(lengths).to(device), length, times.to(device), (times + 3600).to(device)
    )
    num_positions = length + 11
    leaves = [torch.randn(total, HEADS, DIM, generator=generator) for _ in range(3)]
    leaves += [torch.randn(2 * num_positions - 1) * 0.02, torch.randn(NUM_TIME_BUCKETS + 1) * 0.02]
    return {
        "leaves": [t.to(device).requires_grad_() for t in leaves],
        "sequences": sequences,
        "num_positions": num_positions,
    }


def step_fn(backend: str, inputs: Dict, autocast: bool) -> Callable[[], None]:
    q, k, v, pw, tw = inputs["leaves"]
    device = q.device

    def step() -> None:
        inputs["sequences"].cache.clear()  # each step is a new batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            out = hstu_attention.hstu_attention(
                q, k, v, inputs["sequences"], inputs["num_positions"], pw, tw, backend=backend
            )
        out.float().sum().backward()

    return step


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "not enough memory" in str(error)


def measure(length: int, backends: List[str], args: argparse.Namespace, device: torch.device) -> Dict:
    inputs = make_inputs(length, args.tokens_per_batch, device)
    steps = {name: step_fn(name.removesuffix("-bf16"), inputs, name.endswith("-bf16")) for name in backends}
    peaks: Dict[str, Optional[float]] = {}
    alive = []
    for name, step in steps.items():
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            for _ in range(args.warmup):
                step()
            _synchronize(device)
        except RuntimeError as error:
            if not _is_out_of_memory(error):
                raise
            peaks[name] = None
            continue
        peaks[name] = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
        alive.append(name)
    seconds = {name: 0.0 for name in alive}
    for i in range(args.steps):
        for name in alive if i % 2 == 0 else reversed(alive):
            _synchronize(device)
            start = time.perf_counter()
            steps[name]()
            _synchronize(device)
            seconds[name] += time.perf_counter() - start
    return {"seconds": {name: s / args.steps for name, s in seconds.items()}, "peaks": peaks}


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="*", type=int, default=[50, 200, 512, 1024])
    parser.add_argument("--tokens_per_batch", type=int, default=8192)
    parser.add_argument("--backends", nargs="*", default=None,
                        help="default: padded torch (+ triton triton-bf16 on CUDA)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backends = args.backends or (
        ["padded", "torch", "triton", "triton-bf16"] if device.type == "cuda" else ["padded", "torch"]
    )
    name = f"CUDA ({torch.cuda.get_device_name()})" if device.type == "cuda" else "CPU"
    print(f"{name}, torch {torch.__version__}, {args.threads} threads, {args.tokens_per_batch} tokens per batch, "
          f"{HEADS} heads x {DIM}, forward + backward\n")
    print("| length | backend | ms per step | vs padded | peak MiB |")
    print("|---|---|---|---|---|")
    for length in args.lengths:
        result = measure(length, backends, args, device)
        reference = result["seconds"].get("padded")
        for backend in backends:
            peak = result["peaks"].get(backend)
            peak_text = "-" if peak is None else f"{peak:,.0f}"
            if backend not in result["seconds"]:
                print(f"| {length} | {backend} | out of memory | - | - |", flush=True)
                continue
            seconds = result["seconds"][backend]
            ratio = f"{reference / seconds:.2f}x" if reference else "-"
            print(f"| {length} | {backend} | {seconds * 1e3:,.1f} | {ratio} | {peak_text} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
