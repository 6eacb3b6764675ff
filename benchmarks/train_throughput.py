"""Training and evaluation speed and peak memory: each optimized path against the padded reference.

    python3 benchmarks/train_throughput.py                   # CPU: shared datasets + synthetic lengths
    python3 benchmarks/train_throughput.py --cases synthetic --lengths 200 512 1024 2048 4096 \\
        --tokens_per_batch 65536                             # GPU: the attention at long lengths
    python3 benchmarks/train_throughput.py --cases amzn14_office-hstu --paths reference optimized bucketed

Paths (``--paths``):

* ``reference``: the reference's computation: batches padded to the model's
  full length ``N`` (history + target + output slots), the ``padded``
  attention backend (the bias rebuilt in every layer), and every sampled
  negative embedded on its own (``negative_scoring="per_sample"``: with
  text, each negative's text projected separately);
* ``optimized``: batches padded to their longest sequence, the default
  attention backend (length groups on CPU, the Triton kernel on CUDA) and the
  default negative scoring (each item embedded and normalized once per step);
* ``bucketed``: ``optimized`` with length-bucketed batches;
* ``compiled``: ``optimized`` with ``torch.compile(encoder, dynamic=True)``;
* ``bf16``: ``optimized`` under ``torch.autocast(bfloat16)`` (CUDA).

``data %`` is the share of the training time spent loading and collating
batches in the training process (the data loader has no workers here).

Cases (``--cases``, default all): ``<dataset>-<model>`` for the shared
datasets amzn14_office and ml100k (prepared under ``--data_root``, see the
README) with models ``sasrec``, ``hstu`` and ``hstu-text`` (MiniLM, ``add``),
and ``synthetic`` at ``--lengths``: HSTU with the Amazon config (4 blocks x 4
heads, d 64), history lengths uniform in ``1..L``, ``--tokens_per_batch // L``
sequences per batch, 2,048 items, 128 negatives.

Each case runs in child processes. One times every path in the same
process, steps interleaved (so load from other work on the machine hits all
paths alike), after ``--warmup`` steps: training sequences/s, then one full
ranking of every user's last item (users/s). Then each path runs alone in a
fresh process for its peak memory (RSS on CPU, ``max_memory_allocated`` on
CUDA). Ratios are against ``reference`` in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import gin
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generative_recommenders.data.batching import LengthBucketedBatchSampler, history_lengths  # noqa: E402
from generative_recommenders.data.dataset import SequenceView, collate_sequences  # noqa: E402
from generative_recommenders.data.sequence_format import SequenceDataset, load_sequence_dataset  # noqa: E402
from generative_recommenders.evaluation.ranking import evaluate_ranking  # noqa: E402
from generative_recommenders.modeling.losses import training_loss  # noqa: E402
from generative_recommenders.modeling.registry import ModelInputs, build_model  # noqa: E402
from generative_recommenders.text.embedding_store import load_dataset_text_embeddings  # noqa: E402
from generative_recommenders.trainer.config import bound_parameter  # noqa: E402
from generative_recommenders.trainer.distributed import single_process_context, wrap_for_training  # noqa: E402
from generative_recommenders.trainer.train import train_step, warmup_factor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PATHS = ("reference", "optimized", "bucketed", "compiled", "bf16")
# (dataset folder, config) per real case.
REAL_CASES = {
    "amzn14_office-sasrec": ("amzn14_office", "configs/amzn14_office/sasrec-sampled-softmax-n512-final.gin"),
    "amzn14_office-hstu": ("amzn14_office", "configs/amzn14_office/hstu-sampled-softmax-n512-final.gin"),
    "amzn14_office-hstu-text": ("amzn14_office", "configs/amzn14_office/hstu-sampled-softmax-n512-minilm.gin"),
    "ml100k-sasrec": ("ml100k", "configs/ml100k/sasrec-sampled-softmax-n128-final.gin"),
    "ml100k-hstu": ("ml100k", "configs/ml100k/hstu-sampled-softmax-n128-final.gin"),
    "ml100k-hstu-text": ("ml100k", "configs/ml100k/hstu-sampled-softmax-n128-minilm.gin"),
}
SYNTHETIC_BINDINGS = [
    'train_fn.main_module = "HSTU"',
    "train_fn.item_embedding_dim = 64",
    "train_fn.num_negatives = 128",
    "train_fn.dropout_rate = 0.2",
    "hstu_encoder.num_blocks = 4",
    "hstu_encoder.num_heads = 4",
    "hstu_encoder.dqk = 16",
    "hstu_encoder.dv = 16",
    "hstu_encoder.linear_dropout_rate = 0.2",
]
SYNTHETIC_ITEMS = 2048


def _param(name: str, default: Any) -> Any:
    return bound_parameter(f"train_fn.{name}", default)


def synthetic_dataset(num_users: int, max_length: int, seed: int = 0) -> SequenceDataset:
    """Histories of ``1..max_length`` items (+ a target and a held-out item), gaps of ~1 day."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_length + 1, num_users) + 2
    return SequenceDataset(
        name=f"synthetic{max_length}",
        num_items=SYNTHETIC_ITEMS,
        item_ids=[rng.integers(0, SYNTHETIC_ITEMS, n) for n in lengths],
        ratings=[np.ones(n, dtype=np.float32) for n in lengths],
        timestamps=[np.cumsum(rng.exponential(86400.0, n)).astype(np.int64) for n in lengths],
        maps={},
    )


def pad_batch(batch: Dict[str, torch.Tensor], width: int) -> Dict[str, torch.Tensor]:
    """Pads the history columns to ``width``, as the reference pads every batch to its full length."""
    padded = dict(batch)
    for key in ("history_ids", "history_timestamps", "history_ratings"):
        padded[key] = torch.nn.functional.pad(batch[key], [0, width - batch[key].size(1)])
    return padded


@dataclasses.dataclass
class Setting:
    """One case's data and model configuration, shared by all its paths."""

    data: SequenceDataset
    text: Optional[torch.Tensor]
    main_module: str
    max_length: int
    batch_size: int
    num_negatives: int
    epoch_sequences: Optional[int]  # None: synthetic data has no epoch to speak of


def load_setting(case: str, args: argparse.Namespace) -> Setting:
    gin.clear_config()
    if case.startswith("synthetic-"):
        length = int(case.split("-")[1])
        gin.parse_config_files_and_bindings([], SYNTHETIC_BINDINGS)
        batch_size = max(1, args.tokens_per_batch // length)
        data = synthetic_dataset(batch_size * (args.warmup + args.steps + 4), length)
        return Setting(data, None, "HSTU", length, batch_size, 128, None)
    dataset, config = REAL_CASES[case]
    gin.parse_config_files_and_bindings([str(REPO / config)], [f'train_fn.dataset_name = "{dataset}"'])
    data_dir = Path(args.data_root) / dataset
    data = load_sequence_dataset(data_dir)
    text_model = _param("text_embedding_model", None)
    text = load_dataset_text_embeddings(data_dir, text_model, data.num_items) if text_model else None
    max_length = _param("max_sequence_length", 200)
    return Setting(
        data, text, _param("main_module", "HSTU"), max_length, _param("local_batch_size", 128),
        _param("num_negatives", 128), len(SequenceView(data, max_length, ignore_last_n=1)),
    )


class PathRunner:
    """A model, optimizer and batch stream for one path; every path starts from the same weights."""

    def __init__(self, path: str, setting: Setting, device: torch.device) -> None:
        self.path, self.setting, self.device = path, setting, device
        torch.manual_seed(42)
        self.num_positions = setting.max_length + _param("gr_output_length", 10) + 1
        inputs = ModelInputs(
            num_items=setting.data.num_items,
            embedding_dim=_param("item_embedding_dim", 64),
            num_positions=self.num_positions,
            dropout_rate=_param("dropout_rate", 0.2),
            text_embeddings=setting.text,
            attention_backend="padded" if path == "reference" else "auto",
        )
        self.model = build_model(setting.main_module, inputs).to(device)
        if path == "compiled":
            self.model.encoder = torch.compile(self.model.encoder, dynamic=True)
        self.context = single_process_context()
        loss = functools.partial(
            training_loss,
            sampling_strategy="local",
            num_negatives=setting.num_negatives,
            temperature=0.05,
            negative_scoring="per_sample" if path == "reference" else "auto",
        )
        self.train_module = wrap_for_training(self.model, loss, self.context)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-3, betas=(0.9, 0.98))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_factor(0))
        train_view = SequenceView(setting.data, setting.max_length, ignore_last_n=1)
        if path == "bucketed":
            sampler = LengthBucketedBatchSampler(history_lengths(train_view), setting.batch_size, seed=0)
            loader = torch.utils.data.DataLoader(train_view, batch_sampler=sampler, collate_fn=collate_sequences)
        else:
            generator = torch.Generator().manual_seed(0)
            loader = torch.utils.data.DataLoader(
                train_view, batch_size=setting.batch_size, shuffle=True, generator=generator,
                collate_fn=collate_sequences,
            )
        self.batches: Iterator[Dict[str, torch.Tensor]] = itertools.cycle(loader)
        self.data_seconds = 0.0  # spent loading and collating training batches
        self.test_loader = torch.utils.data.DataLoader(
            SequenceView(setting.data, setting.max_length, ignore_last_n=0),
            batch_size=setting.batch_size, collate_fn=collate_sequences,
        )

    def _prepared(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return pad_batch(batch, self.num_positions) if self.path == "reference" else batch

    def step(self) -> int:
        start = time.perf_counter()
        batch = self._prepared(next(self.batches))
        self.data_seconds += time.perf_counter() - start
        train_step(self.train_module, batch, self.optimizer, self.scheduler, self.context, self.path == "bf16")
        return batch["target_ids"].numel()

    def evaluate(self) -> int:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.path == "bf16"):
            return evaluate_ranking(self.model, map(self._prepared, self.test_loader), self.device).count


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, fn: Callable[[], int]) -> tuple:
    _synchronize(device)
    start = time.perf_counter()
    count = fn()
    _synchronize(device)
    return count, time.perf_counter() - start


def _out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "not enough memory" in str(error)


def measure_speed(case: str, paths: List[str], args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """Interleaved steps of every path in this process: throughput per path."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setting = load_setting(case, args)
    results: Dict[str, Dict[str, Any]] = {}
    runners = {}
    for path in paths:
        try:
            runner = PathRunner(path, setting, device)
            for _ in range(args.warmup):
                runner.step()
            runners[path] = runner
        except RuntimeError as error:  # a path that cannot fit is a result, not a failure
            if not _out_of_memory(error):
                raise
            results[path] = {"error": "out of memory"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    sequences = {path: 0 for path in runners}
    seconds = {path: 0.0 for path in runners}
    for runner in runners.values():
        runner.data_seconds = 0.0
    for step in range(args.steps):
        order = list(runners) if step % 2 == 0 else list(reversed(list(runners)))
        for path in order:
            count, elapsed = _timed(device, runners[path].step)
            sequences[path] += count
            seconds[path] += elapsed
    for path, runner in runners.items():
        users, eval_seconds = _timed(device, runner.evaluate)
        train_rate = sequences[path] / seconds[path]
        results[path] = {
            "train_seq_per_s": train_rate,
            "epoch_seconds": setting.epoch_sequences / train_rate if setting.epoch_sequences else None,
            "data_share": runner.data_seconds / seconds[path],
            "eval_users_per_s": users / eval_seconds,
        }
    return results


def measure_memory(case: str, path: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Peak memory of one path alone: a few steps and one evaluation."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    setting = load_setting(case, args)
    try:
        runner = PathRunner(path, setting, device)
        for _ in range(2):
            runner.step()
        runner.evaluate()
    except RuntimeError as error:
        if not _out_of_memory(error):
            raise
        return {"peak_mib": None}
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _child(args: argparse.Namespace, mode: str, case: str, paths: List[str]) -> Dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--child", mode, "--cases", case, "--paths", *paths,
        "--steps", str(args.steps), "--warmup", str(args.warmup), "--data_root", args.data_root,
        "--tokens_per_batch", str(args.tokens_per_batch), "--threads", str(args.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        lines = out.stderr.strip().splitlines() or ["no output"]
        return {"failed": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _format(value: Optional[float], digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{max(digits, 1) if value < 10 else digits}f}"


def _ratio(value: Optional[float], reference: Optional[float]) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}x"


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=[*REAL_CASES, "synthetic"])
    parser.add_argument("--paths", nargs="*", default=["reference", "optimized"], choices=PATHS)
    parser.add_argument("--lengths", nargs="*", type=int, default=[50, 200, 512, 1024])
    parser.add_argument("--tokens_per_batch", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--data_root", default="tmp")
    parser.add_argument("--json", help="also write every number to this file: {case: {path: {...}}}")
    parser.add_argument("--child", choices=["speed", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child == "speed":
        print(json.dumps(measure_speed(args.cases[0], args.paths, args)))
        return
    if args.child == "memory":
        print(json.dumps(measure_memory(args.cases[0], args.paths[0], args)))
        return

    cases = []
    for case in args.cases:
        cases += [f"synthetic-{length}" for length in args.lengths] if case == "synthetic" else [case]
    device = f"CUDA ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "CPU"
    print(f"{device}, torch {torch.__version__}, {args.threads} threads, "
          f"{args.warmup} warm-up + {args.steps} timed steps per path\n")
    print("| case | path | train seq/s | vs reference | s/epoch | data % | eval users/s | vs reference | peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    everything: Dict[str, Dict[str, Any]] = {}
    for case in cases:
        speed = _child(args, "speed", case, args.paths)
        everything[case] = speed
        if "failed" in speed:
            print(f"| {case} | failed: {speed['failed']} ||||||||", flush=True)
            continue
        reference = speed.get("reference", {})
        for path in args.paths:
            memory = _child(args, "memory", case, [path])
            r = speed[path]
            r["peak_mib"] = memory.get("peak_mib")
            if "error" in r:
                print(f"| {case} | {path} | {r['error']} ||||||| {_format(memory.get('peak_mib'))} |", flush=True)
                continue
            print(
                f"| {case} | {path} | {_format(r['train_seq_per_s'])} "
                f"| {_ratio(r['train_seq_per_s'], reference.get('train_seq_per_s'))} "
                f"| {_format(r['epoch_seconds'], 1)} | {100 * r['data_share']:.0f} | {_format(r['eval_users_per_s'])} "
                f"| {_ratio(r['eval_users_per_s'], reference.get('eval_users_per_s'))} "
                f"| {_format(memory.get('peak_mib'))} |",
                flush=True,
            )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
