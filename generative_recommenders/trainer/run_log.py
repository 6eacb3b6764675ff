"""Everything a run reports: stdout, TensorBoard (scalars and hparams) and ``results.json``."""

from __future__ import annotations

import ast
import datetime
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterable

import torch
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.evaluation.metrics import format_metrics
from generative_recommenders.logs import get_logger

RESULTS_FILE = "results.json"
logger = get_logger(__name__)


class RunLog:
    """Evaluations go to TensorBoard under their split (``valid/``, ``test/``, ``test_best/``, ...).

    ``purge_step`` is the global step the run starts from: TensorBoard hides
    events of the same folder logged at or after it (an earlier run, or what
    a killed run logged after its last checkpoint).

    In a multi-process run only one process writes: the others keep the same
    ``results`` (every rank sees the same reduced metrics) and write nothing.
    """

    def __init__(self, output_dir: Path, header: Dict[str, Any], purge_step: int, active: bool = True) -> None:
        self.output_dir = output_dir
        self.active = active
        self.writer = SummaryWriter(log_dir=str(output_dir), purge_step=purge_step) if active else None
        self.results: Dict[str, Any] = dict(header, epochs=[], evaluations=[])

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.active:
            self.writer.add_scalar(tag, value, step)

    def message(self, text: str) -> None:
        if self.active:
            logger.info(text)

    def hyperparameters(self, values: Dict[str, Any], metric_tags: Iterable[str]) -> None:
        """Opens the run's TensorBoard hparams session; the metrics are scalar tags logged later."""
        if not self.active:
            return
        experiment, session_start, _ = hparams(values, {tag: 0.0 for tag in metric_tags})
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(session_start)

    def epoch(self, epoch: int, train_loss: float) -> None:
        self.scalar("losses/train_epoch", train_loss, epoch)
        self.results["epochs"].append({"epoch": epoch, "train_loss": train_loss})

    def evaluation(self, epoch: int, split: str, full: bool, evaluation: Any) -> None:
        """Logs a ``tasks.Evaluation``: its metrics, count (``users`` or ``samples``) and per-group metrics."""
        metrics, count, unit = evaluation.metrics, evaluation.count, evaluation.unit
        kind = "" if full else " (partial)"
        self.message(f"eval @ epoch {epoch} [{split}{kind}, {count} {unit}]: {format_metrics(metrics)}")
        prefix = split if full else f"{split}_partial"
        for name, value in metrics.items():
            self.scalar(f"{prefix}/{name}", value, epoch)
        entry = {"epoch": epoch, "split": split, "full": full, unit: count, "metrics": metrics}
        if evaluation.groups:
            entry["groups"] = evaluation.groups
        self.results["evaluations"].append(entry)

    def save(self) -> None:
        if not self.active:
            return
        self.writer.flush()
        atomic_write_text(self.output_dir / RESULTS_FILE, json.dumps(self.results, indent=2))

    def close(self) -> None:
        """Saves the results and marks the hparams session finished."""
        if not self.active:
            return
        _, _, session_end = hparams({}, {})
        self.writer.file_writer.add_summary(session_end)
        self.save()
        self.writer.close()


def provenance(device: torch.device) -> Dict[str, Any]:
    """Where a result comes from: the code's commit, when, which libraries, which device."""
    repo = Path(__file__).resolve().parents[2]  # the checkout this code runs from
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
        changed = bool(commit) and bool(
            subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        commit, changed = None, False
    versions = {}
    for package in ("torch", "fbgemm-gpu", "fbgemm-gpu-cpu", "triton", "transformers", "gin-config", "numpy"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "code_commit": commit,
        "uncommitted_changes": changed,
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "versions": versions,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "host": platform.node(),
    }


def gin_config_mapping(config_text: str) -> Dict[str, Dict[str, Any]]:
    """``{"train_fn": {"num_epochs": 101, ...}, "hstu_encoder": {...}}`` from a gin config text."""
    mapping: Dict[str, Dict[str, Any]] = {}
    statement = ""
    for line in config_text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        statement = line if " = " in line and not line.startswith(" ") else statement + " " + line.strip()
        name, _, value = statement.partition(" = ")
        if "." not in name:
            continue
        selector, parameter = name.rsplit(".", 1)
        try:
            parsed: Any = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = value.strip()  # a reference (@name) or a macro, kept as written
        mapping.setdefault(selector, {})[parameter] = parsed
    return mapping
