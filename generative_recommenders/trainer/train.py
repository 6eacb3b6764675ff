"""The training loop: gin-configured, on one process (CPU or GPU) or several (``distributed.py``).

``train_fn``'s parameter names are the HSTU reference's, so its gin files load
unchanged; names it does not know are a gin error. The evaluation protocols
are described in ``protocol.py``, checkpoint/resume in ``checkpoint.py``.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import gin
import numpy as np
import torch
from torch.utils.data import Sampler
from tqdm import tqdm

from generative_recommenders.atomic_files import atomic_torch_save
from generative_recommenders.data.batching import LengthBucketedBatchSampler, history_lengths
from generative_recommenders.data.dataset import collate_sequences
from generative_recommenders.data.sequence_format import load_sequence_dataset
from generative_recommenders.evaluation.metrics import DEFAULT_REPORTED, METRIC_NAMES
from generative_recommenders.evaluation.ranking import evaluate_ranking
from generative_recommenders.modeling.hstu import HSTUEncoder
from generative_recommenders.modeling.item_embeddings import ItemEmbedding, ItemEmbeddingWithText
from generative_recommenders.modeling.losses import SAMPLING_STRATEGIES, training_loss
from generative_recommenders.modeling.sasrec import SASRecEncoder
from generative_recommenders.modeling.sequential import SequentialRecommender
from generative_recommenders.text.embedding_store import load_dataset_text_embeddings
from generative_recommenders.trainer.distributed import (
    DistributedContext,
    ShardSampler,
    barrier,
    gather_objects,
    mean_across_ranks,
    process_seed,
    reduce_metrics,
    single_process_context,
    wrap_for_training,
)
from generative_recommenders.trainer.checkpoint import (
    CHECKPOINT_FILE,
    ResumableSampler,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from generative_recommenders.trainer.protocol import PROTOCOLS, ModelSelection, protocol_views
from generative_recommenders.trainer.run_log import RunLog

# The reference's names for the text path; the item embedding module carries the text,
# so its input preprocessor and negative sampler are the plain ones.
_TEXT_ALIASES = {
    "LearnablePositionalEmbeddingWithTextPreprocessor": "LearnablePositionalEmbeddingInputFeaturesPreprocessor",
    "local_with_text": "local",
}


def _require(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"train_fn.{name}={value!r} is not supported; choose from {allowed}")


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
) -> torch.utils.data.DataLoader:
    """Batches in ``sampler``'s order (sequential without one), or ``batch_sampler``'s batches."""
    # Examples are slices of in-memory arrays: more workers than spare cores only compete
    # with the training threads (the reference configs ask for 8).
    workers = min(num_workers, max(0, (os.cpu_count() or 1) - 2))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size if batch_sampler is None else 1,
        sampler=sampler,
        batch_sampler=batch_sampler,
        collate_fn=collate_sequences,
        num_workers=workers,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        # Its own generator (worker seeds only), so that starting an epoch draws nothing
        # from the global torch generator that negatives and dropout use.
        generator=torch.Generator().manual_seed(0),
    )


def build_model(
    main_module: str,
    num_items: int,
    item_embedding_dim: int,
    max_positions: int,
    dropout_rate: float,
    user_embedding_norm: str,
    l2_norm_eps: float,
    text_embeddings: Optional[torch.Tensor] = None,
) -> SequentialRecommender:
    """``text_embeddings [num_items + 1, T]`` switches on text fusion (``text_fusion.*``)."""
    if main_module == "HSTU":
        encoder = HSTUEncoder(embedding_dim=item_embedding_dim, max_sequence_len=max_positions)
    elif main_module == "SASRec":
        encoder = SASRecEncoder(embedding_dim=item_embedding_dim, max_sequence_len=max_positions)
    else:
        raise ValueError(f"train_fn.main_module={main_module!r}; choose 'HSTU' or 'SASRec'")
    item_embedding = (
        ItemEmbedding(num_items, item_embedding_dim)
        if text_embeddings is None
        else ItemEmbeddingWithText(num_items, item_embedding_dim, text_embeddings)
    )
    return SequentialRecommender(
        item_embedding=item_embedding,
        encoder=encoder,
        max_sequence_len=max_positions,
        dropout_rate=dropout_rate,
        user_embedding_norm=user_embedding_norm,
        l2_norm_eps=l2_norm_eps,
    )


# What results.json has gathered by a checkpoint, beyond the header every start rewrites.
_RESUMED_RESULTS = ("epochs", "evaluations", "resumed_at")


@dataclass
class _Progress:
    """Where training stands; with the model, optimizer and generators it is all a resume needs."""

    epoch: int = 0  # the epoch in progress, or the next one to start
    batches_done: int = 0  # batches of that epoch already trained
    step: int = 0
    epoch_losses: List[float] = field(default_factory=list)
    train_seconds: float = 0.0
    train_sequences: int = 0


@gin.configurable(denylist=["resume", "context"])
def train_fn(
    dataset_name: str = "ml-100k",
    max_sequence_length: int = 200,
    local_batch_size: int = 128,
    eval_batch_size: int = 128,
    main_module: str = "HSTU",
    dropout_rate: float = 0.2,
    user_embedding_norm: str = "l2_norm",
    sampling_strategy: str = "local",
    loss_module: str = "SampledSoftmaxLoss",
    num_negatives: int = 128,
    item_l2_norm: bool = True,
    temperature: float = 0.05,
    num_epochs: int = 101,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.0,
    num_warmup_steps: int = 0,
    eval_interval: int = 100,
    full_eval_every_n: int = 1,
    save_ckpt_every_n: int = 1000,
    partial_eval_num_iters: int = 32,
    embedding_module_type: str = "local",
    item_embedding_dim: int = 64,
    interaction_module_type: str = "DotProduct",
    top_k_method: str = "MIPSBruteForceTopK",
    l2_norm_eps: float = 1e-6,
    enable_tf32: bool = False,
    feat_prep: str = "LearnablePositionalEmbeddingInputFeaturesPreprocessor",
    text_embedding_model: Optional[str] = None,
    random_seed: int = 42,
    gr_output_length: int = 10,
    eval_protocol: str = "validated",
    selection_metric: str = "ndcg@10",
    patience: Optional[int] = None,
    checkpoint_every_n_steps: Optional[int] = 1000,
    deterministic: bool = False,
    length_bucketed_batches: bool = False,
    autocast_bf16: bool = False,
    rank_cap: Optional[int] = None,
    data_root: str = "tmp",
    output_root: str = "exps",
    run_name: Optional[str] = None,
    resume: bool = False,
    context: Optional[DistributedContext] = None,
) -> Dict[str, Any]:
    """Trains and evaluates one model; returns (and writes) the results record.

    Writes to ``<output_root>/<dataset_name>/<run_name>-s<random_seed>/``.
    A checkpoint is written there at the end of every epoch and every
    ``checkpoint_every_n_steps`` steps (``None``: epoch ends only); the
    reference's ``save_ckpt_every_n`` (in epochs) is accepted and covered by
    the per-epoch checkpoints. ``resume=True`` (not a gin parameter: the
    config must equal the checkpoint's) continues from the checkpoint.
    ``deterministic=True`` switches torch to its deterministic kernels for the
    process (slower where a kernel has no deterministic fast path): reruns and
    resumes are then bit-exact, where otherwise gradients that accumulate with
    atomic adds may differ in the last bits. ``patience``: under
    ``validated``, stop after that many evaluations without a better
    ``selection_metric``. ``length_bucketed_batches``: batches of sequences of
    similar length (less padding, faster; batches are less random).
    ``autocast_bf16``: the training step in bfloat16 autocast on CUDA.
    ``rank_cap=2500`` reproduces the reference's capped
    ranks (default: exact). ``context`` places this process in a multi-process
    run (default: one process, on the GPU when there is one): each rank trains on
    its share of every batch-order, evaluates its share of the users, and rank 0
    alone writes logs, results and checkpoints.
    """
    sampling_strategy = _TEXT_ALIASES.get(sampling_strategy, sampling_strategy)
    feat_prep = _TEXT_ALIASES.get(feat_prep, feat_prep)
    _require("loss_module", loss_module, ("SampledSoftmaxLoss",))
    _require("sampling_strategy", sampling_strategy, SAMPLING_STRATEGIES)
    _require("embedding_module_type", embedding_module_type, ("local", "local_and_text"))
    _require("interaction_module_type", interaction_module_type, ("DotProduct",))
    _require("top_k_method", top_k_method, ("MIPSBruteForceTopK",))
    _require("feat_prep", feat_prep, ("LearnablePositionalEmbeddingInputFeaturesPreprocessor",))
    _require("eval_protocol", eval_protocol, PROTOCOLS)
    _require("selection_metric", selection_metric, METRIC_NAMES)
    with_text = embedding_module_type == "local_and_text"
    if with_text != (text_embedding_model is not None):
        raise ValueError(
            "train_fn.embedding_module_type = \"local_and_text\" and train_fn.text_embedding_model "
            "go together (set both, or neither)"
        )
    validated = eval_protocol == "validated"
    if patience is not None and not validated:
        raise ValueError(
            "train_fn.patience needs the validated protocol: the reference protocol has no "
            "validation split, and stopping on the test set would select on it"
        )
    if num_epochs < 1:
        raise ValueError(f"train_fn.num_epochs must be >= 1, got {num_epochs}")
    if checkpoint_every_n_steps is not None and checkpoint_every_n_steps < 1:
        raise ValueError(
            f"train_fn.checkpoint_every_n_steps must be >= 1 (or None), got {checkpoint_every_n_steps}"
        )
    del save_ckpt_every_n
    gin_config = gin.config_str()

    context = context or single_process_context()
    seed_everything(random_seed)
    device = context.device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what deterministic cuBLAS needs
        torch.use_deterministic_algorithms(True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enable_tf32
        torch.backends.cudnn.allow_tf32 = enable_tf32

    data_dir = Path(data_root) / dataset_name
    data = load_sequence_dataset(data_dir)
    text_embeddings = (
        load_dataset_text_embeddings(data_dir, text_embedding_model, data.num_items) if with_text else None
    )
    views = protocol_views(data, max_sequence_length, eval_protocol)
    if len(views.train) == 0:
        raise ValueError(
            f"{dataset_name}: no user has enough items to train under the {eval_protocol} protocol"
        )
    if length_bucketed_batches:
        if context.is_distributed:
            raise ValueError("train_fn.length_bucketed_batches runs in one process only; drop it or --nproc")
        train_sampler = LengthBucketedBatchSampler(history_lengths(views.train), local_batch_size, random_seed)
        batches_per_epoch = len(train_sampler)
        train_loader = create_data_loader(views.train, local_batch_size, batch_sampler=train_sampler)
    else:
        train_sampler = ResumableSampler(
            views.train, local_batch_size, random_seed, num_replicas=context.world_size, rank=context.rank
        )
        batches_per_epoch = math.ceil(len(train_sampler.order) / local_batch_size)
        train_loader = create_data_loader(views.train, local_batch_size, train_sampler)
    # Shuffled like the reference so that partial evaluations see a random subset.
    eval_order = ShardSampler(
        len(views.eval), context.rank, context.world_size, shuffle=not validated, seed=random_seed
    )
    # A partial evaluation covers about the same number of users in any number of processes.
    partial_batches = math.ceil(partial_eval_num_iters / context.world_size)
    eval_loader = create_data_loader(views.eval, eval_batch_size, eval_order)

    # Positions: history + the appended target + the reference's output slots.
    max_positions = max_sequence_length + gr_output_length + 1
    model = build_model(
        main_module, data.num_items, item_embedding_dim, max_positions,
        dropout_rate, user_embedding_norm, l2_norm_eps, text_embeddings,
    ).to(device)
    # Same initial weights on every rank (seeded above); from here each rank draws its own
    # negatives and dropout masks.
    seed_everything(process_seed(random_seed, context))
    train_module = wrap_for_training(model, training_loss, context)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=weight_decay
    )
    selection = ModelSelection(selection_metric, patience) if validated else None

    run_dir = Path(output_root) / dataset_name / f"{run_name or model.description()}-s{random_seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    progress, checkpoint = _Progress(), None
    if resume and checkpoint_path.is_file():
        checkpoint = load_checkpoint(checkpoint_path, gin_config, data.stats(), context.world_size)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        progress = _Progress(**checkpoint["progress"])
        if selection is not None:
            selection.load_state_dict(checkpoint["selection"])
        if context.is_main:
            print(f"resuming {run_dir} at epoch {progress.epoch}, step {progress.step}", flush=True)
    elif resume and context.is_main:
        print(f"no checkpoint in {run_dir}: starting from scratch", flush=True)
    elif checkpoint_path.is_file() and context.is_main:
        print(f"starting over: removing the earlier run's checkpoint {checkpoint_path}", flush=True)
        checkpoint_path.unlink()
    barrier(context)  # no rank may still be reading the checkpoint rank 0 removes

    log = RunLog(
        run_dir,
        {
            "dataset": data.stats(),
            "run_dir": str(run_dir),
            "model": model.description(),
            "protocol": eval_protocol,
            "text_embedding_model": text_embedding_model,
            "seed": random_seed,
            "selection_metric": selection_metric,
            "patience": patience,
            "rank_cap": rank_cap,
            "device": str(device),
            "world_size": context.world_size,
            "gin_config": gin_config,
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "skipped_users": {"train": views.train.num_skipped_users, "eval": views.eval.num_skipped_users},
        },
        purge_step=progress.step,
        active=context.is_main,
    )
    if checkpoint is None:
        log.hyperparameters(
            {
                "dataset": dataset_name, "model": model.description(), "main_module": main_module,
                "text_embedding_model": text_embedding_model or "none", "protocol": eval_protocol,
                "seed": random_seed, "num_epochs": num_epochs, "learning_rate": learning_rate,
                "weight_decay": weight_decay, "dropout_rate": dropout_rate, "batch_size": local_batch_size,
                "max_sequence_length": max_sequence_length, "item_embedding_dim": item_embedding_dim,
                "num_negatives": num_negatives, "temperature": temperature, "patience": patience or 0,
            },
            [f"valid/{selection_metric}", *(f"test_best/{m}" for m in DEFAULT_REPORTED)]
            if validated
            else [f"test/{m}" for m in DEFAULT_REPORTED],
        )
    else:
        log.results.update(checkpoint["results"])
        log.results.setdefault("resumed_at", []).append({"epoch": progress.epoch, "step": progress.step})
        # Last, so that nothing above (model init) draws from the restored generators.
        restore_rng_state(checkpoint["rng"][context.rank])
    processes = f" x {context.world_size} processes" if context.is_distributed else ""
    log.message(
        f"{dataset_name}: {data.num_users} users, {data.num_items} items; training {model.description()} "
        f"on {len(views.train)} sequences ({eval_protocol} protocol) on {device}{processes}; logs in {run_dir}"
    )

    def write_checkpoint() -> None:
        rng_states = gather_objects(capture_rng_state(), context)  # every rank's, to resume each
        if context.is_main:
            save_checkpoint(
                checkpoint_path,
                {
                    "gin_config": gin_config,
                    "dataset": data.stats(),
                    "world_size": context.world_size,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "rng": rng_states,
                    "progress": asdict(progress),
                    "selection": None if selection is None else selection.state_dict(),
                    "results": {key: log.results[key] for key in _RESUMED_RESULTS if key in log.results},
                },
            )
        barrier(context)

    for epoch in range(progress.epoch, num_epochs):
        if selection is not None and selection.should_stop:
            break
        model.train()
        train_sampler.set_position(epoch, progress.batches_done)
        clock = time.perf_counter()
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, mininterval=5):
            step = progress.step
            lr = learning_rate * min(1.0, (step + 1) / num_warmup_steps) if step < num_warmup_steps else learning_rate
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast_bf16 and device.type == "cuda"):
                loss = train_module(batch, device, sampling_strategy, num_negatives, temperature, item_l2_norm)
            loss_value = mean_across_ranks(loss, context)  # so that every rank stops together
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"training loss became {loss_value} at epoch {epoch}, step {step}")
            loss.backward()
            optimizer.step()
            progress.epoch_losses.append(loss_value)
            log.scalar("losses/train", loss_value, step)
            log.scalar("lr", lr, step)
            if step % eval_interval == 0 and context.is_main:
                logging.info("step %d (epoch %d): loss %.6f", step, epoch, progress.epoch_losses[-1])
            progress.step += 1
            progress.batches_done += 1
            progress.train_sequences += batch["target_ids"].numel() * context.world_size
            now = time.perf_counter()
            progress.train_seconds, clock = progress.train_seconds + now - clock, now
            if (
                checkpoint_every_n_steps is not None
                and progress.step % checkpoint_every_n_steps == 0
                and progress.batches_done < batches_per_epoch  # the epoch's end writes one anyway
            ):
                write_checkpoint()
        mean_loss = float(np.mean(progress.epoch_losses))
        log.epoch(epoch, mean_loss)
        log.message(
            f"epoch {epoch}: loss {mean_loss:.4f}, "
            f"{progress.train_sequences / max(progress.train_seconds, 1e-9):.0f} seq/s"
        )
        progress.epoch, progress.batches_done, progress.epoch_losses = epoch + 1, 0, []

        full = epoch % full_eval_every_n == 0 or epoch == num_epochs - 1
        if full or not validated:
            eval_order.set_epoch(epoch)
            acc = reduce_metrics(
                evaluate_ranking(model, eval_loader, device, rank_cap, max_batches=None if full else partial_batches),
                context,
            )
            metrics = acc.means()
            log.evaluation(epoch, views.eval_split, full, metrics, acc.count)
            if selection is not None:
                selection.update(epoch, metrics, model)
        log.save()
        write_checkpoint()

    log.results["train_seconds"] = progress.train_seconds
    log.results["train_sequences_per_second"] = progress.train_sequences / max(progress.train_seconds, 1e-9)
    test_loader = create_data_loader(
        views.test, eval_batch_size, ShardSampler(len(views.test), context.rank, context.world_size)
    )
    if context.is_main:
        atomic_torch_save(model.state_dict(), run_dir / "last_model.pt")
    if selection is not None:
        last = reduce_metrics(evaluate_ranking(model, test_loader, device, rank_cap), context)
        log.evaluation(progress.epoch - 1, "test_last", True, last.means(), last.count)
        model.load_state_dict(selection.best_state)
        if context.is_main:
            atomic_torch_save(selection.best_state, run_dir / "best_model.pt")
        best_test = reduce_metrics(evaluate_ranking(model, test_loader, device, rank_cap), context)
        log.evaluation(selection.best["epoch"], "test_best", True, best_test.means(), best_test.count)
        log.results["last"] = last.means()
        log.results["best"] = dict(selection.best, test=best_test.means())
        log.message(f"best epoch by validation {selection_metric}: {selection.best['epoch']}")
    else:
        full_evals = [e for e in log.results["evaluations"] if e["full"]]
        log.results["last"] = full_evals[-1]["metrics"]
        log.results["best"] = None  # no validation split under the reference protocol
    log.results["epochs_trained"] = progress.epoch
    log.results["stopped_early"] = progress.epoch < num_epochs
    log.results["gin_config"] = gin.operative_config_str()
    log.results["finished"] = True
    log.close()
    return log.results
