"""What differs between the trainer's two tasks: data views, loss and evaluation.

* ``retrieval`` (HSTU, SASRec, DSSM): next-item prediction, evaluated by full
  ranking over the catalogue (``protocol.py``), every evaluation also per
  target-popularity group and, with ``train_fn.cold_item_share``, on items held
  out of training (``evaluation/target_groups.py``, ``data/cold_items.py``).
* ``ctr`` (DIN, DeepFM): click-through rate of a target given the behaviour
  sequence (``data/ctr.py``), trained with binary cross-entropy on labelled
  samples and evaluated by AUC and Logloss; the validation split selects, the
  test split is read once.

The registry says which task a model trains on (``registry.model_task``).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from generative_recommenders.data.cold_items import split_cold_items, training_item_counts
from generative_recommenders.data.ctr import CTRView, collate_ctr, read_item_categories
from generative_recommenders.data.dataset import collate_sequences
from generative_recommenders.data.per_position import PerPositionView, SeenItemsView, collate_with_seen_items
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.evaluation.classification import (
    CTR_METRIC_NAMES,
    ClassificationAccumulator,
    evaluate_ctr,
)
from generative_recommenders.evaluation.metrics import DEFAULT_REPORTED
from generative_recommenders.evaluation.ranking import evaluate_ranking
from generative_recommenders.evaluation.target_groups import (
    COLD_ITEMS,
    TargetGroupAccumulator,
    cold_item_group,
    popularity_groups,
)
from generative_recommenders.logs import get_logger
from generative_recommenders.modeling.ctr_fields import ctr_training_loss
from generative_recommenders.modeling.dssm import dssm_training_loss
from generative_recommenders.modeling.losses import binary_cross_entropy_loss, training_loss
from generative_recommenders.modeling.registry import model_task
from generative_recommenders.trainer.config import TrainConfig
from generative_recommenders.trainer.distributed import DistributedContext, gather_objects, reduce_metrics
from generative_recommenders.trainer.protocol import protocol_views

logger = get_logger(__name__)
POPULARITY_GROUPS_KEY = "popularity_groups"


@dataclasses.dataclass
class TaskViews:
    """The datasets one run trains, evaluates during training, and finally tests on."""

    train: torch.utils.data.Dataset
    eval: torch.utils.data.Dataset
    test: torch.utils.data.Dataset
    eval_split: str  # how evaluations during training are named: "valid" or "test"
    collate: Callable[[List[Any]], Dict[str, torch.Tensor]]
    header: Dict[str, Any]  # what results.json says about the views
    num_categories: int = 0
    num_users: int = 0  # the CTR models' user-id field (0: the model has none)


@dataclasses.dataclass
class Evaluation:
    """One evaluation's metrics, how many ``unit`` it covered, and its groups."""

    metrics: Dict[str, float]
    count: int
    groups: Dict[str, Any] = dataclasses.field(default_factory=dict)
    unit: str = "users"  # what ``count`` counts: users (retrieval) or samples (ctr)


class RetrievalTask:
    """Next-item prediction, full-ranking evaluation with per-group metrics."""

    name = "retrieval"
    reported_metrics = DEFAULT_REPORTED

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.item_counts = None
        self.cold_item_ids = None
        self.negative_item_ids: Optional[torch.Tensor] = None  # the catalogue without the cold items

    def views(self, data: SequenceDataset, data_dir: Path) -> TaskViews:
        config = self.config
        views = protocol_views(data, config.max_sequence_length, config.eval_protocol)
        num_held_out = 2 if config.validated else 1
        header: Dict[str, Any] = {}
        train_data = data
        if config.cold_item_share is not None:
            split = split_cold_items(data, config.cold_item_share, config.random_seed, num_held_out)
            train_data, self.cold_item_ids = split.training_data, split.cold_item_ids
            # Cold items are out of training entirely: never a positive, never a sampled negative.
            catalogue = np.arange(1, data.num_items + 1)
            self.negative_item_ids = torch.from_numpy(np.setdiff1d(catalogue, split.cold_item_ids))
            views.train = protocol_views(train_data, config.max_sequence_length, config.eval_protocol).train
            header["cold_item_split"] = split.summary()
        if config.training_samples == "per_position":  # GRE-B: one sample per training position
            views.train = PerPositionView(train_data, config.max_sequence_length, views.train.ignore_last_n)
        self.item_counts = training_item_counts(train_data, num_held_out)
        header["skipped_users"] = {"train": views.train.num_skipped_users, "eval": views.eval.num_skipped_users}
        header["training_samples"] = {"kind": config.training_samples, "count": len(views.train)}
        collate = collate_sequences
        if config.mask_seen_items:  # GRE-B: every item before the target leaves the ranking
            views.eval, views.test, collate = SeenItemsView(views.eval), SeenItemsView(views.test), collate_with_seen_items
        return TaskViews(views.train, views.eval, views.test, views.eval_split, collate, header)

    def loss(self, model_name: str, device: torch.device) -> Callable[..., torch.Tensor]:
        """The model's training loss; with a cold-item split, uniform negatives leave the cold items out
        (their ids moved to ``device`` once, not at every step)."""
        config = self.config
        negatives = {} if self.negative_item_ids is None else {"negative_item_ids": self.negative_item_ids.to(device)}
        if config.loss_module == "SampledSoftmaxLoss":
            return functools.partial(
                training_loss,
                sampling_strategy=config.sampling_strategy,
                num_negatives=config.num_negatives,
                temperature=config.temperature,
                **negatives,
            )
        last_only = config.training_samples == "per_position"  # the loss at each sample's target only
        if model_name == "DSSM":
            return functools.partial(
                dssm_training_loss, num_negatives=config.num_negatives, last_position_only=last_only, **negatives
            )
        return functools.partial(
            binary_cross_entropy_loss,
            num_negatives=config.num_negatives,
            temperature=config.temperature,
            item_l2_norm=config.item_l2_norm,
            last_position_only=last_only,
            **negatives,
        )

    def _target_groups(self, num_items: int) -> List[TargetGroupAccumulator]:
        groups = [popularity_groups(self.item_counts)]
        if self.cold_item_ids is not None:
            groups.append(cold_item_group(self.cold_item_ids, num_items))
        return groups

    def evaluate(
        self,
        model: torch.nn.Module,
        loader: torch.utils.data.DataLoader,
        context: DistributedContext,
        max_batches: Optional[int] = None,
    ) -> Evaluation:
        """Full-ranking metrics of ``loader``'s users, summed over every rank. Under the reference protocol a
        target that repeats a history item is a miss, as the paper's evaluation has it, and so with
        ``mask_seen_items`` (GRE-B: every item before the target is removed); under the validated
        protocol it is ranked (a user who buys the same item again was predicted well if it ranks high)."""
        config = self.config
        groups = self._target_groups(model.num_items)
        repeated = "rank" if config.validated and not config.mask_seen_items else "miss"
        accumulator = evaluate_ranking(
            model, loader, context.device, config.rank_cap, max_batches=max_batches,
            repeated_target=repeated, target_groups=groups,
        )
        accumulator = reduce_metrics(accumulator, context)
        keys = (POPULARITY_GROUPS_KEY, COLD_ITEMS)
        return Evaluation(
            accumulator.means(),
            accumulator.count,
            {key: merged.results() for key, merged in zip(keys, _merge_across_ranks(groups, context))},
        )


def _merge_across_ranks(groups: Sequence[TargetGroupAccumulator], context: DistributedContext) -> Sequence:
    if not context.is_distributed:
        return groups
    gathered = gather_objects(list(groups), context)
    for other in gathered[1:]:
        for mine, theirs in zip(gathered[0], other):
            mine.merge(theirs)
    return gathered[0]


class CTRTask:
    """Click-through rate on labelled samples, AUC and Logloss."""

    name = "ctr"
    reported_metrics = CTR_METRIC_NAMES

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def views(self, data: SequenceDataset, data_dir: Path) -> TaskViews:
        config = self.config
        categories = read_item_categories(data_dir, data.num_items)
        train, valid, test = (
            CTRView(data, split, config.max_sequence_length, config.random_seed, categories)
            for split in ("train", "valid", "test")
        )
        if categories is None:
            logger.warning("%s has no item categories: %s runs without that field", data.name, config.main_module)
        header = {
            "has_categories": categories is not None,
            "category_field": None if categories is None else categories.source_field,
            "num_categories": train.num_categories,
            "samples": {"train": len(train), "valid": len(valid), "test": len(test)},
        }
        return TaskViews(train, valid, test, "valid", collate_ctr, header, train.num_categories, data.num_users)

    def loss(self, model_name: str, device: torch.device) -> Callable[..., torch.Tensor]:
        del model_name, device  # every CTR model: binary cross-entropy on the labels
        return ctr_training_loss

    def evaluate(
        self,
        model: torch.nn.Module,
        loader: torch.utils.data.DataLoader,
        context: DistributedContext,
        max_batches: Optional[int] = None,
    ) -> Evaluation:
        """AUC and Logloss over every rank's samples (gathered: AUC is no sum over samples)."""
        accumulator = evaluate_ctr(model, loader, context.device, max_batches)
        merged = ClassificationAccumulator()
        for state in gather_objects(accumulator.state(), context):
            merged.merge(ClassificationAccumulator.from_state(state))
        return Evaluation(merged.metrics(), merged.count, unit="samples")


def task_for(config: TrainConfig) -> RetrievalTask | CTRTask:
    """The task ``config.main_module`` trains on."""
    return CTRTask(config) if model_task(config.main_module) == "ctr" else RetrievalTask(config)
