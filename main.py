"""Train and evaluate a sequential recommender from a gin config.

    python3 main.py --gin_config_file=configs/ml-100k/hstu-sampled-softmax-n128-final.gin --master_port=12345

Runs on one GPU when there is one, else on the CPU. Metrics go to stdout,
TensorBoard and ``exps/<dataset>/<config name>-s<seed>/results.json``.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import gin
from absl import app, flags

from generative_recommenders.trainer.train import train_fn

FLAGS = flags.DEFINE_string("gin_config_file", None, "Path to the gin config file.")
flags.DEFINE_integer("master_port", 12355, "Port of the process group (multi-process runs).")
flags.DEFINE_multi_string("gin_bindings", [], "Extra gin bindings, e.g. 'train_fn.num_epochs = 3'.")


def main(argv: list) -> None:
    del argv
    config_file = flags.FLAGS.gin_config_file
    if config_file is None:
        sys.exit("main.py: --gin_config_file is required")
    if not Path(config_file).is_file():
        sys.exit(f"main.py: gin config file {config_file} not found")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    os.environ.setdefault("MASTER_ADDR", "localhost")
    os.environ.setdefault("MASTER_PORT", str(flags.FLAGS.master_port))
    try:
        gin.parse_config_files_and_bindings([config_file], flags.FLAGS.gin_bindings)
    except (ValueError, SyntaxError) as e:
        sys.exit(f"main.py: invalid gin config {config_file}: {e}")
    try:
        gin.query_parameter("train_fn.run_name")
        overrides = {}
    except ValueError:  # runs are named after their config unless the config names them
        overrides = {"run_name": Path(config_file).stem}
    try:
        train_fn(**overrides)
    except ValueError as e:  # bad data or an unsupported setting: say so, no traceback
        sys.exit(f"main.py: {e}")


if __name__ == "__main__":
    app.run(main)
