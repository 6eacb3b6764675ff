"""Training and evaluation throughput, and peak memory, per config.

    python3 benchmarks/train_throughput.py                 # the default configs
    python3 benchmarks/train_throughput.py --steps 30 configs/amzn14_office/hstu-sampled-softmax-n512-final.gin

Each config runs in its own process (so that peak memory is its own): a few
warm-up steps, then ``--steps`` timed training steps (sequences/s), then one
full-ranking evaluation of every user's last item (users/s). Peak memory is the
process's maximum RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU. The
datasets must be prepared first (see the README).
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import gin
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generative_recommenders.data.dataset import SequenceView  # noqa: E402
from generative_recommenders.data.sequence_format import load_sequence_dataset  # noqa: E402
from generative_recommenders.evaluation.ranking import evaluate_ranking  # noqa: E402
from generative_recommenders.text.embedding_store import load_dataset_text_embeddings  # noqa: E402
from generative_recommenders.modeling.losses import training_loss  # noqa: E402
from generative_recommenders.trainer import train  # noqa: E402

DEFAULT_CONFIGS = [
    "configs/amzn14_office/sasrec-sampled-softmax-n512-final.gin",
    "configs/amzn14_office/hstu-sampled-softmax-n512-final.gin",
    "configs/amzn14_office/hstu-sampled-softmax-n512-minilm.gin",
    "configs/ml-100k/sasrec-sampled-softmax-n128-final.gin",
    "configs/ml-100k/hstu-sampled-softmax-n128-final.gin",
]


def _param(name: str, default):
    try:
        return gin.query_parameter(f"train_fn.{name}")
    except ValueError:  # not bound in the config: train_fn's default
        return default


def measure(config: str, steps: int, warmup: int, data_root: str) -> Dict:
    gin.parse_config_files_and_bindings([config], [])
    train.seed_everything(42)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data_dir = Path(data_root) / _param("dataset_name", None)
    data = load_sequence_dataset(data_dir)
    text_model = _param("text_embedding_model", None)
    text = load_dataset_text_embeddings(data_dir, text_model, data.num_items) if text_model else None
    max_len = _param("max_sequence_length", 200)
    model = train.build_model(
        _param("main_module", "HSTU"), data.num_items, _param("item_embedding_dim", 64),
        max_len + _param("gr_output_length", 10) + 1, _param("dropout_rate", 0.2),
        _param("user_embedding_norm", "l2_norm"), 1e-6, text,
    ).to(device)
    num_negatives, temperature = _param("num_negatives", 128), _param("temperature", 0.05)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    loader = torch.utils.data.DataLoader(
        SequenceView(data, max_len, ignore_last_n=1),
        batch_size=_param("local_batch_size", 128), shuffle=True, collate_fn=train.collate_sequences,
    )
    batches = itertools.cycle(loader)

    def step() -> int:
        batch = next(batches)
        optimizer.zero_grad(set_to_none=True)
        training_loss(model, batch, device, "local", num_negatives, temperature, True).backward()
        optimizer.step()
        return batch["target_ids"].numel()

    model.train()
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, sequences = time.perf_counter(), 0
    for _ in range(steps):
        sequences += step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - start

    test_loader = torch.utils.data.DataLoader(
        SequenceView(data, max_len, ignore_last_n=0),
        batch_size=_param("eval_batch_size", 128), collate_fn=train.collate_sequences,
    )
    start = time.perf_counter()
    users = evaluate_ranking(model, test_loader, device).count
    eval_seconds = time.perf_counter() - start
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    steps_per_epoch = len(loader)
    return {
        "config": config,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "train_seq_per_s": sequences / train_seconds,
        "epoch_seconds": train_seconds / steps * steps_per_epoch,
        "eval_users_per_s": users / eval_seconds,
        "peak_memory_mib": peak,
    }


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--data_root", default="tmp")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.configs[0], args.steps, args.warmup, args.data_root)))
        return
    print("| config | device | train seq/s | s/epoch | eval users/s | peak MiB |")
    print("|---|---|---|---|---|---|")
    for config in args.configs:
        cmd = [sys.executable, __file__, "--one", config, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--data_root", args.data_root]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {config} | failed: {out.stderr.strip().splitlines()[-1]} |||||")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {r['config']} | {r['device']} ({r['threads']} threads) | {r['train_seq_per_s']:.0f} | "
            f"{r['epoch_seconds']:.1f} | {r['eval_users_per_s']:.0f} | {r['peak_memory_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
