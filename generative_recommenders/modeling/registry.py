"""Models by name: ``train_fn.main_module = "HSTU"`` builds the model registered as ``HSTU``.

A model is a module file with a builder function decorated with
:func:`register_model`; the builder gets a :class:`ModelInputs` (what the
trainer knows of the data and the config) and returns the model. The module
is listed in ``MODEL_MODULES`` so that its registration runs when a model is
first looked up. The registration also names the model's task: ``retrieval``
(next-item full ranking over the catalogue) or ``ctr`` (click-through rate of a
target item given the behaviour sequence), and may name the training losses it
trains with (``loss_module`` name -> loss function; default: its task's). README
"Adding a model" walks through one.

What the trainer, the evaluation and the ``Recommender`` call on a model is
written down as :class:`RetrievalModel` and :class:`PairScoringModel`.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, Mapping, Optional, Protocol, Tuple, runtime_checkable

import torch

from generative_recommenders.errors import UserError

# The files whose builders register models, imported on the first look-up.
MODEL_MODULES = (
    "generative_recommenders.modeling.hstu",
    "generative_recommenders.modeling.sasrec",
    "generative_recommenders.modeling.greb_sasrec",
    "generative_recommenders.modeling.dssm",
    "generative_recommenders.modeling.din",
    "generative_recommenders.modeling.deepfm",
)
TASKS = ("retrieval", "ctr")


@dataclasses.dataclass(frozen=True)
class ModelInputs:
    """What every model builder gets.

    ``num_positions`` is the number of positions a sequence model holds: the
    history cap (``max_sequence_length``) + the target + ``gr_output_length``.
    ``text_embeddings [num_items + 1, T]`` (row 0 padding) is the frozen item
    text table, or None for an id-only model. ``num_categories``: item
    categories of the data (0: none; CTR models then run without that field).
    ``num_users``: users of the data (CTR models' user-id field; 0: none).
    """

    num_items: int
    embedding_dim: int
    num_positions: int
    dropout_rate: float
    user_embedding_norm: str = "l2_norm"
    item_l2_norm: bool = True
    l2_norm_eps: float = 1e-6
    text_embeddings: Optional[torch.Tensor] = None
    attention_backend: str = "auto"
    jagged_backend: str = "auto"
    num_categories: int = 0
    num_users: int = 0


@runtime_checkable
class RetrievalModel(Protocol):
    """A retrieval model: histories to query embeddings, ranked against every item's embedding.

    Ids are 1-based (0 is padding). ``all_item_embeddings()`` is ``[num_items + 1, D]``;
    ``normalize_items`` maps item embeddings to what queries are dotted with.
    """

    num_items: int

    def query_embeddings(
        self, history_ids: torch.Tensor, history_lengths: torch.Tensor, history_timestamps: torch.Tensor
    ) -> torch.Tensor: ...

    def all_item_embeddings(self) -> torch.Tensor: ...

    def normalize_items(self, embeddings: torch.Tensor) -> torch.Tensor: ...

    def description(self) -> str: ...


@runtime_checkable
class PairScoringModel(Protocol):
    """A ranking (CTR) model: ``forward(batch) -> logits [B]`` of (behaviours, target) pairs
    (``collate_ctr``'s keys)."""

    num_items: int

    def forward(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor: ...

    def description(self) -> str: ...


@runtime_checkable
class ReportsBackends(Protocol):
    """A model that can say which ops backends it ran on ``device`` (recorded in results.json)."""

    def backends_in_use(self, device: torch.device) -> Dict[str, str]: ...


class UnknownModelError(UserError):
    """A model name that no builder is registered under."""


ModelBuilder = Callable[[ModelInputs], torch.nn.Module]
# A training loss: (model, batch, device, **settings) -> scalar; its keyword parameters that are
# TrainConfig fields get the run's values (tasks.py binds them).
TrainingLoss = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One registration: the builder, the task, the losses it trains with (None: the task's) and the
    title reports give it."""

    name: str
    task: str
    builder: ModelBuilder
    losses: Optional[Mapping[str, TrainingLoss]] = None
    title: str = ""


_SPECS: Dict[str, ModelSpec] = {}


def register_model(
    name: str,
    task: str = "retrieval",
    losses: Optional[Mapping[str, TrainingLoss]] = None,
    title: Optional[str] = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: registers ``builder`` as the model ``name``, trained on ``task`` (one of ``TASKS``)
    with ``losses`` (``loss_module`` name -> loss; default: the task's losses); ``title`` names it in
    reports (default ``name``)."""
    if task not in TASKS:
        raise ValueError(f"model {name!r}: unknown task {task!r}; choose from {TASKS}")

    def register(builder: ModelBuilder) -> ModelBuilder:
        if name in _SPECS and _SPECS[name].builder is not builder:
            raise ValueError(f"a model named {name!r} is registered already ({_SPECS[name].builder.__module__})")
        _SPECS[name] = ModelSpec(name, task, builder, None if losses is None else dict(losses), title or name)
        return builder

    return register


def import_model_modules() -> None:
    """Imports every model file: their builders register, their gin configurables exist."""
    for module in MODEL_MODULES:
        importlib.import_module(module)


def registered_models() -> Tuple[str, ...]:
    import_model_modules()
    return tuple(sorted(_SPECS))


def _require_registered(name: str) -> None:
    models = registered_models()
    if name not in models:
        raise UnknownModelError(f"train_fn.main_module={name!r} is not a registered model; choose from {models}")


def model_spec(name: str) -> ModelSpec:
    """The registration of the model ``name``."""
    _require_registered(name)
    return _SPECS[name]


def model_task(name: str) -> str:
    """The task the model registered as ``name`` trains on: ``retrieval`` or ``ctr``."""
    return model_spec(name).task


def build_model(name: str, inputs: ModelInputs) -> torch.nn.Module:
    """The model registered as ``name``, built from ``inputs``."""
    return model_spec(name).builder(inputs)
