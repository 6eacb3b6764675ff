"""Train and evaluate a sequential recommender from a gin config (``gr-train``, or ``python3 main.py``).

    python3 main.py --gin_config_file=configs/ml100k/hstu-sampled-softmax-n128-final.gin --master_port=12345
    gr-train --gin_config_file=ml100k/hstu-sampled-softmax-n128-final --data_root=tmp --output_root=exps
    python3 main.py --gin_config_file=... --seeds=1,2,3        # one run per seed, then their table
    python3 main.py --gin_config_file=... --seeds=1,2,3 --resume   # continue killed runs
    python3 main.py --gin_config_file=... --nproc=2                # 2 CPU processes (gloo)
    torchrun --nproc_per_node=8 main.py --gin_config_file=...      # torchrun's processes

Runs one process per visible GPU (data-parallel, NCCL, started by torch's
elastic launcher), else one CPU process. Metrics go to stdout, TensorBoard
and ``exps/<dataset>/<config name>-s<seed>/results.json``. A config is a path or the name
of a shipped config (``config_files.py``). A mistake in the
config, the data or the setup is one line on stderr (``--debug`` adds the
traceback).
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from pathlib import Path
from typing import List, Optional

import gin
from absl import app, flags

from generative_recommenders.config_files import resolve_config
from generative_recommenders.errors import UserError, exit_with_error
from generative_recommenders.logs import configure_logging
from generative_recommenders.trainer.config import bound_parameter, parse_gin
from generative_recommenders.trainer.distributed import DistributedContext, launch
from generative_recommenders.trainer.run_folder import config_differences
from generative_recommenders.trainer.train import train_config_file

flags.DEFINE_string("gin_config_file", None, "The gin config: a path, or a shipped config's name "
                    "(e.g. amzn23_game/hstu-sampled-softmax-n512-blair).")
flags.DEFINE_string("data_root", None, "Folder of the prepared datasets (train_fn.data_root; default: the config's, tmp).")
flags.DEFINE_string("output_root", None, "Folder the runs go to (train_fn.output_root; default: the config's, exps).")
flags.DEFINE_integer("master_port", 12355, "Port of the process group (multi-process runs).")
flags.DEFINE_integer("nproc", None, "Processes on this machine (default: one per visible GPU, else 1 CPU process).")
flags.DEFINE_enum("backend", None, ["nccl", "gloo"], "Process group backend (default: nccl with GPUs, else gloo).")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings, e.g. 'train_fn.num_epochs = 3'.")
flags.DEFINE_list("seeds", None, "Seeds to run the config with, one run each, e.g. 1,2,3 (overrides train_fn.random_seed).")
flags.DEFINE_bool("resume", False, "Continue each run from its checkpoint (the gin config must be unchanged, "
                  "but for a larger train_fn.num_epochs).")
flags.DEFINE_bool("overwrite", False, "Replace what each run's folder holds (a finished run is never replaced otherwise).")
flags.DEFINE_bool("debug", False, "Show the traceback of an error, not only its one-line message.")
# --help lists the key flags of the program that runs (main.py, gr-train): these, defined here.
for _flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], _flag)


def _seeds(values: Optional[List[str]]) -> List[Optional[int]]:
    if values is None:
        return [None]  # the config's train_fn.random_seed
    try:
        return [int(v) for v in values]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {','.join(values)!r}") from None


def run_seeds(
    context: DistributedContext,
    config_file: str,
    bindings: List[str],
    seeds: List[Optional[int]],
    resume: bool,
    overwrite: bool,
) -> None:
    """One run per seed in this process (one of the run's processes when there are several),
    then, with several seeds, their comparison table."""
    if not context.is_main:
        configure_logging(level=30)  # WARNING: rank 0 alone reports
    run_dirs = []
    for seed in seeds:
        # Bound, not passed, so that each run's recorded config names its seed.
        seed_binding = [] if seed is None else [f"train_fn.random_seed = {seed}"]
        results = train_config_file(config_file, bindings + seed_binding, resume, overwrite, context)
        run_dirs.append(results["run_dir"])
    if len(run_dirs) > 1 and context.is_main:
        # Imported here: matplotlib's import is slow and single runs do not need it.
        from generative_recommenders.reports import compare

        compare.main([*run_dirs])


def _main(argv: List[str]) -> None:
    del argv
    config_file = flags.FLAGS.gin_config_file
    if config_file is None:
        raise UserError("--gin_config_file is required, e.g. --gin_config_file=configs/ml100k/hstu-sampled-softmax-n128-final.gin")
    config_file = str(resolve_config(config_file))
    configure_logging()
    bindings = list(flags.FLAGS.gin_bindings) + root_bindings(flags.FLAGS.data_root, flags.FLAGS.output_root)
    seeds = _seeds(flags.FLAGS.seeds)
    parse_gin([config_file], bindings)
    if bound_parameter("train_fn.run_name") is None:  # runs are named after their config unless the config names them
        bindings.append(f'train_fn.run_name = "{run_name(config_file, bindings)}"')
    launch(
        run_seeds, config_file, bindings, seeds, flags.FLAGS.resume, flags.FLAGS.overwrite,
        nproc=flags.FLAGS.nproc, backend=flags.FLAGS.backend, master_port=flags.FLAGS.master_port,
    )


def root_bindings(data_root: Optional[str], output_root: Optional[str]) -> List[str]:
    """The gin bindings of the --data_root and --output_root flags (the folders' absolute paths)."""
    roots = (("data_root", data_root), ("output_root", output_root))
    return [f'train_fn.{name} = "{Path(folder).resolve()}"' for name, folder in roots if folder is not None]


# Bindings that say where a run reads and writes, or its seed (the folder's -s<seed>), not what it is;
# and num_epochs, so that --resume with more epochs finds the run it extends.
_PLACE_AND_SEED = re.compile(r"^train_fn\.(random_seed|dataset_name|data_root|output_root|num_epochs) = ")


def run_name(config_file: str, bindings: List[str]) -> str:
    """The config file's name; ``-reference`` under that protocol (the two never share a folder);
    and ``-<hash>`` of the settings the bindings change from the file, so that a changed run
    never lands in the folder of the file's own (``num_epochs`` aside: a folder holding a run of
    other epochs is refused, or with ``--resume`` extended)."""
    parse_gin([config_file], [])
    from_file = gin.config_str()
    parse_gin([config_file], bindings)
    protocol = bound_parameter("train_fn.eval_protocol", "validated")
    changes = [line[1:] for line in config_differences(from_file, gin.config_str()) if line.startswith("+")]
    changes = [line for line in changes if not _PLACE_AND_SEED.match(line)]
    name = Path(config_file).stem + ("" if protocol == "validated" else f"-{protocol}")
    if changes:
        name += "-" + hashlib.sha1("\n".join(sorted(changes)).encode()).hexdigest()[:7]
    return name


def main(argv: List[str], program: str = "main.py") -> None:
    try:
        _main(argv)
    except (UserError, OSError, RuntimeError) as error:
        # A user's mistake, a file that cannot be written, or a failed training process: one line.
        exit_with_error(program, error, flags.FLAGS.debug)


def console_main() -> None:
    """The ``gr-train`` command."""
    app.run(functools.partial(main, program="gr-train"))


if __name__ == "__main__":
    console_main()
