"""Evaluation protocols: which item of each user trains, validates and tests, and model selection.

* ``validated`` (default): train on all but each user's last two items,
  validate on the second-to-last, select the epoch by validation
  ``selection_metric`` (optionally stopping after ``patience`` evaluations
  without improvement), then test the last item once, with the validation
  item in the history.
* ``reference``: the paper's code: train on all but the last item and rank
  the last item every epoch; there is no validation split.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from generative_recommenders.data.dataset import SequenceView
from generative_recommenders.data.sequence_format import SequenceDataset

PROTOCOLS = ("validated", "reference")


@dataclass
class ProtocolViews:
    """The views one protocol trains, evaluates during training, and finally tests on."""

    train: SequenceView
    eval: SequenceView
    test: SequenceView
    eval_split: str  # how evaluations during training are named: "valid" or "test"


def protocol_views(data: SequenceDataset, max_sequence_length: int, protocol: str) -> ProtocolViews:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown eval_protocol {protocol!r}; choose from {PROTOCOLS}")
    test = SequenceView(data, max_sequence_length, ignore_last_n=0)
    if protocol == "reference":
        return ProtocolViews(SequenceView(data, max_sequence_length, ignore_last_n=1), test, test, "test")
    return ProtocolViews(
        train=SequenceView(data, max_sequence_length, ignore_last_n=2),
        eval=SequenceView(data, max_sequence_length, ignore_last_n=1),
        test=test,
        eval_split="valid",
    )


class ModelSelection:
    """Keeps the best weights by a validation metric and decides when to stop early.

    An evaluation improves on the best only if its metric is strictly higher,
    so ties keep the earlier epoch. With ``patience`` set, training stops once
    ``patience`` evaluations in a row have not improved.
    """

    def __init__(self, metric: str, patience: Optional[int] = None) -> None:
        if patience is not None and patience < 1:
            raise ValueError(f"train_fn.patience must be >= 1 (or None to never stop early), got {patience}")
        self.metric = metric
        self.patience = patience
        self.best: Optional[Dict[str, Any]] = None  # {"epoch": int, "valid": metrics}
        self.best_state: Optional[Dict[str, torch.Tensor]] = None
        self.evaluations_without_improvement = 0

    def update(self, epoch: int, metrics: Dict[str, float], model: torch.nn.Module) -> bool:
        """Records one validation result; returns whether it is the new best."""
        if self.best is not None and metrics[self.metric] <= self.best["valid"][self.metric]:
            self.evaluations_without_improvement += 1
            return False
        self.best = {"epoch": epoch, "valid": dict(metrics)}
        self.best_state = copy.deepcopy(model.state_dict())
        self.evaluations_without_improvement = 0
        return True

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.evaluations_without_improvement >= self.patience

    def state_dict(self) -> Dict[str, Any]:
        return {
            "best": self.best,
            "best_state": self.best_state,
            "evaluations_without_improvement": self.evaluations_without_improvement,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.best = state["best"]
        self.best_state = state["best_state"]
        self.evaluations_without_improvement = state["evaluations_without_improvement"]
