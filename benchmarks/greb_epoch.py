"""Time per training epoch of gin configs on one prepared dataset, A/B interleaved (e.g. GRE-B's per-position
samples against one window per user).

    python3 benchmarks/greb_epoch.py --data_root tmp --dataset ml100k \\
        --configs old-sasrec.gin configs/greb/sasrec.gin [--repeats 2] [--threads 1]

Each config is built as the trainer builds it (``train.build``: data views, loader,
model, optimizer) once; then, ``--repeats`` times, one full training epoch of each
config in turn, so that load from other work on the machine hits every config alike.
Per config: the training samples and steps of an epoch, and the median CPU seconds
(``time.process_time``, every thread of this process) and wall seconds per epoch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List

import gin
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generative_recommenders.trainer.config import parse_gin  # noqa: E402
from generative_recommenders.trainer.distributed import single_process_context  # noqa: E402
from generative_recommenders.trainer.train import TrainingRun, build, config_from_gin, train_step  # noqa: E402


def build_run(config_file: str, data_root: str, dataset: str) -> TrainingRun:
    bindings = [f'train_fn.data_root = "{data_root}"', f'train_fn.dataset_name = "{dataset}"']
    parse_gin([config_file], bindings)
    config = config_from_gin()
    return build(config, single_process_context(), gin.config_str())


def train_one_epoch(run: TrainingRun, epoch: int) -> Dict[str, float]:
    """One full epoch of ``run``; its CPU and wall seconds."""
    run.model.train()
    run.train_sampler.set_position(epoch, 0)
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in run.train_loader:
        train_step(run.train_module, batch, run.optimizer, run.scheduler, run.context, False,
                   run.config.grad_clip_norm)
    return {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="tmp")
    parser.add_argument("--dataset", default="ml100k")
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = {name: build_run(name, args.data_root, args.dataset) for name in args.configs}
    times: Dict[str, List[Dict[str, float]]] = {name: [] for name in runs}
    for epoch in range(args.repeats):
        for name, run in runs.items():
            times[name].append(train_one_epoch(run, epoch))
    print(f"{args.dataset}, {args.threads} thread(s), median of {args.repeats} epochs")
    print(f"{'config':<40} {'model':<40} {'samples':>8} {'steps':>6} {'CPU s/epoch':>12} {'wall s/epoch':>13}")
    for name, run in runs.items():
        cpu = statistics.median(t["cpu"] for t in times[name])
        wall = statistics.median(t["wall"] for t in times[name])
        print(f"{name:<40} {run.model.description():<40} {len(run.views.train):>8} {run.batches_per_epoch:>6} "
              f"{cpu:>12.2f} {wall:>13.2f}")


if __name__ == "__main__":
    main()
