"""The trainer's configuration: one frozen object, built and checked from ``train_fn``'s arguments.

``train_fn`` keeps the HSTU reference's parameter names (its gin files load
unchanged); :meth:`TrainConfig.from_arguments` normalizes the reference's
aliases and refuses, before anything is read or written, any value that
cannot train.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple

import gin

from generative_recommenders.errors import UserError
from generative_recommenders.evaluation.metrics import METRIC_NAMES
from generative_recommenders.modeling.losses import SAMPLING_STRATEGIES
from generative_recommenders.modeling.registry import registered_models
from generative_recommenders.ops import jagged
from generative_recommenders.ops.sequences import ATTENTION_BACKENDS
from generative_recommenders.trainer.protocol import PROTOCOLS

# The reference's names for the text path; the item embedding module carries the text,
# so its input preprocessor and negative sampler are the plain ones.
_TEXT_ALIASES = {
    "LearnablePositionalEmbeddingWithTextPreprocessor": "LearnablePositionalEmbeddingInputFeaturesPreprocessor",
    "local_with_text": "local",
}
# Reference parameters with one supported value (other values are refused, never ignored).
_SINGLE_CHOICES = {
    "loss_module": ("SampledSoftmaxLoss",),
    "interaction_module_type": ("DotProduct",),
    "top_k_method": ("MIPSBruteForceTopK",),
    "feat_prep": ("LearnablePositionalEmbeddingInputFeaturesPreprocessor",),
}


class ConfigError(UserError):
    """A ``train_fn`` setting that cannot train."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one run (see ``train_fn`` for their meaning)."""

    dataset_name: str
    max_sequence_length: int
    local_batch_size: int
    eval_batch_size: int
    main_module: str
    dropout_rate: float
    user_embedding_norm: str
    sampling_strategy: str
    loss_module: str
    num_negatives: int
    item_l2_norm: bool
    temperature: float
    num_epochs: int
    learning_rate: float
    weight_decay: float
    num_warmup_steps: int
    eval_interval: int
    full_eval_every_n: int
    partial_eval_num_iters: int
    embedding_module_type: str
    item_embedding_dim: int
    interaction_module_type: str
    top_k_method: str
    l2_norm_eps: float
    enable_tf32: bool
    feat_prep: str
    text_embedding_model: Optional[str]
    random_seed: int
    gr_output_length: int
    eval_protocol: str
    selection_metric: str
    patience: Optional[int]
    checkpoint_every_n_steps: Optional[int]
    deterministic: bool
    length_bucketed_batches: bool
    autocast_bf16: bool
    rank_cap: Optional[int]
    attention_backend: str
    jagged_backend: str
    data_root: str
    output_root: str
    run_name: Optional[str]

    @property
    def num_positions(self) -> int:
        """Positions a sequence holds: the history, the appended target and the reference's output slots."""
        return self.max_sequence_length + self.gr_output_length + 1

    @property
    def with_text(self) -> bool:
        return self.embedding_module_type == "local_and_text"

    @property
    def validated(self) -> bool:
        return self.eval_protocol == "validated"

    @classmethod
    def from_arguments(cls, arguments: Dict[str, Any]) -> "TrainConfig":
        """``train_fn``'s arguments, aliases resolved and every value checked."""
        values = {field.name: arguments[field.name] for field in dataclasses.fields(cls)}
        values["sampling_strategy"] = _TEXT_ALIASES.get(values["sampling_strategy"], values["sampling_strategy"])
        values["feat_prep"] = _TEXT_ALIASES.get(values["feat_prep"], values["feat_prep"])
        config = cls(**values)
        config._check()
        return config

    def _check(self) -> None:
        for name, allowed in _SINGLE_CHOICES.items():
            _require(name, getattr(self, name), allowed)
        _require("main_module", self.main_module, registered_models())
        _require("sampling_strategy", self.sampling_strategy, SAMPLING_STRATEGIES)
        _require("embedding_module_type", self.embedding_module_type, ("local", "local_and_text"))
        _require("eval_protocol", self.eval_protocol, PROTOCOLS)
        _require("selection_metric", self.selection_metric, METRIC_NAMES)
        _require("user_embedding_norm", self.user_embedding_norm, ("l2_norm", "layer_norm"))
        _require("attention_backend", self.attention_backend, ATTENTION_BACKENDS)
        _require("jagged_backend", self.jagged_backend, jagged.BACKENDS)
        for name in (
            "max_sequence_length", "local_batch_size", "eval_batch_size", "num_negatives", "num_epochs",
            "eval_interval", "full_eval_every_n", "partial_eval_num_iters", "item_embedding_dim",
        ):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("num_warmup_steps", "gr_output_length", "random_seed"):
            _require_int(name, getattr(self, name), minimum=0)
        for name in ("patience", "checkpoint_every_n_steps", "rank_cap"):
            if getattr(self, name) is not None:
                _require_int(name, getattr(self, name), minimum=1, none_allowed=True)
        for name in ("dropout_rate", "learning_rate", "weight_decay", "temperature", "l2_norm_eps"):
            _require_number(name, getattr(self, name))
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"train_fn.dropout_rate must be in [0, 1), got {self.dropout_rate}")
        for name in ("learning_rate", "temperature", "l2_norm_eps"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"train_fn.{name} must be > 0, got {getattr(self, name)}")
        for name in ("item_l2_norm", "enable_tf32", "deterministic", "length_bucketed_batches", "autocast_bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train_fn.{name} must be True or False, got {getattr(self, name)!r}")
        if self.with_text != (self.text_embedding_model is not None):
            raise ConfigError(
                "train_fn.embedding_module_type = \"local_and_text\" and train_fn.text_embedding_model "
                "go together (set both, or neither)"
            )
        if self.patience is not None and not self.validated:
            raise ConfigError(
                "train_fn.patience needs the validated protocol: the reference protocol has no "
                "validation split, and stopping on the test set would select on it"
            )


def _require(name: str, value: Any, allowed: Tuple[Any, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"train_fn.{name}={value!r} is not supported; choose from {allowed}")


def _require_int(name: str, value: Any, minimum: int, none_allowed: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer" + (" or None" if none_allowed else "")
        raise ConfigError(f"train_fn.{name} must be {kind}, got {value!r}")
    if value < minimum:
        raise ConfigError(f"train_fn.{name} must be >= {minimum}, got {value}")


def _require_number(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"train_fn.{name} must be a number, got {value!r}")


def parse_gin(config_files: Sequence[str], bindings: Sequence[str]) -> None:
    """Clears gin and parses ``config_files`` then ``bindings``; a bad file or binding is a ConfigError."""
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings(list(config_files), list(bindings))
    except (ValueError, SyntaxError, OSError) as error:
        where = ", ".join(config_files) or "the bindings"
        raise ConfigError(f"invalid gin config {where}: {' '.join(str(error).split())}") from None


def bound_parameter(name: str, default: Any = None) -> Any:
    """The value the parsed gin config binds to ``name`` (e.g. ``train_fn.num_epochs``), else ``default``."""
    try:
        return gin.query_parameter(name)
    except ValueError:  # not bound: the function's default
        return default
