"""Before -> after on a CPU, per CPU-second: the exact fast paths against the computations they replace.

    python3 benchmarks/cpu_speed.py                       # every case, one thread
    python3 benchmarks/cpu_speed.py --cases train-paper --threads 2

Each case builds both paths on the same inputs and alternates them (A B B A
...), so that load from other work on the machine hits both alike; time is
this process's CPU time (user + system, all threads) and its wall time.

* ``train-paper``: HSTU training steps at the paper's scale (Amazon Office
  2023: 77.6K items, users' lengths a power law on 5..50 with mean 8, the
  paper's config: batch 128, 512 negatives). Before: the negatives gathered
  into ``[P, 512, 64]``, the id table looked up id by id, AdamW's for-loop,
  torch's dropout. After: ``negative_scoring="auto"`` (chunked here), the
  table read from the weight, AdamW ``foreach``, ``ops.dropout``'s CPU masks.
* ``train-office``: the same on amzn14_office (2,420 items, its config;
  ``auto`` scores the whole table before and after). Needs ``--shared_data``.
* ``eval-paper``: full-ranking evaluation of 128-user batches at the paper's
  scale (rank cap 2,500, a repeated target a miss). Before: the whole score
  matrix and ``metrics.target_ranks``; after: ``metrics.tiled_target_ranks``.
  Projected to one evaluation of all 223.3K users.
* ``retrieval-1m``: exact top-10 of 256 queries among 1M items (64-d). Before:
  whole score rows per chunk of queries; after: ``retrieval.exact_top_k``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import gin
import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

from preprocess_memory import power_law_lengths  # noqa: E402
from generative_recommenders.data.dataset import SequenceView, collate_sequences  # noqa: E402
from generative_recommenders.data.sequence_format import SequenceDataset  # noqa: E402
from generative_recommenders.evaluation.metrics import target_ranks, tiled_target_ranks  # noqa: E402
from generative_recommenders.evaluation.ranking import CPU_TILE_ITEMS, candidate_embeddings  # noqa: E402
from generative_recommenders.modeling.losses import resolve_negative_scoring, training_loss  # noqa: E402
from generative_recommenders.modeling.registry import build_model  # noqa: E402
from generative_recommenders.ops.dropout import Dropout  # noqa: E402
from generative_recommenders.retrieval import exact_top_k  # noqa: E402
from generative_recommenders.trainer import train  # noqa: E402
from generative_recommenders.trainer.assembly import model_inputs  # noqa: E402
from generative_recommenders.trainer.distributed import (  # noqa: E402
    DistributedContext,
    single_process_context,
    wrap_for_training,
)

ROOT = BENCHMARKS.parent
PAPER_CONFIG = "configs/amzn23_office/hstu-sampled-softmax-n512-final.gin"
OFFICE_CONFIG = "configs/amzn14_office/hstu-sampled-softmax-n512-final.gin"
PAPER_ITEMS, PAPER_USERS = 77_600, 223_300


def paper_scale_users(num_users: int, seed: int = 0) -> SequenceDataset:
    """Users of the paper's Office 2023 shape: 5..50 items (power law, mean 8), Zipf-like item popularity."""
    rng = np.random.default_rng(seed)
    lengths = power_law_lengths(rng, num_users, 8.0, 5, 50)
    popularity = 1.0 / np.arange(1, PAPER_ITEMS + 1) ** 0.8
    popularity /= popularity.sum()
    return SequenceDataset.from_item_sequences(
        "paper_scale", PAPER_ITEMS, [rng.choice(PAPER_ITEMS, n, p=popularity) for n in lengths]
    )


def office_users(shared_data: Path) -> SequenceDataset:
    import pandas as pd

    frame = pd.read_csv(shared_data / "amzn14_office" / "interactions.csv", dtype=str)
    items = {item: i for i, item in enumerate(frame["item_id"].unique())}
    frame["item"] = frame["item_id"].map(items)
    sequences = [group.to_numpy() for _, group in frame.groupby("user_id", sort=False)["item"]]
    return SequenceDataset.from_item_sequences("amzn14_office", len(items), sequences)


class Alternation:
    """CPU and wall seconds of each named path, timed in alternating order."""

    def __init__(self, names: List[str]) -> None:
        self.cpu = dict.fromkeys(names, 0.0)
        self.wall = dict.fromkeys(names, 0.0)
        self.count = dict.fromkeys(names, 0)

    def run(self, rounds: int, calls: Dict[str, Callable[[], int]]) -> None:
        for round_index in range(rounds):
            names = list(calls) if round_index % 2 == 0 else list(reversed(list(calls)))
            for name in names:
                cpu, wall = time.process_time(), time.perf_counter()
                self.count[name] += calls[name]()
                self.cpu[name] += time.process_time() - cpu
                self.wall[name] += time.perf_counter() - wall

    def per_cpu_second(self, name: str) -> float:
        return self.count[name] / self.cpu[name]

    def per_wall_second(self, name: str) -> float:
        return self.count[name] / self.wall[name]


def use_torch_dropout(model: torch.nn.Module) -> None:
    """``model``'s dropouts as torch's (``bernoulli_`` masks), as before ``ops.dropout``."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Dropout):
                setattr(parent, name, torch.nn.Dropout(child.p))


def _training(
    config: str, data: SequenceDataset, fast: bool, context: Optional[DistributedContext] = None
) -> Callable[[], int]:
    """One training step's closure (returns its sequences) for the before or after path, in one
    process or as one of ``context``'s (each process its own shuffle of the users)."""
    context = context or single_process_context()
    gin.clear_config()
    gin.parse_config_files_and_bindings([str(ROOT / config)], ['train_fn.dataset_name = "benchmark"'])
    settings = train.config_from_gin()
    torch.manual_seed(0)
    model = build_model(settings.main_module, model_inputs(settings, data.num_items, None))
    if not fast:  # the id table looked up id by id, as before
        ids = torch.arange(data.num_items + 1)
        model.item_embedding.all_embeddings = functools.partial(model.item_embeddings, ids)
        use_torch_dropout(model)
    positions = settings.local_batch_size * 8  # the scoring only changes with the step's size near a boundary
    auto = resolve_negative_scoring("auto", data.num_items, settings.num_negatives, positions)
    scoring = "auto" if fast else ("gathered" if auto == "chunked" else auto)
    loss = functools.partial(
        training_loss, sampling_strategy=settings.sampling_strategy, num_negatives=settings.num_negatives,
        temperature=settings.temperature, negative_scoring=scoring,
    )
    module = wrap_for_training(model, loss, context)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98), foreach=fast)
    view = SequenceView(data, settings.max_sequence_length, ignore_last_n=1)
    loader = torch.utils.data.DataLoader(
        view, batch_size=settings.local_batch_size, shuffle=True, collate_fn=collate_sequences,
        generator=torch.Generator().manual_seed(context.rank),
    )
    batches = itertools.cycle(loader)

    def step() -> int:
        batch = next(batches)
        train.train_step(module, batch, optimizer, None, context)
        return batch["target_ids"].numel()

    return step


def train_case(config: str, data: SequenceDataset, steps: int) -> Alternation:
    calls = {"before": _training(config, data, False), "after": _training(config, data, True)}
    for call in calls.values():  # warm-up
        call()
    timing = Alternation(list(calls))
    timing.run(steps, calls)
    return timing


def before_ranks(queries, candidates, targets, history, rank_cap, repeated_target):
    return target_ranks(queries @ candidates.T, targets, history, rank_cap, repeated_target)


def tiled_ranks(queries, candidates, targets, history, rank_cap, repeated_target):
    return tiled_target_ranks(queries, candidates, targets, history, rank_cap, repeated_target, CPU_TILE_ITEMS)


def eval_case(data: SequenceDataset, batches: int) -> Tuple[Alternation, int]:
    """Evaluation batches of 128 users with a freshly initialized paper-config model; checks equal ranks."""
    gin.clear_config()
    gin.parse_config_files_and_bindings([str(ROOT / PAPER_CONFIG)], ['train_fn.dataset_name = "benchmark"'])
    settings = train.config_from_gin()
    torch.manual_seed(0)
    model = build_model(settings.main_module, model_inputs(settings, data.num_items, None)).eval()
    loader = torch.utils.data.DataLoader(
        SequenceView(data, settings.max_sequence_length, ignore_last_n=0), batch_size=settings.eval_batch_size,
        collate_fn=collate_sequences,
    )
    chunks = list(itertools.islice(loader, batches))
    ranks: Dict[str, List[torch.Tensor]] = {"before": [], "after": []}

    def evaluation(rank_fn: Callable, name: str) -> Callable[[], int]:
        candidates = candidate_embeddings(model).detach()  # once per evaluation, as user_target_ranks does
        own_chunks = iter(chunks)  # each path ranks every batch once, in the same order

        @torch.no_grad()
        def one_batch() -> int:
            batch = next(own_chunks)
            queries = model.query_embeddings(batch["history_ids"], batch["history_lengths"], batch["history_timestamps"])
            ranks[name].append(rank_fn(queries, candidates, batch["target_ids"], batch["history_ids"], 2500, "miss"))
            return batch["target_ids"].numel()

        return one_batch

    calls = {"before": evaluation(before_ranks, "before"), "after": evaluation(tiled_ranks, "after")}
    timing = Alternation(list(calls))
    timing.run(len(chunks), calls)
    differing = int((torch.cat(ranks["before"]) != torch.cat(ranks["after"])).sum())
    return timing, differing


def before_top_k(queries, candidates, k, max_scores=1 << 24):
    """Whole score rows per chunk of queries (the exact top-k before tiling)."""
    chunk = max(1, max_scores // candidates.size(0))
    best = [(queries[b:b + chunk] @ candidates.T).topk(k, dim=1) for b in range(0, queries.size(0), chunk)]
    return torch.cat([v for v, _ in best]), torch.cat([i for _, i in best])


def retrieval_case(items: int, queries: int, rounds: int) -> Tuple[Alternation, int]:
    generator = torch.Generator().manual_seed(0)
    candidates = torch.nn.functional.normalize(torch.randn(items, 64, generator=generator), dim=-1)
    query_batch = torch.nn.functional.normalize(torch.randn(queries, 64, generator=generator), dim=-1)
    found: Dict[str, torch.Tensor] = {}

    def search(fn: Callable, name: str) -> Callable[[], int]:
        def call() -> int:
            found[name] = fn(query_batch, candidates, 10)[1]
            return queries

        return call

    calls = {"before": search(before_top_k, "before"), "after": search(exact_top_k, "after")}
    timing = Alternation(list(calls))
    timing.run(rounds, calls)
    return timing, int((found["before"] != found["after"]).sum())


def _row(case: str, unit: str, timing: Alternation, note: str = "") -> str:
    before, after = timing.per_cpu_second("before"), timing.per_cpu_second("after")
    wall_before, wall_after = timing.per_wall_second("before"), timing.per_wall_second("after")
    return (
        f"| {case} | {unit} | {before:,.0f} | {after:,.0f} | {after / before:.2f}x "
        f"| {wall_before:,.0f} | {wall_after:,.0f} | {note} |"
    )


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=["train-paper", "train-office", "eval-paper", "retrieval-1m"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20, help="training steps per path")
    parser.add_argument("--eval_batches", type=int, default=20, help="evaluation batches of 128 users per path")
    parser.add_argument("--shared_data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} cores, load average {load:.1f} at start\n")
    print("| case | unit | before per CPU-s | after per CPU-s | speed-up | before per wall-s | after per wall-s | note |")
    print("|---|---|---|---|---|---|---|---|")
    paper = paper_scale_users(max(args.steps, args.eval_batches) * 128 * 2) if any("paper" in c for c in args.cases) else None
    for case in args.cases:
        if case == "train-paper":
            print(_row(case, "sequences", train_case(PAPER_CONFIG, paper, args.steps)), flush=True)
        elif case == "train-office":
            if not (args.shared_data / "amzn14_office").is_dir():
                print(f"| {case} | skipped: no {args.shared_data / 'amzn14_office'} |||||||", flush=True)
                continue
            print(_row(case, "sequences", train_case(OFFICE_CONFIG, office_users(args.shared_data), args.steps)), flush=True)
        elif case == "eval-paper":
            timing, differing = eval_case(paper, args.eval_batches)
            full = {name: PAPER_USERS / timing.per_cpu_second(name) for name in ("before", "after")}
            note = f"{differing} ranks differ; all {PAPER_USERS:,} users: {full['before']:.0f} -> {full['after']:.0f} CPU-s"
            print(_row(case, "users", timing, note), flush=True)
        elif case == "retrieval-1m":
            timing, differing = retrieval_case(1_000_000, 256, 4)
            print(_row(case, "queries", timing, f"{differing} ids differ"), flush=True)
        else:
            raise SystemExit(f"unknown case {case!r}")
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
