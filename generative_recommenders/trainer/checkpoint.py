"""Exact checkpoint/resume: the training order, the random number generators, the checkpoint file.

A run killed at any point and resumed from its last checkpoint continues
as if it had never stopped: the sampler replays the same order and skips the
batches already done, and the python / NumPy / torch generators are restored,
so negatives and dropout draw the same numbers.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any, Dict, Iterator

import numpy as np
import torch
from torch.utils.data import DistributedSampler, Sampler

from generative_recommenders.atomic_files import atomic_torch_save
from generative_recommenders.errors import UserError
from generative_recommenders.trainer.run_folder import only_extends_epochs, run_differences, same_run_config

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "generative_recommenders.trainer/2"  # 2: with the LR schedule's state


class CheckpointError(UserError):
    """A checkpoint is unreadable or does not belong to the run being resumed."""


class ResumableSampler(Sampler[int]):
    """A seeded per-epoch order that can start part-way through an epoch.

    The order is a :class:`DistributedSampler`'s (``seed + epoch``), so that a
    data-parallel run only changes ``num_replicas`` / ``rank``. The loader
    must cut batches of ``batch_size`` consecutive indices (no ``drop_last``
    reordering), so that skipping ``k * batch_size`` indices skips ``k`` batches.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        self.order = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.skip_batches = 0

    def set_position(self, epoch: int, skip_batches: int = 0) -> None:
        self.order.set_epoch(epoch)
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.order), self.skip_batches * self.batch_size, None)

    def __len__(self) -> int:
        return max(0, len(self.order) - self.skip_batches * self.batch_size)


def capture_rng_state() -> Dict[str, Any]:
    """The python, NumPy, torch (and CUDA) generator states, in types ``torch.load`` reads safely."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: Dict[str, Any]) -> None:
    """Writes ``state`` (plus the format tag) atomically: a kill never leaves half a checkpoint."""
    atomic_torch_save(dict(state, format=CHECKPOINT_FORMAT), path)


def load_checkpoint(path: Path, gin_config: str, dataset: Dict[str, Any], world_size: int = 1) -> Dict[str, Any]:
    """Reads a checkpoint and checks it was written under the same gin config, dataset
    statistics and number of processes (each rank's batch order and generators resume)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of this trainer (format {CHECKPOINT_FORMAT})")
    if not same_run_config(state["gin_config"], gin_config) and not only_extends_epochs(state["gin_config"], gin_config):
        changes = "; ".join(run_differences(state["gin_config"], gin_config))
        raise CheckpointError(
            f"{path} was written under a different gin config, so --resume would not continue the "
            "same run (only a larger train_fn.num_epochs may change); restore the config, or start over "
            f"with --overwrite. Differences (- checkpoint, + this run): {changes}"
        )
    if state["dataset"] != dataset:
        raise CheckpointError(
            f"{path} was written for other data ({state['dataset']}), not {dataset}: "
            "the dataset changed since, so the run cannot continue where it stopped"
        )
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"{path} was written by {state['world_size']} process(es), and this run has {world_size}: "
            "each process's share of the batches and its generators continue where they stopped, so "
            f"resume with {state['world_size']} process(es); its weights (last_model.pt, best_model.pt) load in any number"
        )
    return state
