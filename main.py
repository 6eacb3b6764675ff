"""Train and evaluate a sequential recommender from a gin config.

    python3 main.py --gin_config_file=configs/ml-100k/hstu-sampled-softmax-n128-final.gin --master_port=12345
    python3 main.py --gin_config_file=... --seeds=1,2,3        # one run per seed, then their table
    python3 main.py --gin_config_file=... --seeds=1,2,3 --resume   # continue killed runs
    python3 main.py --gin_config_file=... --nproc=2                # 2 CPU processes (gloo)
    torchrun --nproc_per_node=8 main.py --gin_config_file=...      # torchrun's processes

Runs one process per visible GPU (data-parallel, NCCL), else one CPU process.
Metrics go to stdout, TensorBoard and
``exps/<dataset>/<config name>-s<seed>/results.json``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import gin
import torch.multiprocessing as mp
from absl import app, flags

from generative_recommenders.trainer.distributed import DistributedContext, launch
from generative_recommenders.trainer.train import train_fn

FLAGS = flags.DEFINE_string("gin_config_file", None, "Path to the gin config file.")
flags.DEFINE_integer("master_port", 12355, "Port of the process group (multi-process runs).")
flags.DEFINE_integer("nproc", None, "Processes on this machine (default: one per visible GPU, else 1 CPU process).")
flags.DEFINE_enum("backend", None, ["nccl", "gloo"], "Process group backend (default: nccl with GPUs, else gloo).")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings, e.g. 'train_fn.num_epochs = 3'.")
flags.DEFINE_list("seeds", None, "Seeds to run the config with, one run each, e.g. 1,2,3 (overrides train_fn.random_seed).")
flags.DEFINE_bool("resume", False, "Continue each run from its checkpoint (the gin config must be unchanged).")


def _parse_gin(config_file: str, bindings: List[str]) -> None:
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([config_file], bindings)
    except (ValueError, SyntaxError) as e:
        sys.exit(f"main.py: invalid gin config {config_file}: {e}")


def _bound(name: str) -> Optional[str]:
    try:
        return gin.query_parameter(name)
    except ValueError:  # not bound: train_fn's default
        return None


def _seeds(values: Optional[List[str]]) -> List[Optional[int]]:
    if values is None:
        return [None]  # the config's train_fn.random_seed
    try:
        return [int(v) for v in values]
    except ValueError:
        sys.exit(f"main.py: --seeds must be comma-separated integers, got {','.join(values)!r}")


def _run_seeds(
    context: DistributedContext, config_file: str, bindings: List[str], seeds: List[Optional[int]], resume: bool
) -> None:
    """One run per seed in this process (one of the run's processes when there are several)."""
    if not context.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    run_dirs = []
    for seed in seeds:
        # Bound, not passed, so that each run's recorded config names its seed.
        _parse_gin(config_file, bindings + ([] if seed is None else [f"train_fn.random_seed = {seed}"]))
        results = train_fn(resume=resume, context=context)
        run_dirs.append(Path(results["run_dir"]))
    if len(run_dirs) > 1 and context.is_main:
        # Imported here: matplotlib's import is slow and single runs do not need it.
        from generative_recommenders.compare import build_tables, format_text, load_runs

        print("\n" + format_text(build_tables(load_runs(run_dirs))), flush=True)


def main(argv: list) -> None:
    del argv
    config_file = flags.FLAGS.gin_config_file
    if config_file is None:
        sys.exit("main.py: --gin_config_file is required")
    if not Path(config_file).is_file():
        sys.exit(f"main.py: gin config file {config_file} not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    bindings = list(flags.FLAGS.gin_bindings)
    seeds = _seeds(flags.FLAGS.seeds)
    _parse_gin(config_file, bindings)
    if _bound("train_fn.run_name") is None:  # runs are named after their config unless the config names them
        protocol = _bound("train_fn.eval_protocol") or "validated"
        # The protocol is part of the name, so that runs of the two protocols never share a folder.
        suffix = "" if protocol == "validated" else f"-{protocol}"
        bindings.append(f'train_fn.run_name = "{Path(config_file).stem}{suffix}"')
    try:
        launch(
            _run_seeds, config_file, bindings, seeds, flags.FLAGS.resume,
            nproc=flags.FLAGS.nproc, backend=flags.FLAGS.backend, master_port=flags.FLAGS.master_port,
        )
    except ValueError as e:  # bad data, an unsupported setting or a process setup: say so, no traceback
        sys.exit(f"main.py: {e}")
    except mp.ProcessRaisedException as e:  # a spawned process failed: its traceback, once
        sys.exit(f"main.py: a training process failed:\n{e}")


if __name__ == "__main__":
    app.run(main)
