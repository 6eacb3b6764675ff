"""What differs between the trainer's two tasks: data views, loss and evaluation.

* ``retrieval`` (HSTU, SASRec, DSSM): next-item prediction, evaluated by full
  ranking over the catalogue (``protocol.py``), every evaluation also per
  target-popularity group and, with ``train_fn.cold_item_share``, on items held
  out of training (``evaluation/target_groups.py``, ``data/cold_items.py``).
* ``ctr`` (DIN, DeepFM): click-through rate of a target given the behaviour
  sequence (``data/ctr.py``), trained with binary cross-entropy on labelled
  samples and evaluated by AUC and Logloss; the validation split selects, the
  test split is read once.

The registry says which task a model trains on (``registry.model_task``) and
may name its own losses; a task owns everything else that differs: the settings
it refuses, its default losses, its selection metrics, which items a run never
trained on, and how its evaluation runs. ``task_for(config)`` checks a config
against its task and returns the task.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any, Callable, ClassVar, Counter, Dict, List, Mapping, Optional, Sequence, Tuple, Type

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
from generative_recommenders.evaluation.metrics import DEFAULT_REPORTED, METRIC_NAMES
from generative_recommenders.evaluation.ranking import evaluate_ranking
from generative_recommenders.evaluation.target_groups import (
    COLD_ITEMS,
    TargetGroupAccumulator,
    cold_item_group,
    popularity_groups,
)
from generative_recommenders.logs import get_logger
from generative_recommenders.modeling.ctr_fields import ctr_training_loss
from generative_recommenders.modeling.losses import binary_cross_entropy_loss, training_loss
from generative_recommenders.modeling.registry import TrainingLoss, model_spec
from generative_recommenders.trainer.config import ConfigError, TrainConfig
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


def bind_loss(loss: TrainingLoss, config: TrainConfig, **extra: Any) -> Callable[..., torch.Tensor]:
    """``loss`` with its keyword parameters that are ``TrainConfig`` fields (or in ``extra`` and
    accepted) set to the run's values: ``(model, batch, device) -> loss``."""
    parameters = inspect.signature(loss).parameters
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    settings = {name: getattr(config, name) for name in parameters if name in fields}
    settings.update({name: value for name, value in extra.items() if name in parameters})
    return functools.partial(loss, **settings)


class Task:
    """What one task does differently; :class:`RetrievalTask` and :class:`CTRTask` fill it in."""

    name: ClassVar[str]
    reported_metrics: ClassVar[Tuple[str, ...]]
    selection_metrics: ClassVar[Tuple[str, ...]]  # higher is better for each
    samples_negatives: ClassVar[bool]  # whether training draws num_negatives from the catalogue
    default_losses: ClassVar[Mapping[str, TrainingLoss]]

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        """Refuses a setting this task (or the model's registration) cannot train with."""
        losses = cls.losses_of(config.main_module)
        if config.loss_module not in losses:
            raise ConfigError(
                f"train_fn.loss_module={config.loss_module!r} is not supported; {config.main_module} trains "
                f"with {tuple(losses)}"
            )
        if config.selection_metric not in cls.selection_metrics:
            raise ConfigError(
                f"train_fn.selection_metric={config.selection_metric!r} is not supported; choose from "
                f"{cls.selection_metrics}"
            )

    @classmethod
    def losses_of(cls, model_name: str) -> Mapping[str, TrainingLoss]:
        """The losses the model trains with: its registration's, else the task's."""
        return model_spec(model_name).losses or cls.default_losses

    def training_loss(self, device: torch.device) -> Callable[..., torch.Tensor]:
        """The run's loss, ``(model, batch, device) -> loss``, settings bound."""
        return bind_loss(self.losses_of(self.config.main_module)[self.config.loss_module], self.config)

    def untrained_items(self, data: SequenceDataset, views: TaskViews) -> np.ndarray:
        """Bool by 0-based item index: the items no training example of this run held."""
        raise NotImplementedError

    def training_record(self) -> Dict[str, Any]:
        """What results.json records of how this task trained (beyond the config)."""
        return {}


@dataclasses.dataclass
class Evaluation:
    """One evaluation's metrics, how many ``unit`` it covered, and its groups."""

    metrics: Dict[str, float]
    count: int
    groups: Dict[str, Any] = dataclasses.field(default_factory=dict)
    unit: str = "users"  # what ``count`` counts: users (retrieval) or samples (ctr)


class RetrievalTask(Task):
    """Next-item prediction, full-ranking evaluation with per-group metrics."""

    name = "retrieval"
    reported_metrics = DEFAULT_REPORTED
    selection_metrics = METRIC_NAMES
    samples_negatives = True
    default_losses = {"SampledSoftmaxLoss": training_loss, "BinaryCrossEntropyLoss": binary_cross_entropy_loss}

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.item_counts = None
        self.cold_item_ids = None
        self.negative_item_ids: Optional[torch.Tensor] = None  # the catalogue without the cold items
        self.negative_scorings: Counter[str] = collections.Counter()  # training steps per negative scoring

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
            id2item = data.maps.get("id2item") if data.maps else None
            held_out = [id2item[k - 1] for k in split.cold_item_ids] if id2item else (split.cold_item_ids - 1).tolist()
            # The held-out items by the dataset's own ids: what a Recommender of this run checks its split against.
            header["cold_item_split"] = {**split.summary(), "held_out_item_ids": held_out}
        if config.training_samples == "per_position":  # GRE-B: one sample per training position
            views.train = PerPositionView(train_data, config.max_sequence_length, views.train.ignore_last_n)
        self.item_counts = training_item_counts(train_data, num_held_out)
        header["skipped_users"] = {"train": views.train.num_skipped_users, "eval": views.eval.num_skipped_users}
        header["training_samples"] = {"kind": config.training_samples, "count": len(views.train)}
        collate = collate_sequences
        if config.mask_seen_items:  # GRE-B: every item before the target leaves the ranking
            views.eval, views.test, collate = SeenItemsView(views.eval), SeenItemsView(views.test), collate_with_seen_items
        return TaskViews(views.train, views.eval, views.test, views.eval_split, collate, header)

    def training_loss(self, device: torch.device) -> Callable[..., torch.Tensor]:
        """The run's loss; with a cold-item split, uniform negatives leave the cold items out
        (their ids moved to ``device`` once, not at every step)."""
        loss = self.losses_of(self.config.main_module)[self.config.loss_module]
        # Per-position samples: the loss at each sample's target only (a loss that has the choice).
        extra: Dict[str, Any] = {
            "last_position_only": self.config.training_samples == "per_position",
            "scorings_used": self.negative_scorings,  # where the sampled softmax counts its scorings
        }
        if self.negative_item_ids is not None:
            extra["negative_item_ids"] = self.negative_item_ids.to(device)
        return bind_loss(loss, self.config, **extra)

    def training_record(self) -> Dict[str, Any]:
        """The negative scorings that ``negative_scoring="auto"`` chose, in training steps."""
        return {"negative_scoring": dict(self.negative_scorings)} if self.negative_scorings else {}

    def untrained_items(self, data: SequenceDataset, views: TaskViews) -> np.ndarray:
        """Items in no training example of the protocol's (cold-item split included) training view."""
        seen = np.zeros(data.num_items + 1, dtype=bool)
        for index in range(len(views.train)):
            example = views.train[index]
            seen[example["history_ids"]] = True
            seen[example["target_id"]] = True
        return ~seen[1:]

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


class CTRTask(Task):
    """Click-through rate on labelled samples, AUC and Logloss."""

    name = "ctr"
    reported_metrics = CTR_METRIC_NAMES
    selection_metrics = ("auc",)
    samples_negatives = False  # the samples carry their negatives (data/ctr.py)
    default_losses = {"BinaryCrossEntropyLoss": ctr_training_loss}

    @classmethod
    def check(cls, config: TrainConfig) -> None:
        if config.loss_module not in cls.losses_of(config.main_module) or config.selection_metric not in cls.selection_metrics:
            raise ConfigError(  # a retrieval config naming a CTR model
                f'train_fn.main_module = "{config.main_module}" is a CTR model (it scores (history, item) pairs, '
                'judged by AUC), not a retrieval model: it trains with train_fn.loss_module = '
                '"BinaryCrossEntropyLoss" and train_fn.selection_metric = "auc"; start from '
                f"configs/greb/{config.main_module.lower()}.gin"
            )
        if not config.validated:
            raise ConfigError(
                f"train_fn.eval_protocol = \"{config.eval_protocol}\": {config.main_module} (a CTR model) trains "
                "under the validated protocol only (its validation split selects the epoch)"
            )
        if config.training_samples != "window":
            raise ConfigError(f"train_fn.training_samples is for retrieval models; drop it for {config.main_module}")
        for name in ("cold_item_share", "length_bucketed_batches", "mask_seen_items"):
            if getattr(config, name):
                raise ConfigError(f"train_fn.{name} is for retrieval models; drop it for {config.main_module}")

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

    def untrained_items(self, data: SequenceDataset, views: TaskViews) -> np.ndarray:
        """Items in no training sample as a positive or a behaviour (the training part of each sequence)."""
        return training_item_counts(data)[1:] == 0

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


TASKS: Dict[str, Type[Task]] = {task.name: task for task in (RetrievalTask, CTRTask)}


def task_for(config: TrainConfig) -> Task:
    """The task ``config.main_module`` trains on, the config checked against it."""
    task = TASKS[config.task]
    task.check(config)
    return task(config)
