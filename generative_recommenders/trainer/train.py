"""The training loop: gin-configured, on one process (CPU or GPU) or several (``distributed.py``).

``train_fn`` is the gin entry point, with the HSTU reference's parameter
names (its gin files load unchanged; its parameters are :class:`TrainConfig`'s
fields). It checks its arguments into one frozen :class:`TrainConfig` and calls
:func:`train`, a short loop over named pieces: :func:`build` (the run assembled
by ``assembly.py``, then loaders, optimizer, LR schedule),
:func:`resume_or_start`, :func:`train_epoch` (which runs :func:`train_step`,
the one training step, also what the throughput benchmark times),
:func:`evaluate` and :func:`final_test`. What differs between the retrieval
and the CTR task (data views, loss, evaluation) is in ``tasks.py``; the
evaluation protocols are described in ``protocol.py``, checkpoint/resume in
``checkpoint.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import gin
import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm import tqdm

from generative_recommenders.atomic_files import atomic_torch_save
from generative_recommenders.data.batching import LengthBucketedBatchSampler, history_lengths
from generative_recommenders.data.dataset import collate_sequences, repeated_target_shares
from generative_recommenders.data.identity import IDENTITY_KEY, data_identity
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.errors import UserError
from generative_recommenders.logs import configure_logging, get_logger
from generative_recommenders.modeling.registry import ReportsBackends, import_model_modules
from generative_recommenders.ops import jagged
from generative_recommenders.trainer.assembly import assemble
from generative_recommenders.trainer.checkpoint import (
    CHECKPOINT_FILE,
    ResumableSampler,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from generative_recommenders.trainer.config import (
    PROCESS_ARGUMENTS,
    ConfigError,
    TrainConfig,
    parse_gin,
    train_fn_signature,
)
from generative_recommenders.trainer.distributed import (
    DistributedContext,
    ShardSampler,
    available_cores,
    barrier,
    broadcast_object,
    gather_objects,
    mean_across_ranks,
    process_seed,
    single_process_context,
    wrap_for_training,
)
from generative_recommenders.trainer import observers
from generative_recommenders.trainer.protocol import ModelSelection
from generative_recommenders.trainer.run_folder import RunFolderError, RunFolderLock, check_existing_run
from generative_recommenders.trainer.run_log import RunLog, gin_config_mapping, provenance
from generative_recommenders.trainer.tasks import Evaluation, Task, TaskViews, task_for

logger = get_logger(__name__)
import_model_modules()  # the models' gin configurables (hstu_encoder, ...) must exist before a config is parsed


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@gin.configurable
def create_data_loader(
    dataset: torch.utils.data.Dataset,
    batch_size: int,
    sampler: Optional[Sampler] = None,
    num_workers: int = 0,
    prefetch_factor: Optional[int] = None,
    batch_sampler: Optional[Sampler] = None,
    collate_fn: Callable[[List[Any]], Dict[str, torch.Tensor]] = collate_sequences,
) -> torch.utils.data.DataLoader:
    """Batches in ``sampler``'s order (sequential without one), or ``batch_sampler``'s batches,
    collated by ``collate_fn`` (the task's)."""
    # Examples are slices of in-memory arrays: more workers than spare cores only compete
    # with the training threads (the reference configs ask for 8).
    workers = min(num_workers, max(0, available_cores() - 2))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size if batch_sampler is None else 1,
        sampler=sampler,
        batch_sampler=batch_sampler,
        collate_fn=collate_fn,
        num_workers=workers,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        # Its own generator (worker seeds only), so that starting an epoch draws nothing
        # from the global torch generator that negatives and dropout use.
        generator=torch.Generator().manual_seed(0),
    )


@dataclasses.dataclass
class Progress:
    """Where training stands; with the model, optimizer and generators it is all a resume needs."""

    epoch: int = 0  # the epoch in progress, or the next one to start
    batches_done: int = 0  # batches of that epoch already trained
    step: int = 0
    epoch_losses: List[float] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    train_sequences: int = 0


@dataclasses.dataclass
class TrainingRun:
    """Everything :func:`build` makes for one run; the loop's pieces share it."""

    config: TrainConfig
    context: DistributedContext
    gin_config: str
    data: SequenceDataset
    task: Task
    views: TaskViews
    train_sampler: Any  # ResumableSampler or LengthBucketedBatchSampler: both have set_position
    train_loader: torch.utils.data.DataLoader
    batches_per_epoch: int
    eval_order: ShardSampler
    eval_loader: torch.utils.data.DataLoader
    partial_eval_batches: int
    model: torch.nn.Module
    train_module: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler]  # stepped every training step
    plateau: Optional[torch.optim.lr_scheduler.ReduceLROnPlateau]  # stepped on every validation
    selection: Optional[ModelSelection]
    run_dir: Path
    data_identity: Dict[str, Any]  # data/identity.py: recorded in results.json, checked on every start
    log: Optional[RunLog] = None

    @property
    def device(self) -> torch.device:
        return self.context.device


def warmup_factor(num_warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of step ``s``: linear warm-up to 1 over ``num_warmup_steps`` steps."""
    return lambda step: min(1.0, (step + 1) / num_warmup_steps) if step < num_warmup_steps else 1.0


def build(config: TrainConfig, context: DistributedContext, gin_config: str) -> TrainingRun:
    """Assembles the run (data, task, views, model) and builds its loaders, optimizer and LR schedule."""
    seed_everything(config.random_seed)
    device = context.device
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = config.enable_tf32
        torch.backends.cudnn.allow_tf32 = config.enable_tf32

    # Same initial weights on every rank (seeded above).
    assembly = assemble(config, device=device)
    data, task, views, model = assembly.data, assembly.task, assembly.views, assembly.model
    if task.samples_negatives and config.num_negatives > data.num_items and context.is_main:
        logger.warning(
            "train_fn.num_negatives = %d is more than the %d items of %s: negatives repeat within a position",
            config.num_negatives, data.num_items, config.dataset_name,
        )
    if len(views.train) == 0:
        raise ConfigError(
            f"{config.dataset_name}: no user has enough items to train under the {config.eval_protocol} protocol"
        )
    batch_size = config.local_batch_size
    if config.length_bucketed_batches:
        if context.is_distributed:
            raise ConfigError("train_fn.length_bucketed_batches runs in one process only; drop it or --nproc")
        train_sampler = LengthBucketedBatchSampler(history_lengths(views.train), batch_size, config.random_seed)
        batches_per_epoch = len(train_sampler)
        train_loader = create_data_loader(
            views.train, batch_size, batch_sampler=train_sampler, collate_fn=views.collate
        )
    else:
        train_sampler = ResumableSampler(
            views.train, batch_size, config.random_seed, num_replicas=context.world_size, rank=context.rank
        )
        batches_per_epoch = math.ceil(len(train_sampler.order) / batch_size)
        train_loader = create_data_loader(views.train, batch_size, train_sampler, collate_fn=views.collate)
    # Shuffled like the reference so that partial evaluations see a random subset.
    eval_order = ShardSampler(
        len(views.eval), context.rank, context.world_size, shuffle=not config.validated, seed=config.random_seed
    )
    eval_loader = create_data_loader(views.eval, config.eval_batch_size, eval_order, collate_fn=views.collate)

    # From here each rank draws its own negatives and dropout masks.
    seed_everything(process_seed(config.random_seed, context))
    optimizer = torch.optim.AdamW(  # foreach: the for-loop's results, bit for bit, in fewer passes on a CPU
        model.parameters(), lr=config.learning_rate, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay,
        foreach=True,
    )
    if config.lr_plateau_factor is None:
        scheduler, plateau = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(config.num_warmup_steps)), None
    else:  # selection metrics are higher-is-better
        scheduler, plateau = None, torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.lr_plateau_factor, patience=config.lr_plateau_patience
        )
    run_name = config.run_name or model.description()
    return TrainingRun(
        config=config,
        context=context,
        gin_config=gin_config,
        data=data,
        task=task,
        views=views,
        train_sampler=train_sampler,
        train_loader=train_loader,
        batches_per_epoch=batches_per_epoch,
        eval_order=eval_order,
        eval_loader=eval_loader,
        # A partial evaluation covers about the same number of users in any number of processes.
        partial_eval_batches=math.ceil(config.partial_eval_num_iters / context.world_size),
        model=model,
        train_module=wrap_for_training(model, task.training_loss(context.device), context),
        optimizer=optimizer,
        scheduler=scheduler,
        plateau=plateau,
        selection=ModelSelection(config.selection_metric, config.patience) if config.validated else None,
        run_dir=Path(config.output_root) / config.dataset_name / f"{run_name}-s{config.random_seed}",
        data_identity=data_identity(assembly.data_dir, config.text_embedding_model if config.with_text else None, data.maps),
    )


# What results.json has gathered by a checkpoint, beyond the header every start rewrites.
_RESUMED_RESULTS = ("epochs", "evaluations", "resumed_at")


def resume_or_start(run: TrainingRun, resume: bool) -> Progress:
    """Opens the run's log; with ``resume``, restores the checkpoint (weights, optimizer, schedule,
    selection, generators) and returns where it stopped."""
    config, context = run.config, run.context
    checkpoint_path = run.run_dir / CHECKPOINT_FILE
    progress, checkpoint = Progress(), None
    if resume and checkpoint_path.is_file():
        checkpoint = load_checkpoint(checkpoint_path, run.gin_config, run.data.stats(), context.world_size)
        run.model.load_state_dict(checkpoint["model"])
        run.optimizer.load_state_dict(checkpoint["optimizer"])
        for schedule, key in ((run.scheduler, "scheduler"), (run.plateau, "plateau")):
            if schedule is not None:
                schedule.load_state_dict(checkpoint[key])
        progress = Progress(**checkpoint["progress"])
        if run.selection is not None:
            run.selection.load_state_dict(checkpoint["selection"])
        if context.is_main:
            logger.info("resuming %s at epoch %d, step %d", run.run_dir, progress.epoch, progress.step)
    elif resume and context.is_main:
        logger.info("no checkpoint in %s: starting from scratch", run.run_dir)
    elif checkpoint_path.is_file() and context.is_main:
        # Only a checkpoint written before the first epoch ended (no results.json yet) gets here.
        logger.info("starting over: removing the unfinished first epoch's checkpoint %s", checkpoint_path)
        checkpoint_path.unlink()
    barrier(context)  # no rank may still be reading the checkpoint rank 0 removes

    model = run.model
    run.log = RunLog(
        run.run_dir,
        {
            "dataset": run.data.stats(),
            "data_dir": str((Path(config.data_root) / config.dataset_name).resolve()),  # run_data.py
            "run_dir": str(run.run_dir),
            "model": model.description(),
            "protocol": config.eval_protocol,
            "text_embedding_model": config.text_embedding_model,
            "seed": config.random_seed,
            "selection_metric": config.selection_metric,
            "patience": config.patience,
            "rank_cap": config.rank_cap,
            "device": str(run.device),
            "world_size": context.world_size,
            "run_config": run.gin_config,
            IDENTITY_KEY: run.data_identity,
            "gin_config": run.gin_config,
            "config": dataclasses.asdict(config),
            "provenance": provenance(run.device),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "task": run.task.name,
            **run.views.header,
            # Users whose last / second-to-last item repeats an item of their (capped) history.
            "repeated_targets": repeated_target_shares(run.data, config.max_sequence_length),
        },
        purge_step=progress.step,
        active=context.is_main,
    )
    if checkpoint is None:
        run.log.hyperparameters(
            {"model": model.description(), **config.hyperparameters()},
            [f"valid/{config.selection_metric}", *(f"test_best/{m}" for m in run.task.reported_metrics)]
            if config.validated
            else [f"test/{m}" for m in run.task.reported_metrics],
        )
    else:
        run.log.results.update(checkpoint["results"])
        run.log.results.setdefault("resumed_at", []).append({"epoch": progress.epoch, "step": progress.step})
        # Last, so that nothing above (model init) draws from the restored generators.
        restore_rng_state(checkpoint["rng"][context.rank])
    processes = f" x {context.world_size} processes" if context.is_distributed else ""
    run.log.message(
        f"{config.dataset_name}: {run.data.num_users} users, {run.data.num_items} items; training "
        f"{model.description()} on {len(run.views.train)} sequences ({config.eval_protocol} protocol) "
        f"on {run.device}{processes}; logs in {run.run_dir}"
    )
    return progress


def write_checkpoint(run: TrainingRun, progress: Progress) -> None:
    rng_states = gather_objects(capture_rng_state(), run.context)  # every rank's, to resume each
    if run.context.is_main:
        save_checkpoint(
            run.run_dir / CHECKPOINT_FILE,
            {
                "gin_config": run.gin_config,
                "dataset": run.data.stats(),
                "world_size": run.context.world_size,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": None if run.scheduler is None else run.scheduler.state_dict(),
                "plateau": None if run.plateau is None else run.plateau.state_dict(),
                "rng": rng_states,
                "progress": dataclasses.asdict(progress),
                "selection": None if run.selection is None else run.selection.state_dict(),
                "results": {key: run.log.results[key] for key in _RESUMED_RESULTS if key in run.log.results},
            },
        )
    barrier(run.context)


def train_step(
    train_module: torch.nn.Module,
    batch: Dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[torch.optim.lr_scheduler.LRScheduler],
    context: DistributedContext,
    autocast_bf16: bool = False,
    grad_clip_norm: Optional[float] = None,
) -> float:
    """One optimizer step on ``batch``; returns the loss (averaged over the ranks, so that all stop together).

    ``train_module`` is :func:`~distributed.wrap_for_training`'s: called with
    ``(batch, device)`` it returns the loss. ``scheduler`` (if any) steps after
    the optimizer. ``autocast_bf16`` runs the forward in bfloat16 autocast on CUDA;
    ``grad_clip_norm`` clips the gradients' total norm before the step.
    """
    device = context.device
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16 and device.type == "cuda"):
        loss = train_module(batch, device)
    loss_value = mean_across_ranks(loss, context)
    if not math.isfinite(loss_value):
        raise TrainingDiverged(
            f"the training loss became {loss_value}; lower train_fn.learning_rate or raise train_fn.num_warmup_steps"
        )
    loss.backward()
    if grad_clip_norm is not None:
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip_norm)
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss_value


def train_epoch(run: TrainingRun, progress: Progress) -> None:
    """Trains the rest of epoch ``progress.epoch``, checkpointing every ``checkpoint_every_n_steps``."""
    config, context, epoch = run.config, run.context, progress.epoch
    run.model.train()
    run.train_sampler.set_position(epoch, progress.batches_done)
    clock = time.perf_counter()
    # Off where stderr is no terminal (piped, a log file): bars would only interleave with the lines.
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}", leave=False, mininterval=0.5, disable=None if context.is_main else True)
    for batch in bar:
        lr = run.optimizer.param_groups[0]["lr"]
        try:
            loss = train_step(
                run.train_module, batch, run.optimizer, run.scheduler, context, config.autocast_bf16,
                config.grad_clip_norm,
            )
        except TrainingDiverged as error:
            raise TrainingDiverged(f"{error} (epoch {epoch}, step {progress.step})") from None
        progress.epoch_losses.append(loss)
        run.log.scalar("losses/train", loss, progress.step)
        run.log.scalar("lr", lr, progress.step)
        if progress.step % config.eval_interval == 0:  # the reference's name for the loss-logging interval
            logger.debug("step %d (epoch %d): loss %.6f", progress.step, epoch, loss)
        progress.step += 1
        progress.batches_done += 1
        progress.train_sequences += batch["target_ids"].numel() * context.world_size
        now = time.perf_counter()
        progress.train_seconds, clock = progress.train_seconds + now - clock, now
        every = config.checkpoint_every_n_steps
        # The epoch's end writes a checkpoint anyway.
        if every is not None and progress.step % every == 0 and progress.batches_done < run.batches_per_epoch:
            write_checkpoint(run, progress)
    mean_loss = float(np.mean(progress.epoch_losses))
    run.log.epoch(epoch, mean_loss)
    seconds = max(progress.train_seconds, 1e-9)
    run.log.message(f"epoch {epoch}: loss {mean_loss:.4f}, {progress.train_sequences / seconds:.0f} seq/s")
    progress.epoch, progress.batches_done, progress.epoch_losses = epoch + 1, 0, []


def evaluate(run: TrainingRun, loader: torch.utils.data.DataLoader, max_batches: Optional[int] = None) -> Evaluation:
    """The task's metrics of ``loader``'s users (samples), over every rank (``tasks.py``)."""
    return run.task.evaluate(run.model, loader, run.context, max_batches)


def evaluate_epoch(run: TrainingRun, epoch: int) -> None:
    """The evaluation after ``epoch``: full every ``full_eval_every_n`` epochs and at the last one,
    partial in between (reference protocol only); the validated protocol selects on it."""
    config = run.config
    full = epoch % config.full_eval_every_n == 0 or epoch == config.num_epochs - 1
    if not (full or not config.validated):
        return
    run.eval_order.set_epoch(epoch)
    evaluation = evaluate(run, run.eval_loader, max_batches=None if full else run.partial_eval_batches)
    run.log.evaluation(epoch, run.views.eval_split, full, evaluation)
    if run.selection is not None:
        run.selection.update(epoch, evaluation.metrics, run.model)
        observers.validated(run.run_dir, epoch, evaluation.metrics)
    if run.plateau is not None:
        run.plateau.step(evaluation.metrics[config.selection_metric])


def final_test(run: TrainingRun, progress: Progress) -> Dict[str, Any]:
    """Saves the weights and reports what the protocol reports: the test of the best and of the last
    weights (validated), or the last full evaluation (reference)."""
    config, context, log, selection = run.config, run.context, run.log, run.selection
    in_use = run.model.backends_in_use(run.device) if isinstance(run.model, ReportsBackends) else {}
    if in_use:  # what ran, after the probe of the Triton kernel (CUDA) had its say
        log.results["attention_backend"] = {"requested": config.attention_backend, **in_use}
    log.results["jagged_backend"] = jagged.resolve_backend(config.jagged_backend)
    log.results.update(run.task.training_record())
    log.results["train_seconds"] = progress.train_seconds
    log.results["train_sequences_per_second"] = progress.train_sequences / max(progress.train_seconds, 1e-9)
    test_loader = create_data_loader(
        run.views.test, config.eval_batch_size, ShardSampler(len(run.views.test), context.rank, context.world_size),
        collate_fn=run.views.collate,
    )
    if context.is_main:
        atomic_torch_save(run.model.state_dict(), run.run_dir / "last_model.pt")
    if selection is not None:
        last = evaluate(run, test_loader)
        log.evaluation(progress.epoch - 1, "test_last", True, last)
        run.model.load_state_dict(selection.best_state)
        if context.is_main:
            atomic_torch_save(selection.best_state, run.run_dir / "best_model.pt")
        best = evaluate(run, test_loader)
        log.evaluation(selection.best["epoch"], "test_best", True, best)
        log.results["last"] = last.metrics
        log.results["best"] = dict(selection.best, test=best.metrics)
        log.results.update(best.groups)  # the reported test's per-group metrics
        log.message(f"best epoch by validation {config.selection_metric}: {selection.best['epoch']}")
    else:
        last_full = [e for e in log.results["evaluations"] if e["full"]][-1]
        log.results["last"] = last_full["metrics"]
        log.results.update(last_full.get("groups", {}))
        log.results["best"] = None  # no validation split under the reference protocol
    log.results["epochs_trained"] = progress.epoch
    log.results["stopped_early"] = progress.epoch < config.num_epochs
    log.results["gin_config"] = gin.operative_config_str()
    log.results["gin_config_mapping"] = gin_config_mapping(log.results["gin_config"])
    log.results["finished"] = True
    log.close()
    return log.results


def claim_run_folder(run: TrainingRun, resume: bool, overwrite: bool, stack: contextlib.ExitStack) -> Optional[Dict]:
    """Locks the run folder (rank 0) and checks what it holds: returns the results when this very
    configuration has finished there already; a refusal is raised on every rank alike."""
    outcome: Any = None
    if run.context.is_main:
        try:
            stack.enter_context(RunFolderLock(run.run_dir))
            outcome = ("ok", check_existing_run(run.run_dir, run.gin_config, resume, overwrite, run.data_identity))
        except RunFolderError as error:
            outcome = ("refused", str(error))
    outcome = broadcast_object(outcome, run.context)
    if outcome[0] == "refused":
        raise RunFolderError(outcome[1])
    return outcome[1]


def train(
    config: TrainConfig, context: DistributedContext, gin_config: str, resume: bool = False, overwrite: bool = False
) -> Dict[str, Any]:
    """Trains and evaluates one run; returns (and writes) its results record."""
    configure_logging()
    run = build(config, context, gin_config)
    with contextlib.ExitStack() as stack:
        finished = claim_run_folder(run, resume, overwrite, stack)
        if finished is not None:
            done = f"{run.run_dir} finished all {finished['epochs_trained']} epochs of this configuration already"
            more = "a larger train_fn.num_epochs with --resume trains on" if resume else "--overwrite trains it again"
            logger.info("%s; its results stand (%s)", done, more)
            return finished
        progress = resume_or_start(run, resume)
        for epoch in range(progress.epoch, config.num_epochs):
            if run.selection is not None and run.selection.should_stop:
                break
            train_epoch(run, progress)
            evaluate_epoch(run, epoch)
            run.log.save()
            write_checkpoint(run, progress)
        observers.before_test(run.run_dir)
        return final_test(run, progress)


def train_fn(**arguments: Any) -> Dict[str, Any]:
    """Trains and evaluates one model; returns (and writes) the results record.

    The parameters are :class:`~generative_recommenders.trainer.config.TrainConfig`'s
    fields (the reference's names plus this project's; each is documented there)
    and, not gin parameters: ``resume`` continues from the checkpoint (the config
    must equal the checkpoint's, but for a larger ``num_epochs``); ``overwrite``
    replaces what the run folder holds; ``context`` places this process in a
    multi-process run (default: one process, on the GPU when there is one).
    """
    resume, overwrite, context = (arguments.pop(name, default) for name, default in PROCESS_ARGUMENTS.items())
    config = TrainConfig.from_arguments(arguments)
    return train(config, context or single_process_context(), gin.config_str(), resume, overwrite)


# gin reads the parameters (and refuses a binding of no parameter) from this signature.
train_fn.__signature__ = train_fn_signature()  # type: ignore[attr-defined]
train_fn = gin.configurable("train_fn", denylist=list(PROCESS_ARGUMENTS))(train_fn)


def config_from_gin() -> TrainConfig:
    """The checked config ``train_fn`` would run with under the gin config parsed now."""
    bound = {}
    for name in train_fn_signature().parameters:
        if name not in PROCESS_ARGUMENTS:
            try:
                bound[name] = gin.query_parameter(f"train_fn.{name}")
            except ValueError:  # not bound: TrainConfig's default
                pass
    config = TrainConfig.from_arguments(bound)
    task_for(config)  # the task's checks too
    return config


def train_config_file(
    config_file: str,
    bindings: Sequence[str],
    resume: bool = False,
    overwrite: bool = False,
    context: Optional[DistributedContext] = None,
) -> Dict[str, Any]:
    """Parses a gin config file plus ``bindings`` and trains it; returns the results record."""
    parse_gin([config_file], bindings)
    return train_fn(resume=resume, overwrite=overwrite, context=context)
