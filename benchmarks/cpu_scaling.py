"""Threads against processes for CPU training: sequences per wall-second and per CPU-second.

    python3 benchmarks/cpu_scaling.py                     # 1, 2, ... up to the available cores
    python3 benchmarks/cpu_scaling.py --workers 1 2 4 --steps 10

HSTU training steps at the paper's scale (``cpu_speed.py``'s ``train-paper``
after path: Amazon Office 2023's shape, batch 128, 512 negatives), each
setting in fresh child processes:

* ``threads``: one process with N torch threads, OpenMP's default wait policy
  (idle threads spin ``GOMP_SPINCOUNT`` 300,000 times before they sleep);
* ``threads, passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (idle
  threads sleep at once);
* ``threads, spin 10000``: the same with ``GOMP_SPINCOUNT=10000`` (what
  importing the package sets unless either variable is set);
* ``processes``: N processes of one thread each, data-parallel (DDP over
  gloo, as ``main.py --nproc=N``), a batch of 128 each.

CPU time is the processes' own (``time.process_time`` over the timed steps,
every thread, summed over processes). On a machine that others also load,
per-CPU-second figures stay comparable; per-wall-second ones do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
import torch.distributed as dist

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

import cpu_speed  # noqa: E402
from generative_recommenders.trainer.distributed import DistributedContext, available_cores  # noqa: E402

SETTINGS = ("threads", "threads, passive", "threads, spin 10000", "processes")
WAIT_ENVIRONMENT = {"threads, passive": {"OMP_WAIT_POLICY": "PASSIVE"}, "threads, spin 10000": {"GOMP_SPINCOUNT": "10000"}}


def timed_steps(context: DistributedContext, steps: int, warmup: int) -> Dict[str, float]:
    data = cpu_speed.paper_scale_users(128 * (steps + warmup + 2) * context.world_size)
    step = cpu_speed._training(cpu_speed.PAPER_CONFIG, data, True, context)
    for _ in range(warmup):
        step()
    if context.is_distributed:
        dist.barrier()
    cpu, wall = time.process_time(), time.perf_counter()
    sequences = sum(step() for _ in range(steps))
    totals = torch.tensor([sequences, time.process_time() - cpu, time.perf_counter() - wall], dtype=torch.float64)
    if context.is_distributed:
        dist.all_reduce(totals)  # sequences and CPU seconds summed; wall seconds summed too, averaged below
    return {"sequences": totals[0].item(), "cpu_s": totals[1].item(), "wall_s": totals[2].item() / context.world_size}


def child(args: argparse.Namespace) -> None:
    (workers,) = args.workers
    if args.setting == "processes":
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.port}", rank=args.rank, world_size=workers)
        context = DistributedContext(args.rank, workers, args.rank, torch.device("cpu"), "gloo")
    else:
        torch.set_num_threads(workers)
        context = cpu_speed.single_process_context()
    result = timed_steps(context, args.steps, args.warmup)
    if context.is_distributed:
        dist.destroy_process_group()
    if context.is_main:
        print(json.dumps(result))


def run_setting(setting: str, workers: int, args: argparse.Namespace) -> Dict[str, float]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    env.pop("GOMP_SPINCOUNT", None)
    env.update(WAIT_ENVIRONMENT.get(setting, {}))
    ranks = range(workers) if setting == "processes" else range(1)
    command = [
        sys.executable, __file__, "--child", "--setting", setting, "--workers", str(workers),
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--port", str(args.port),
    ]
    children = [
        subprocess.Popen([*command, "--rank", str(rank)], env=env, stdout=subprocess.PIPE, text=True) for rank in ranks
    ]
    outputs = [c.communicate()[0] for c in children]
    if any(c.returncode for c in children):
        raise RuntimeError(f"{setting} x {workers} failed")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", nargs="*", type=int, default=list(range(1, available_cores() + 1)))
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--port", type=int, default=29533)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return
    print(f"torch {torch.__version__}, {available_cores()} cores available, load average {os.getloadavg()[0]:.1f}\n")
    print("| setting | workers | sequences per wall-s | sequences per CPU-s |")
    print("|---|---|---|---|")
    for workers in args.workers:
        for setting in args.settings:
            if setting in WAIT_ENVIRONMENT and workers == 1:
                continue  # one thread never waits for another
            r = run_setting(setting, workers, args)
            print(f"| {setting} | {workers} | {r['sequences'] / r['wall_s']:,.0f} | {r['sequences'] / r['cpu_s']:,.0f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main(sys.argv[1:])
