"""Click-through-rate metrics: AUC and Logloss from scikit-learn, and the CTR evaluation loop.

AUC is not a sum over samples, so the accumulator keeps every (label, probability)
pair; shards (data-parallel processes, evaluation chunks) are merged by concatenating
their pairs, which gives exactly the metrics of one pass over all samples.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from sklearn.metrics import log_loss, roc_auc_score

CTR_METRIC_NAMES = ("auc", "logloss")
# Probabilities are clipped to [eps, 1 - eps] before the log, so a confident mistake costs
# -log(eps) instead of infinity (scikit-learn clips the same way).
LOGLOSS_EPS = 1e-7


class ClassificationAccumulator:
    """Collects binary labels and predicted probabilities; merges across shards exactly."""

    def __init__(self) -> None:
        self._labels: List[np.ndarray] = []
        self._probabilities: List[np.ndarray] = []

    @property
    def count(self) -> int:
        return int(sum(len(chunk) for chunk in self._labels))

    def add(self, labels: torch.Tensor | np.ndarray, probabilities: torch.Tensor | np.ndarray) -> None:
        """Adds ``[N]`` labels in {0, 1} and ``[N]`` probabilities of label 1."""
        labels = np.asarray(torch.as_tensor(labels).detach().cpu(), dtype=np.float64).reshape(-1)
        probabilities = np.asarray(
            torch.as_tensor(probabilities).detach().cpu(), dtype=np.float64
        ).reshape(-1)
        if labels.shape != probabilities.shape:
            raise ValueError(f"{labels.size} labels but {probabilities.size} probabilities")
        if not np.isin(labels, (0.0, 1.0)).all():
            raise ValueError("labels must be 0 or 1")
        if not np.isfinite(probabilities).all():
            raise FloatingPointError("predicted probabilities hold NaN or inf: the model has diverged")
        self._labels.append(labels)
        self._probabilities.append(probabilities)

    def merge(self, other: "ClassificationAccumulator") -> None:
        """Adds another shard's samples to this one."""
        self._labels.extend(other._labels)
        self._probabilities.extend(other._probabilities)

    def state(self) -> Dict[str, np.ndarray]:
        """The samples as two arrays, e.g. for ``torch.distributed.all_gather_object``."""
        return {"labels": self._all(self._labels), "probabilities": self._all(self._probabilities)}

    @classmethod
    def from_state(cls, state: Dict[str, np.ndarray]) -> "ClassificationAccumulator":
        acc = cls()
        acc.add(state["labels"], state["probabilities"])
        return acc

    @staticmethod
    def _all(chunks: List[np.ndarray]) -> np.ndarray:
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float64)

    def metrics(self) -> Dict[str, float]:
        """``auc`` (ties count one half) and ``logloss`` (mean binary cross-entropy, natural log)."""
        labels, probabilities = self._all(self._labels), self._all(self._probabilities)
        if labels.size == 0:
            raise ValueError("no samples were evaluated")
        if labels.min() == labels.max():
            raise ValueError(f"AUC needs both labels; all {labels.size} samples have label {labels[0]:g}")
        clipped = np.clip(probabilities, LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        return {
            "auc": float(roc_auc_score(labels, probabilities)),
            "logloss": float(log_loss(labels, clipped, labels=[0.0, 1.0])),
        }


@torch.no_grad()
def evaluate_ctr(
    model: torch.nn.Module,
    batches: Iterable[Dict[str, torch.Tensor]],
    device: torch.device,
    max_batches: Optional[int] = None,
) -> ClassificationAccumulator:
    """Runs a CTR model (``model(batch) -> logits [B]``) over labelled batches.

    Each batch is moved to ``device`` key by key; its ``labels`` are compared with
    ``sigmoid(logits)``.
    """
    was_training = model.training
    model.eval()
    acc = ClassificationAccumulator()
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        on_device = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
        logits = model(on_device)
        acc.add(batch["labels"], torch.sigmoid(logits.float()).cpu())
    model.train(was_training)
    return acc
