"""The trainer's configuration: one frozen object, built and checked from ``train_fn``'s arguments.

``train_fn`` keeps the HSTU reference's parameter names (its gin files load
unchanged); :meth:`TrainConfig.from_arguments` normalizes the reference's
aliases and refuses, before anything is read or written, any value that
cannot train.
"""

from __future__ import annotations

import dataclasses
import tokenize
from typing import Any, Dict, Optional, Sequence, Tuple

import gin

from generative_recommenders.errors import UserError, one_line
from generative_recommenders.evaluation.metrics import METRIC_NAMES
from generative_recommenders.modeling.losses import SAMPLING_STRATEGIES
from generative_recommenders.modeling.registry import model_task, registered_models
from generative_recommenders.ops import jagged
from generative_recommenders.ops.sequences import ATTENTION_BACKENDS
from generative_recommenders.trainer.protocol import PROTOCOLS

# The reference's names for the text path; the item embedding module carries the text,
# so its input preprocessor and negative sampler are the plain ones.
_TEXT_ALIASES = {
    "LearnablePositionalEmbeddingWithTextPreprocessor": "LearnablePositionalEmbeddingInputFeaturesPreprocessor",
    "local_with_text": "local",
}
# Retrieval models train with either (GRE-B's SASRec and DSSM: binary cross-entropy); DSSM and
# the CTR models with binary cross-entropy only.
LOSS_MODULES = ("SampledSoftmaxLoss", "BinaryCrossEntropyLoss")
BCE_ONLY_MODELS = ("DSSM",)
# Selection keeps the highest value: CTR runs select on AUC.
CTR_SELECTION_METRICS = ("auc",)
# Reference parameters with one supported value (other values are refused, never ignored).
_SINGLE_CHOICES = {
    "loss_module": LOSS_MODULES,
    "interaction_module_type": ("DotProduct",),
    "top_k_method": ("MIPSBruteForceTopK",),
    "feat_prep": ("LearnablePositionalEmbeddingInputFeaturesPreprocessor",),
}


# Below this, 1 / temperature (the logit of a unit similarity) is past float32's largest value.
_SMALLEST_TEMPERATURE = 3e-39


class ConfigError(UserError):
    """A ``train_fn`` setting that cannot train."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one run: ``train_fn``'s parameters, checked.

    Writes to ``<output_root>/<dataset_name>/<run_name>-s<random_seed>/``.
    ``max_sequence_length`` caps the history; a sequence holds
    ``max_sequence_length + gr_output_length + 1`` positions. ``eval_interval``
    is the reference's name for the interval, in steps, of the debug-level
    loss lines (every step's loss goes to TensorBoard). A checkpoint is written
    at the end of every epoch and every ``checkpoint_every_n_steps`` steps
    (``None``: epoch ends only); the reference's ``save_ckpt_every_n`` (in
    epochs) is accepted and covered by the per-epoch checkpoints.
    A run folder holding another configuration's run, or an unfinished run
    (without ``resume``), is refused; one holding this configuration's
    finished run is left as it is and its results returned; a folder is
    locked while a run trains in it (``run_folder.py``). ``deterministic=True``
    switches torch to its deterministic kernels for the process (slower where
    a kernel has no deterministic fast path): reruns and resumes are then
    bit-exact, where otherwise gradients that accumulate with atomic adds may
    differ in the last bits. ``patience``: under ``validated``, stop after
    that many evaluations without a better ``selection_metric``.
    ``length_bucketed_batches``: batches of sequences of similar length (less
    padding, faster; batches are less random). ``autocast_bf16``: the training
    step in bfloat16 autocast on CUDA. ``rank_cap=2500`` caps ranks as the
    reference's top-2,500 retrieval (default: exact); the paper's numbers also
    need ``eval_protocol="reference"``, under which a target repeating a
    history item is a miss, as the paper counts it. ``attention_backend``
    (``auto``, ``padded``, ``torch``, ``triton``) and ``jagged_backend``
    (``auto``, ``torch``, ``fbgemm``) choose the ops' backends (default: the
    environment variables ``GR_ATTENTION_BACKEND`` / ``GR_JAGGED_BACKEND``,
    else ``auto``). In a multi-process run each rank trains on its share of
    every batch-order, evaluates its share of the users, and rank 0 alone
    writes logs, results and checkpoints.

    The model's task (the registry's) decides the data views, loss and
    evaluation (``tasks.py``): ``retrieval`` trains with ``loss_module``
    (``SampledSoftmaxLoss``, or ``BinaryCrossEntropyLoss`` with
    ``num_negatives`` uniform negatives, DSSM's only loss) and reports every
    evaluation also per target-popularity group; ``ctr`` (DIN, DeepFM) trains
    with binary cross-entropy on labelled samples (``loss_module =
    "BinaryCrossEntropyLoss"``, validated protocol, ``selection_metric =
    "auc"``). ``cold_item_share`` (validated retrieval only; default off)
    removes that seeded share of the items from training (as targets, in
    histories and from the sampled negatives) and reports the test users whose
    target is one of them under ``cold_items``.
    ``lr_plateau_factor`` (default off) multiplies the learning rate by that
    factor after ``lr_plateau_patience`` + 1 validations without a better
    ``selection_metric`` (needs ``num_warmup_steps = 0``).
    """

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
    cold_item_share: Optional[float] = None
    lr_plateau_factor: Optional[float] = None
    lr_plateau_patience: int = 1

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

    @property
    def task(self) -> str:
        """``retrieval`` or ``ctr``: what ``main_module`` trains on (the model registry says)."""
        return model_task(self.main_module)

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
        metrics = CTR_SELECTION_METRICS if self.task == "ctr" else METRIC_NAMES
        if self.task == "ctr" and self.selection_metric not in metrics:  # a retrieval config naming a CTR model
            raise ConfigError(
                f'train_fn.main_module = "{self.main_module}" is a CTR model (it scores (history, item) pairs, '
                'judged by AUC), not a retrieval model: it trains with train_fn.loss_module = '
                '"BinaryCrossEntropyLoss" and train_fn.selection_metric = "auc"; start from '
                f"configs/greb/{self.main_module.lower()}.gin"
            )
        _require("selection_metric", self.selection_metric, metrics)
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
        if self.temperature < _SMALLEST_TEMPERATURE:
            raise ConfigError(
                f"train_fn.temperature = {self.temperature:g} is too small: a similarity divided by it "
                f"overflows float32 and the loss becomes NaN; use at least {_SMALLEST_TEMPERATURE:.1g} "
                "(the reference uses 0.05)"
            )
        for name in ("item_l2_norm", "enable_tf32", "deterministic", "length_bucketed_batches", "autocast_bf16"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train_fn.{name} must be True or False, got {getattr(self, name)!r}")
        if self.with_text != (self.text_embedding_model is not None):
            raise ConfigError(
                "train_fn.embedding_module_type = \"local_and_text\" and train_fn.text_embedding_model "
                "go together (set both, or neither)"
            )
        self._check_task()
        self._check_schedule()
        if self.patience is not None and not self.validated:
            raise ConfigError(
                "train_fn.patience needs the validated protocol: the reference protocol has no "
                "validation split, and stopping on the test set would select on it"
            )


    def _check_task(self) -> None:
        if self.task == "ctr" or self.main_module in BCE_ONLY_MODELS:
            _require("loss_module", self.loss_module, ("BinaryCrossEntropyLoss",))
        if self.task == "ctr":
            if not self.validated:
                raise ConfigError(
                    f"train_fn.eval_protocol = \"{self.eval_protocol}\": {self.main_module} (a CTR model) trains "
                    "under the validated protocol only (its validation split selects the epoch)"
                )
            for name in ("cold_item_share", "length_bucketed_batches"):
                if getattr(self, name):
                    raise ConfigError(f"train_fn.{name} is for retrieval models; drop it for {self.main_module}")
        if self.cold_item_share is not None:
            _require_number("cold_item_share", self.cold_item_share)
            if not 0.0 < self.cold_item_share < 1.0:
                raise ConfigError(f"train_fn.cold_item_share must be in (0, 1) or None, got {self.cold_item_share}")
            if not self.validated:
                raise ConfigError("train_fn.cold_item_share needs the validated protocol; drop it or use validated")

    def _check_schedule(self) -> None:
        _require_int("lr_plateau_patience", self.lr_plateau_patience, minimum=0)
        if self.lr_plateau_factor is None:
            return
        _require_number("lr_plateau_factor", self.lr_plateau_factor)
        if not 0.0 < self.lr_plateau_factor < 1.0:
            raise ConfigError(f"train_fn.lr_plateau_factor must be in (0, 1) or None, got {self.lr_plateau_factor}")
        if not self.validated or self.num_warmup_steps:
            raise ConfigError(
                "train_fn.lr_plateau_factor steps on the validation metric: it needs the validated protocol "
                "and train_fn.num_warmup_steps = 0"
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
    except (ValueError, SyntaxError, OSError, tokenize.TokenError) as error:  # TokenError: a binding cut short
        where = _unparsable(config_files, bindings) or f"gin config {', '.join(config_files)}"
        detail = (
            f"{error.args[0]} (a bracket or quote left open)" if isinstance(error, tokenize.TokenError) else one_line(error)
        )
        raise ConfigError(f"invalid {where}: {' '.join(detail.split())}") from None


def _unparsable(config_files: Sequence[str], bindings: Sequence[str]) -> Optional[str]:
    """The binding (``--gin_bindings 'X'``) that gin cannot parse, where the config files parse."""
    gin.clear_config()
    try:
        try:
            gin.parse_config_files_and_bindings(list(config_files), [], finalize_config=False)
        except (ValueError, SyntaxError, OSError):
            return None
        for binding in bindings:
            try:
                gin.parse_config(binding)
            except Exception:  # alone, a binding cut short fails in the tokenizer (tokenize.TokenError)
                return f"--gin_bindings {binding!r}"
        return None
    finally:
        gin.clear_config()


def bound_parameter(name: str, default: Any = None) -> Any:
    """The value the parsed gin config binds to ``name`` (e.g. ``train_fn.num_epochs``), else ``default``."""
    try:
        return gin.query_parameter(name)
    except ValueError:  # not bound: the function's default
        return default
