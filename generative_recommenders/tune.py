"""Hyper-parameter search with Optuna: ``gr-tune``.

    gr-tune --gin_config_file ml100k/hstu-sampled-softmax-n128-final --space space.toml --n_trials 20
    gr-tune ... --sampler grid                        # every combination of the space's values
    gr-tune ... --storage postgresql://user@host/db   # workers on several machines share one study

Each trial is a normal training run of the config plus the trial's bindings, in
its own run folder (``<output_dir>/trials/<dataset>/trial-NNNN-s<seed>``).
Trials are compared on the validation metric alone (``train_fn.selection_metric``
of the validated protocol, higher is better): each trial's run stops before its
test, and the test set is read once, for the best trial, when the search ends.
Every full validation is reported to Optuna's pruner (median by default), which
stops a trial that trails the others at the same epoch.

The study is stored in ``<output_dir>/study.db`` (SQLite) unless ``--storage``
names another database Optuna supports; rerunning the same command resumes a
killed search, and several workers (processes or machines) started on one
storage share its trials, ``--n_trials`` counting finished trials of the study.
Each worker sends a heartbeat: the trial of a worker that died is marked failed
once its heartbeat is ``2 x --heartbeat_seconds`` old and is retried, with the
same parameters and from its run's checkpoint, by the next worker that asks.

What it writes to ``--output_dir`` (default ``<output_root>/tune/<study name>``):
``best.gin`` (the config with the best trial's bindings: ``gr-train
--gin_config_file <output_dir>/best.gin`` trains it), ``best.json`` (its
parameters, validation value and test metrics), ``trials.csv`` (every trial),
and Optuna's ``importance.png`` and ``history.png`` (with SVG and PDF twins).

The search space is a TOML file with one table per gin binding: a range
(``low``/``high``, ``log = true`` for a log scale, ``step`` for a grid of it;
whole numbers make an integer parameter) or a list of ``choices``::

    ["train_fn.learning_rate"]
    low = 1e-4
    high = 1e-2
    log = true

    ["train_fn.dropout_rate"]
    low = 0.0
    high = 0.5
    step = 0.1

    ["train_fn.weight_decay"]
    choices = [0.0, 1e-4, 1e-2]
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from generative_recommenders.atomic_files import atomic_write_text
from generative_recommenders.config_files import resolve_config
from generative_recommenders.errors import UserError, run_command
from generative_recommenders.logs import configure_logging, get_logger
from generative_recommenders.trainer.observers import TrainingObserver, observing

logger = get_logger(__name__)

SAMPLERS = ("tpe", "grid")
PRUNERS = ("median", "none")
STUDY_FILE = "study.db"
SPACE_SUFFIX = ".toml"
_OPEN_ATTEMPTS = 5
TRIALS_DIR = "trials"
DEFAULT_TRIALS = 20
_BINDING_NAME = re.compile(r"^[A-Za-z_][\w./]*\.[A-Za-z_]\w*$")
_RANGE_KEYS = {"low", "high", "log", "step"}


class TuneError(UserError):
    """A bad search space, storage or tuning setting."""


class DeferredTest(Exception):
    """Raised before a trial's test: trials are compared on validation, and only the best is tested."""


# ------------------------------------------------------------------ the search space


@dataclass(frozen=True)
class Parameter:
    """One gin binding to search: a range (``low``..``high``, maybe ``log``, maybe ``step``) or ``choices``."""

    name: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[Tuple[Any, ...]] = None

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int)
        )

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.is_int:
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def grid(self) -> List[Any]:
        """The values a grid search tries."""
        if self.choices is not None:
            return list(self.choices)
        if self.step is None or self.log:
            raise TuneError(
                f'search space ["{self.name}"]: a grid needs choices = [...] or a linear range with a step'
            )
        count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
        values = [self.low + i * self.step for i in range(count)]
        return values if self.is_int else [round(v, 12) for v in values]


def gin_value(value: Any) -> str:
    """``value`` as gin reads it: strings quoted (but ``@references`` and ``%macros``), the rest as Python."""
    if isinstance(value, str) and not value.startswith(("@", "%")):
        return json.dumps(value)
    return str(value)


def _parameter(path: Path, name: str, table: Any) -> Parameter:
    where = f'{path}: ["{name}"]'
    if not _BINDING_NAME.match(name):
        raise TuneError(f"{where}: not a gin binding; name one as configurable.parameter, e.g. train_fn.learning_rate")
    if not isinstance(table, dict):
        raise TuneError(f"{where}: give a table (low/high or choices), got {table!r}")
    if "choices" in table:
        extra = set(table) - {"choices"}
        choices = table["choices"]
        if extra or not isinstance(choices, list) or not choices:
            raise TuneError(f"{where}: choices = [...] is a non-empty list and stands alone (drop {sorted(extra)})")
        return Parameter(name, choices=tuple(choices))
    unknown = set(table) - _RANGE_KEYS
    if unknown or not {"low", "high"} <= set(table):
        raise TuneError(f"{where}: a range has low and high (and maybe log, step); "
                        f"{'unknown keys ' + ', '.join(sorted(unknown)) if unknown else 'low or high is missing'}")
    low, high, log, step = table["low"], table["high"], table.get("log", False), table.get("step")
    numbers = [v for v in (low, high, step) if v is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in numbers) or not isinstance(log, bool):
        raise TuneError(f"{where}: low, high and step are numbers and log is true or false")
    if not low < high:
        raise TuneError(f"{where}: low {low} must be less than high {high}")
    if log and (low <= 0 or step is not None):
        raise TuneError(f"{where}: a log range has low > 0 and no step")
    if step is not None and step <= 0:
        raise TuneError(f"{where}: step {step} must be positive")
    return Parameter(name, low, high, log, step)


def read_space(path: Union[str, Path]) -> List[Parameter]:
    """Reads and checks a search space file (TOML, one table per binding): a path or a shipped one's name."""
    path = resolve_config(path, SPACE_SUFFIX, "search space")
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise TuneError(f"{path}: not valid TOML ({error}); see gr-tune --help for the format") from None
    if not document:
        raise TuneError(f"{path}: the search space is empty; add a table per gin binding, e.g. [\"train_fn.learning_rate\"]")
    return [_parameter(path, name, table) for name, table in document.items()]


# ------------------------------------------------------------------ the study


@dataclass
class TuneSettings:
    """What one search trains and where it writes."""

    config_file: str
    space: List[Parameter]
    output_dir: Path
    bindings: List[str] = field(default_factory=list)  # the config's extra bindings, every trial's
    metric: str = "ndcg@10"

    def trial_bindings(self, params: Dict[str, Any], run_name: str) -> List[str]:
        return [
            *self.bindings,
            *(f"{name} = {gin_value(value)}" for name, value in params.items()),
            f'train_fn.output_root = "{self.output_dir / TRIALS_DIR}"',
            f'train_fn.run_name = "{run_name}"',
        ]


def _checked_metric(settings: TuneSettings) -> str:
    """Parses the config with each parameter's first value; returns the selection metric."""
    from generative_recommenders.trainer.config import ConfigError, parse_gin
    from generative_recommenders.trainer.train import config_from_gin

    first = {p.name: p.choices[0] if p.choices is not None else p.low for p in settings.space}
    try:
        parse_gin([settings.config_file], settings.trial_bindings(first, "check"))
        config = config_from_gin()
    except ConfigError as error:
        raise TuneError(f"the search space does not fit {settings.config_file}: {error}") from None
    if not config.validated:
        raise TuneError(
            f"{settings.config_file}: tuning compares trials on validation, which the "
            f"{config.eval_protocol} protocol has none of; use train_fn.eval_protocol = \"validated\""
        )
    return config.selection_metric


def open_study(
    storage: str,
    study_name: str,
    sampler: str = "tpe",
    space: Sequence[Parameter] = (),
    pruner: str = "median",
    heartbeat_seconds: int = 60,
    max_retry: int = 2,
    seed: Optional[int] = None,
):
    """Creates or loads the study ``study_name`` in ``storage`` (a database URL), with heartbeats
    and a retry of the trials of dead workers."""
    import optuna
    import sqlalchemy.exc
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if sampler == "grid":
        chosen = optuna.samplers.GridSampler({p.name: p.grid() for p in space}, seed=seed)
    else:
        chosen = optuna.samplers.TPESampler(seed=seed)
    chosen_pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
        if pruner == "median"
        else optuna.pruners.NopPruner()
    )
    try:
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                rdb = RDBStorage(
                    storage,
                    heartbeat_interval=heartbeat_seconds,
                    grace_period=2 * heartbeat_seconds,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=max_retry),
                )
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError):
                # Workers started together race to create the tables ("already exists"); the loser
                # finds them made on its next try. (A server that is not there fails every try.)
                if attempt == _OPEN_ATTEMPTS - 1:
                    raise
                time.sleep(0.5 * (attempt + 1))
        return optuna.create_study(
            storage=rdb, study_name=study_name, direction="maximize", sampler=chosen,
            pruner=chosen_pruner, load_if_exists=True,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
        first_line = " ".join(str(error).split("\n")[0].split())
        raise TuneError(f"--storage {storage}: cannot open the study ({first_line}); give a database URL "
                        "such as sqlite:///study.db or postgresql://user:password@host/database") from None


def _fail_stale_trials(study) -> None:
    """Marks failed (and so queues for a retry) the trials of workers whose heartbeat stopped,
    before this worker counts what is left; Optuna does it too before each trial it starts."""
    from optuna.storages import fail_stale_trials

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fail_stale_trials(study)


def finished_trials(study) -> int:
    """Trials that count towards ``--n_trials``: completed or pruned (failed ones are retried)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def optimize(study, objective, n_trials: int) -> None:
    """Runs trials in this worker until the study has ``n_trials`` finished ones (a grid: or is exhausted).
    An error in a trial (other than pruning) marks it failed and ends the worker with that error."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    remaining = n_trials - finished_trials(study)
    if remaining > 0:
        study.optimize(
            objective, n_trials=remaining, catch=(),
            callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))],
        )


def best_validation(results: Dict[str, Any], metric: str) -> float:
    """The best full validation ``metric`` of a run's results (what the validated protocol selects on)."""
    values = [e["metrics"][metric] for e in results.get("evaluations", []) if e["split"] == "valid" and e["full"]]
    if not values:
        raise TuneError(f"{results.get('run_dir')}: the run has no full validation of {metric}")
    return max(values)


class _TrialObserver(TrainingObserver):
    """Reports each validation to the trial (the pruner may stop it) and stops the run before its test."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.run_dir: Optional[Path] = None

    def validated(self, run_dir: Path, epoch: int, metrics: Dict[str, float]) -> None:
        import optuna

        self.trial.report(metrics[self.metric], epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"validation {self.metric} {metrics[self.metric]:.4f} at epoch {epoch}")

    def before_test(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        raise DeferredTest(str(run_dir))


def _run_name(trial: Any) -> str:
    """A retried trial trains in the folder of the trial it retries, resuming from its checkpoint."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    if not hasattr(trial, "system_attrs"):  # a running Trial: its frozen record holds the history
        trial = next(t for t in trial.study.get_trials(deepcopy=False) if t.number == trial.number)
    history = RetryHeartbeatStaleTrialCallback.retry_history(trial)
    return f"trial-{(history[0] if history else trial.number):04d}"


def _train(settings: TuneSettings, bindings: List[str]) -> Dict[str, Any]:
    from generative_recommenders.trainer.train import train_config_file

    return train_config_file(settings.config_file, bindings, resume=True)


def make_objective(settings: TuneSettings):
    """The objective of a trial: train the config with its parameters, up to its test; the best validation."""
    from generative_recommenders.trainer.run_log import RESULTS_FILE

    def objective(trial: Any) -> float:
        params = {p.name: p.suggest(trial) for p in settings.space}
        observer = _TrialObserver(trial, settings.metric)
        run_name = _run_name(trial)
        trial.set_user_attr("run_name", run_name)  # pruned and failed trials too
        try:
            with observing(observer):
                results = _train(settings, settings.trial_bindings(params, run_name))
        except DeferredTest:  # the run's training is over and saved
            results = json.loads((observer.run_dir / RESULTS_FILE).read_text(encoding="utf-8"))
        return best_validation(results, settings.metric)

    return objective


# ------------------------------------------------------------------ results


def _best_gin(settings: TuneSettings, trial: Any) -> str:
    tuned = [f"{name} = {gin_value(value)}" for name, value in trial.params.items()]
    return "\n".join([
        f"# The best trial ({trial.number}) of a search: validation {settings.metric} = {trial.value:.6f}.",
        f"# {settings.config_file}, then the search's bindings and the tuned values (later bindings win).",
        Path(settings.config_file).read_text(encoding="utf-8").rstrip(),
        "",
        "# The search's bindings",
        *[b for b in settings.bindings if not b.startswith(("train_fn.output_root", "train_fn.run_name"))],
        "# Tuned",
        *tuned,
        "",
    ])


def _trials_frame(study):
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    frame["duration"] = frame["duration"].dt.total_seconds().round(1) if "duration" in frame else None
    return frame.rename(columns={"value": f"valid_{study.user_attrs.get('metric', 'value')}"})


def _write_plots(study, output_dir: Path) -> List[Path]:
    """Optuna's history and importance plots (importance needs two completed trials)."""
    import matplotlib
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots
    from optuna.trial import TrialState

    from generative_recommenders.reports.figures import save_figures

    written = []
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    wanted = [("history", plots.plot_optimization_history)]
    if len(completed) >= 2 and len({tuple(sorted(t.params.items())) for t in completed}) >= 2:
        wanted.append(("importance", plots.plot_param_importances))
    for name, plot in wanted:
        # Optuna's plots set a global style: rc_context puts the caller's back afterwards.
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore")
            axes = plot(study)
            figure = axes.figure
            figure.set_size_inches(6, 3.2)
            written += save_figures(figure, output_dir / name)
        plt.close(figure)
    return written


def finish(study, settings: TuneSettings, test_best: bool = True) -> Optional[Dict[str, Any]]:
    """Writes the trials table, the plots, ``best.gin`` and ``best.json``; tests the best trial (once:
    a finished run returns its results) unless trials still run elsewhere. Returns ``best.json``'s record."""
    from optuna.trial import TrialState

    output_dir = settings.output_dir
    frame = _trials_frame(study)
    atomic_write_text(output_dir / "trials.csv", frame.to_csv(index=False))
    logger.info("%s", frame.drop(columns=[c for c in frame.columns if c.startswith("user_attrs")]).to_string(index=False))
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        logger.info("no trial completed: nothing to choose from")
        return None
    best = study.best_trial
    atomic_write_text(output_dir / "best.gin", _best_gin(settings, best))
    record: Dict[str, Any] = {
        "trial": best.number, "params": best.params, "metric": settings.metric, "validation": best.value,
        "run_name": best.user_attrs.get("run_name"), "test": None,
    }
    unfinished = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if test_best and unfinished:
        logger.info("%d trials still run elsewhere: the worker that ends last tests the best", len(unfinished))
    elif test_best:
        results = _train(settings, settings.trial_bindings(best.params, _run_name(best)))
        record["test"], record["run_dir"] = results["best"]["test"], results["run_dir"]
        logger.info("best trial %d: validation %s %.4f; test %s", best.number, settings.metric, best.value,
                    ", ".join(f"{k} {v:.4f}" for k, v in record["test"].items()))
    atomic_write_text(output_dir / "best.json", json.dumps(record, indent=2))
    for path in _write_plots(study, output_dir):
        logger.info("wrote %s", path)
    logger.info("wrote %s, %s and %s", output_dir / "trials.csv", output_dir / "best.gin", output_dir / "best.json")
    return record


def tune(
    settings: TuneSettings,
    n_trials: Optional[int],
    storage: Optional[str] = None,
    study_name: Optional[str] = None,
    sampler: str = "tpe",
    pruner: str = "median",
    heartbeat_seconds: int = 60,
    max_retry: int = 2,
    seed: Optional[int] = None,
    test_best: bool = True,
) -> Optional[Dict[str, Any]]:
    """Runs (or resumes, or joins) a search and writes its results; returns ``best.json``'s record."""
    settings.metric = _checked_metric(settings)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{(settings.output_dir / STUDY_FILE).resolve()}"
    study_name = study_name or settings.output_dir.name
    study = open_study(storage, study_name, sampler, settings.space, pruner, heartbeat_seconds, max_retry, seed)
    study.set_user_attr("metric", settings.metric)
    _fail_stale_trials(study)
    if n_trials is None:
        n_trials = math.prod(len(p.grid()) for p in settings.space) if sampler == "grid" else DEFAULT_TRIALS
    logger.info("study %s in %s: %d of %d trials finished", study_name, storage, finished_trials(study), n_trials)
    optimize(study, make_objective(settings), n_trials)
    return finish(study, settings, test_best)


def tuned_bindings(config_file: str, bindings: List[str], space_file: Path, n_trials: int, output_dir: Path) -> List[str]:
    """Tunes ``config_file`` (plus ``bindings``) with ``n_trials`` trials in ``output_dir`` without
    testing; returns the best trial's bindings (GRE-B's ``--tune``)."""
    settings = TuneSettings(config_file, read_space(space_file), output_dir, list(bindings))
    record = tune(settings, n_trials, test_best=False)
    if record is None:
        raise TuneError(f"{output_dir}: no trial of the search completed; see {output_dir / 'trials.csv'}")
    return [f"{name} = {gin_value(value)}" for name, value in record["params"].items()]


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gin_config_file", required=True, help="the config: a path or a shipped config's name")
    parser.add_argument("--space", required=True, type=Path,
                        help="the search space (TOML, see above): a path or a shipped one, e.g. ml100k/hstu-search-space")
    parser.add_argument("--n_trials", type=int,
                        help=f"finished trials the study ends with (default {DEFAULT_TRIALS}; a grid: all its points)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="tpe (default) or grid")
    parser.add_argument("--pruner", choices=PRUNERS, default="median", help="stops trailing trials early (default median)")
    parser.add_argument("--storage", help="database URL of the study (default: sqlite in --output_dir)")
    parser.add_argument("--study_name", help="default: the name of --output_dir")
    parser.add_argument("--data_root", type=Path, help="folder of the prepared datasets (default: the config's)")
    parser.add_argument("--output_root", type=Path, default=Path("exps"), help="folder of runs (default exps)")
    parser.add_argument("--output_dir", type=Path, help="the search's folder (default OUTPUT_ROOT/tune/<config>-<space>)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="passed to every trial (repeatable)")
    parser.add_argument("--seed", type=int, help="the sampler's seed (default: random; give workers different ones)")
    parser.add_argument("--heartbeat_seconds", type=int, default=60,
                        help="a worker's heartbeat; a trial silent for twice this is retried (default 60)")
    parser.add_argument("--max_retry", type=int, default=2, help="retries of a trial whose worker died (default 2)")
    args = parser.parse_args(argv)
    for option in ("n_trials", "heartbeat_seconds"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise TuneError(f"--{option} {value}: must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    configure_logging()
    args = parse_args(argv)
    config_file = resolve_config(args.gin_config_file)
    space = read_space(args.space)
    output_dir = args.output_dir or args.output_root / "tune" / f"{config_file.stem}-{args.space.stem}"
    bindings = list(args.gin_bindings)
    if args.data_root is not None:
        bindings.append(f'train_fn.data_root = "{args.data_root.resolve()}"')
    settings = TuneSettings(str(config_file), space, output_dir.resolve(), bindings)
    tune(
        settings, args.n_trials, args.storage, args.study_name, args.sampler, args.pruner,
        args.heartbeat_seconds, args.max_retry, args.seed,
    )
    return 0


if __name__ == "__main__":
    run_command("gr-tune", main)
