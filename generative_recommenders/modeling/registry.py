"""Models by name: ``train_fn.main_module = "HSTU"`` builds the model registered as ``HSTU``.

A model is a module file with a builder function decorated with
:func:`register_model`; the builder gets a :class:`ModelInputs` (what the
trainer knows of the data and the config) and returns the model. The module
is listed in ``MODEL_MODULES`` so that its registration runs when a model is
first looked up. The registration also names the model's task: ``retrieval``
(next-item full ranking over the catalogue) or ``ctr`` (click-through rate of a
target item given the behaviour sequence). README "Adding a model" walks through one.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Dict, Optional, Tuple

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


class UnknownModelError(UserError):
    """A model name that no builder is registered under."""


ModelBuilder = Callable[[ModelInputs], torch.nn.Module]
_BUILDERS: Dict[str, ModelBuilder] = {}
_TASKS: Dict[str, str] = {}


def register_model(name: str, task: str = "retrieval") -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: registers ``builder`` as the model ``name``, trained on ``task`` (one of ``TASKS``)."""
    if task not in TASKS:
        raise ValueError(f"model {name!r}: unknown task {task!r}; choose from {TASKS}")

    def register(builder: ModelBuilder) -> ModelBuilder:
        if name in _BUILDERS and _BUILDERS[name] is not builder:
            raise ValueError(f"a model named {name!r} is registered already ({_BUILDERS[name].__module__})")
        _BUILDERS[name] = builder
        _TASKS[name] = task
        return builder

    return register


def import_model_modules() -> None:
    """Imports every model file: their builders register, their gin configurables exist."""
    for module in MODEL_MODULES:
        importlib.import_module(module)


def registered_models() -> Tuple[str, ...]:
    import_model_modules()
    return tuple(sorted(_BUILDERS))


def _require_registered(name: str) -> None:
    models = registered_models()
    if name not in models:
        raise UnknownModelError(f"train_fn.main_module={name!r} is not a registered model; choose from {models}")


def model_task(name: str) -> str:
    """The task the model registered as ``name`` trains on: ``retrieval`` or ``ctr``."""
    _require_registered(name)
    return _TASKS[name]


def build_model(name: str, inputs: ModelInputs) -> torch.nn.Module:
    """The model registered as ``name``, built from ``inputs``."""
    _require_registered(name)
    return _BUILDERS[name](inputs)
