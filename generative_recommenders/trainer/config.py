"""The trainer's configuration: one frozen object, the one definition of every training option.

Each option is a field of :class:`TrainConfig`: its type, default, allowed
values and meaning (the comment beside it) are written there once. ``train_fn``'s
gin signature (the HSTU reference's parameter names, so its gin files load
unchanged), the checks and the recorded hyperparameters are derived from the
fields. :meth:`TrainConfig.from_arguments` resolves the reference's aliases and
refuses, before anything is read or written, any value that cannot train; what
depends on the model's task (its losses, selection metrics, protocols) is
checked by the task (``tasks.py``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import tokenize
import typing
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import gin

from generative_recommenders.errors import UserError, one_line
from generative_recommenders.modeling.losses import SAMPLING_STRATEGIES
from generative_recommenders.modeling.registry import model_task, registered_models
from generative_recommenders.ops import jagged
from generative_recommenders.ops.sequences import ATTENTION_BACKENDS, DEFAULT_ATTENTION_BACKEND
from generative_recommenders.trainer.protocol import PROTOCOLS

# The reference's names for the text path; the item embedding module carries the text,
# so its input preprocessor and negative sampler are the plain ones.
_TEXT_ALIASES = {
    "LearnablePositionalEmbeddingWithTextPreprocessor": "LearnablePositionalEmbeddingInputFeaturesPreprocessor",
    "local_with_text": "local",
}
# Reference parameters accepted and covered otherwise (save_ckpt_every_n, in epochs: the
# per-epoch checkpoints cover it).
REFERENCE_ONLY_PARAMETERS = {"save_ckpt_every_n": 1000}
# Not options of a run: how this process runs it (train_fn's own arguments, never gin's).
PROCESS_ARGUMENTS = {"resume": False, "overwrite": False, "context": None}


# Below this, 1 / temperature (the logit of a unit similarity) is past float32's largest value.
_SMALLEST_TEMPERATURE = 3e-39


class ConfigError(UserError):
    """A ``train_fn`` setting that cannot train."""


def option(
    default: Any,
    choices: Union[Tuple[Any, ...], Callable[[], Tuple[Any, ...]], None] = None,
    minimum: Optional[int] = None,
    within: Optional[Tuple[float, float, bool]] = None,
) -> Any:
    """A :class:`TrainConfig` field: ``choices`` (or a function giving them), an integer ``minimum``,
    or ``within = (low, high, low_included)``: a number in ``[low, high)`` or ``(low, high)``;
    ``high`` is never included, ``low = 0`` with ``high = inf`` means "> 0"."""
    return dataclasses.field(default=default, metadata={"choices": choices, "minimum": minimum, "within": within})


_POSITIVE = (0.0, float("inf"), False)
_SHARE = (0.0, 1.0, False)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every setting of one run. Writes to ``<output_root>/<dataset_name>/<run_name>-s<random_seed>/``."""

    # -- data
    dataset_name: str = "ml100k"  # the prepared folder <data_root>/<dataset_name>
    data_root: str = "tmp"  # where prepared datasets are (relative: to the current folder)
    output_root: str = "exps"  # where run folders are written
    run_name: Optional[str] = None  # the run folder's name before -s<seed> (default: the model's description)
    max_sequence_length: int = option(200, minimum=1)  # history cap; a sequence holds num_positions positions
    gr_output_length: int = option(10, minimum=0)  # the reference's extra output positions
    text_embedding_model: Optional[str] = None  # the frozen item text table's encoder (with local_and_text)
    # Validated retrieval only: this seeded share of the items leaves training (as targets, in histories
    # and from the sampled negatives); the test users whose target is one of them report under cold_items.
    cold_item_share: Optional[float] = option(None, within=_SHARE)

    # -- model
    main_module: str = option("HSTU", choices=lambda: registered_models())  # the registered model to train
    item_embedding_dim: int = option(64, minimum=1)
    embedding_module_type: str = option("local", choices=("local", "local_and_text"))  # ids, or ids + text
    dropout_rate: float = option(0.2, within=(0.0, 1.0, True))
    user_embedding_norm: str = option("l2_norm", choices=("l2_norm", "layer_norm"))
    item_l2_norm: bool = True
    l2_norm_eps: float = option(1e-6, within=_POSITIVE)
    interaction_module_type: str = option("DotProduct", choices=("DotProduct",))
    feat_prep: str = option(
        "LearnablePositionalEmbeddingInputFeaturesPreprocessor",
        choices=("LearnablePositionalEmbeddingInputFeaturesPreprocessor",),
    )

    # -- training
    # The training loss; the model's registration says which it trains with (tasks.py).
    loss_module: str = option("SampledSoftmaxLoss", choices=("SampledSoftmaxLoss", "BinaryCrossEntropyLoss"))
    sampling_strategy: str = option("local", choices=SAMPLING_STRATEGIES)  # where negatives come from
    num_negatives: int = option(128, minimum=1)  # sampled negatives per position
    temperature: float = option(0.05, within=_POSITIVE)  # logits are divided by it
    local_batch_size: int = option(128, minimum=1)  # sequences per step and process
    num_epochs: int = option(101, minimum=1)
    learning_rate: float = option(1e-3, within=_POSITIVE)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    num_warmup_steps: int = option(0, minimum=0)  # linear learning-rate warm-up
    # Multiply the learning rate by this factor after lr_plateau_patience + 1 validations without a
    # better selection_metric (needs the validated protocol and no warm-up); None: off.
    lr_plateau_factor: Optional[float] = option(None, within=_SHARE)
    lr_plateau_patience: int = option(1, minimum=0)
    random_seed: int = option(42, minimum=0)
    # Retrieval examples: one window per user (its newest max_sequence_length training items, a loss at
    # every position), or GRE-B's one sample per training position with the items before it, the loss at
    # that position only (data/per_position.py).
    training_samples: str = option("window", choices=("window", "per_position"))
    adam_beta2: float = option(0.98, within=(0.0, 1.0, True))  # AdamW's second beta (GRE-B: 0.999)
    grad_clip_norm: Optional[float] = option(None, within=_POSITIVE)  # clip the gradients' total norm (GRE-B CTR: 1.0)
    # Batches of sequences of similar length: less padding, faster; batches are less random.
    length_bucketed_batches: bool = False
    autocast_bf16: bool = False  # the training step in bfloat16 autocast on CUDA
    enable_tf32: bool = False
    # torch's deterministic kernels: reruns and resumes bit-exact (slower where a kernel has no
    # deterministic fast path).
    deterministic: bool = False
    # A checkpoint every N steps, besides the one at every epoch's end (None: epoch ends only).
    checkpoint_every_n_steps: Optional[int] = option(1000, minimum=1)
    eval_interval: int = option(100, minimum=1)  # the reference's name: steps between debug-level loss lines
    attention_backend: str = option(DEFAULT_ATTENTION_BACKEND, choices=ATTENTION_BACKENDS)  # ops backends
    jagged_backend: str = option(jagged.DEFAULT_BACKEND, choices=jagged.BACKENDS)

    # -- evaluation
    # validated: select on the second-to-last item, test the last once; reference: the paper's (protocol.py).
    eval_protocol: str = option("validated", choices=PROTOCOLS)
    selection_metric: str = "ndcg@10"  # the validation metric that selects (the task lists its metrics)
    patience: Optional[int] = option(None, minimum=1)  # validated: stop after N evaluations without a better one
    eval_batch_size: int = option(128, minimum=1)
    full_eval_every_n: int = option(1, minimum=1)  # epochs between full evaluations (reference protocol)
    partial_eval_num_iters: int = option(32, minimum=1)  # batches of a partial evaluation in between
    # Retrieval: every item the user had before the target leaves the ranking, and a target that is one
    # of them is a miss (GRE-B); off: the history window is masked.
    mask_seen_items: bool = False
    # Caps ranks as the reference's top-2,500 retrieval (2500); None: exact ranks.
    rank_cap: Optional[int] = option(None, minimum=1)
    top_k_method: str = option("MIPSBruteForceTopK", choices=("MIPSBruteForceTopK",))

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
        """``train_fn``'s arguments (unknown names refused), aliases resolved and every value checked."""
        values = {name: value for name, value in arguments.items() if name not in REFERENCE_ONLY_PARAMETERS}
        unknown = sorted(set(values) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"train_fn.{unknown[0]} is not a setting of train_fn; see TrainConfig for the settings")
        for name in ("sampling_strategy", "feat_prep"):
            if name in values:
                values[name] = _TEXT_ALIASES.get(values[name], values[name])
        config = cls(**values)
        config._check()
        return config

    def hyperparameters(self) -> Dict[str, Any]:
        """The settings as TensorBoard's hyperparameters take them (None as "none")."""
        return {name: "none" if value is None else value for name, value in dataclasses.asdict(self).items()}

    def _check(self) -> None:
        for field, kind in _field_types().items():
            _check_value(field, kind, getattr(self, field.name))
        if self.temperature < _SMALLEST_TEMPERATURE:
            raise ConfigError(
                f"train_fn.temperature = {self.temperature:g} is too small: a similarity divided by it "
                f"overflows float32 and the loss becomes NaN; use at least {_SMALLEST_TEMPERATURE:.1g} "
                "(the reference uses 0.05)"
            )
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
        if self.cold_item_share is not None and not self.validated:
            raise ConfigError("train_fn.cold_item_share needs the validated protocol; drop it or use validated")
        if self.lr_plateau_factor is not None and (not self.validated or self.num_warmup_steps):
            raise ConfigError(
                "train_fn.lr_plateau_factor steps on the validation metric: it needs the validated protocol "
                "and train_fn.num_warmup_steps = 0"
            )


@functools.lru_cache(maxsize=None)
def _field_types() -> Dict[dataclasses.Field, Tuple[type, bool]]:
    """Each field with its value type and whether None is allowed."""
    hints = typing.get_type_hints(TrainConfig)
    out = {}
    for field in dataclasses.fields(TrainConfig):
        hint = hints[field.name]
        arguments = [a for a in typing.get_args(hint) if a is not type(None)]
        out[field] = (arguments[0], True) if typing.get_origin(hint) is Union else (hint, False)
    return out


def _check_value(field: dataclasses.Field, kind: Tuple[type, bool], value: Any) -> None:
    name, (value_type, none_allowed) = f"train_fn.{field.name}", kind
    if value is None and none_allowed:
        return
    described = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}[value_type]
    accepted = (int, float) if value_type is float else value_type
    if (isinstance(value, bool) and value_type is not bool) or not isinstance(value, accepted):
        raise ConfigError(f"{name} must be {described}{' or None' if none_allowed else ''}, got {value!r}")
    choices, minimum, within = (field.metadata.get(key) for key in ("choices", "minimum", "within"))
    if choices is not None:
        allowed = choices() if callable(choices) else choices
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not supported; choose from {tuple(allowed)}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if within is not None:
        low, high, low_included = within
        if not ((low <= value if low_included else low < value) and value < high):
            where = "> 0" if high == float("inf") else f"in {'[' if low_included else '('}{low:g}, {high:g})"
            raise ConfigError(f"{name} must be {where}{' or None' if none_allowed else ''}, got {value}")


def train_fn_signature() -> inspect.Signature:
    """``train_fn``'s parameters: every :class:`TrainConfig` field with its default, the reference-only
    parameters, then the process's own arguments."""
    parameters = [
        inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default)
        for field in dataclasses.fields(TrainConfig)
    ]
    for name, default in {**REFERENCE_ONLY_PARAMETERS, **PROCESS_ARGUMENTS}.items():
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default))
    return inspect.Signature(parameters)


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
