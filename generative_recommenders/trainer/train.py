"""The training loop: gin-configured, one process, CPU or one GPU.

``train_fn``'s parameter names are the HSTU reference's, so its gin files load
unchanged; names it does not know are a gin error.

Protocols (``eval_protocol``):

* ``validated`` (default): train on all but the last two items, pick the
  epoch by validation (second-to-last item) ``selection_metric``, then test
  the last item once with the best and with the last weights.
* ``reference``: the paper's code: train on all but the last item and rank
  the last item every epoch (a full pass every ``full_eval_every_n`` epochs,
  else ``partial_eval_num_iters`` batches); the last full evaluation counts.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import gin
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from generative_recommenders.data.dataset import SequenceView, collate_sequences
from generative_recommenders.data.sequence_format import (
    atomic_torch_save,
    atomic_write_text,
    load_sequence_dataset,
)
from generative_recommenders.evaluation.metrics import METRIC_NAMES, format_metrics
from generative_recommenders.evaluation.ranking import evaluate_ranking
from generative_recommenders.modeling.hstu import HSTUEncoder
from generative_recommenders.modeling.item_embeddings import ItemEmbedding, ItemEmbeddingWithText
from generative_recommenders.modeling.losses import training_loss
from generative_recommenders.modeling.sasrec import SASRecEncoder
from generative_recommenders.modeling.sequential import SequentialRecommender
from generative_recommenders.text.embedding_store import load_dataset_text_embeddings

PROTOCOLS = ("validated", "reference")
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
    shuffle: bool,
    generator: Optional[torch.Generator] = None,
    num_workers: int = 0,
    prefetch_factor: Optional[int] = None,
) -> torch.utils.data.DataLoader:
    # Examples are slices of in-memory arrays: more workers than spare cores only compete
    # with the training threads (the reference configs ask for 8).
    workers = min(num_workers, max(0, (os.cpu_count() or 1) - 2))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collate_sequences,
        num_workers=workers,
        prefetch_factor=prefetch_factor if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
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


class _RunLog:
    """Everything a run reports: stdout, TensorBoard and results.json."""

    def __init__(self, output_dir: Path, header: Dict[str, Any]) -> None:
        self.output_dir = output_dir
        self.writer = SummaryWriter(log_dir=str(output_dir))
        self.results: Dict[str, Any] = dict(header, epochs=[], evaluations=[])

    def evaluation(self, epoch: int, split: str, full: bool, metrics: Dict[str, float], users: int) -> None:
        kind = "" if full else " (partial)"
        print(f"eval @ epoch {epoch} [{split}{kind}, {users} users]: {format_metrics(metrics)}", flush=True)
        prefix = split if full else f"{split}_partial"
        for name, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, epoch)
        self.results["evaluations"].append(
            {"epoch": epoch, "split": split, "full": full, "users": users, "metrics": metrics}
        )

    def save(self) -> None:
        self.writer.flush()
        atomic_write_text(self.output_dir / "results.json", json.dumps(self.results, indent=2))


@gin.configurable
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
    rank_cap: Optional[int] = None,
    data_root: str = "tmp",
    output_root: str = "exps",
    run_name: Optional[str] = None,
) -> Dict[str, Any]:
    """Trains and evaluates one model; returns (and writes) the results record.

    Writes to ``<output_root>/<dataset_name>/<run_name>-s<random_seed>/``.
    ``save_ckpt_every_n`` is accepted for the reference configs; the best
    and last weights are always written to the run folder.
    ``rank_cap=2500`` reproduces the reference's capped ranks (default: exact).
    """
    sampling_strategy = _TEXT_ALIASES.get(sampling_strategy, sampling_strategy)
    feat_prep = _TEXT_ALIASES.get(feat_prep, feat_prep)
    _require("loss_module", loss_module, ("SampledSoftmaxLoss",))
    _require("sampling_strategy", sampling_strategy, ("local", "in-batch"))
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
    del save_ckpt_every_n

    seed_everything(random_seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = enable_tf32
        torch.backends.cudnn.allow_tf32 = enable_tf32

    data_dir = Path(data_root) / dataset_name
    data = load_sequence_dataset(data_dir)
    text_embeddings = (
        load_dataset_text_embeddings(data_dir, text_embedding_model, data.num_items) if with_text else None
    )
    validated = eval_protocol == "validated"
    train_view = SequenceView(data, max_sequence_length, ignore_last_n=2 if validated else 1)
    test_view = SequenceView(data, max_sequence_length, ignore_last_n=0)
    valid_view = SequenceView(data, max_sequence_length, ignore_last_n=1) if validated else None
    if len(train_view) == 0:
        raise ValueError(
            f"{dataset_name}: no user has enough items to train under the {eval_protocol} protocol"
        )
    shuffle_generator = torch.Generator()
    train_loader = create_data_loader(train_view, local_batch_size, True, shuffle_generator)
    # Shuffled like the reference so that partial evaluations see a random subset.
    eval_view = valid_view if validated else test_view
    eval_loader = create_data_loader(eval_view, eval_batch_size, not validated, shuffle_generator)

    # Positions: history + the appended target + the reference's output slots.
    max_positions = max_sequence_length + gr_output_length + 1
    model = build_model(
        main_module, data.num_items, item_embedding_dim, max_positions,
        dropout_rate, user_embedding_norm, l2_norm_eps, text_embeddings,
    ).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=learning_rate, betas=(0.9, 0.98), weight_decay=weight_decay
    )

    run_dir = Path(output_root) / dataset_name / f"{run_name or model.description()}-s{random_seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log = _RunLog(
        run_dir,
        {
            "dataset": data.stats(),
            "model": model.description(),
            "protocol": eval_protocol,
            "text_embedding_model": text_embedding_model,
            "seed": random_seed,
            "selection_metric": selection_metric,
            "rank_cap": rank_cap,
            "device": str(device),
            "gin_config": gin.config_str(),
            "num_parameters": sum(p.numel() for p in model.parameters()),
            "skipped_users": {"train": train_view.num_skipped_users, "eval": eval_view.num_skipped_users},
        },
    )
    print(
        f"{dataset_name}: {data.num_users} users, {data.num_items} items; training {model.description()} "
        f"on {len(train_view)} sequences ({eval_protocol} protocol) on {device}; logs in {run_dir}",
        flush=True,
    )

    step, best, train_seconds, train_sequences = 0, None, 0.0, 0
    best_state: Optional[Dict[str, torch.Tensor]] = None
    for epoch in range(num_epochs):
        model.train()
        shuffle_generator.manual_seed(random_seed * 1_000_003 + epoch)
        losses: List[float] = []
        start = time.perf_counter()
        for batch in tqdm(train_loader, desc=f"epoch {epoch}", leave=False, mininterval=5):
            lr = learning_rate * min(1.0, (step + 1) / num_warmup_steps) if step < num_warmup_steps else learning_rate
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss = training_loss(
                model, batch, device, sampling_strategy, num_negatives, temperature, item_l2_norm
            )
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch}, step {step}")
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            log.writer.add_scalar("losses/train", losses[-1], step)
            log.writer.add_scalar("lr", lr, step)
            if step % eval_interval == 0:
                logging.info("step %d (epoch %d): loss %.6f", step, epoch, losses[-1])
            step += 1
            train_sequences += batch["target_ids"].numel()
        train_seconds += time.perf_counter() - start
        mean_loss = float(np.mean(losses))
        log.writer.add_scalar("losses/train_epoch", mean_loss, epoch)
        log.results["epochs"].append({"epoch": epoch, "train_loss": mean_loss})
        print(f"epoch {epoch}: loss {mean_loss:.4f}, {train_sequences / train_seconds:.0f} seq/s", flush=True)

        full = epoch % full_eval_every_n == 0 or epoch == num_epochs - 1
        if validated and not full:
            continue
        acc = evaluate_ranking(
            model, eval_loader, device, rank_cap, max_batches=None if full else partial_eval_num_iters
        )
        metrics = acc.means()
        log.evaluation(epoch, "valid" if validated else "test", full, metrics, acc.count)
        if validated and (best is None or metrics[selection_metric] > best["valid"][selection_metric]):
            best = {"epoch": epoch, "valid": metrics}
            best_state = copy.deepcopy(model.state_dict())
        log.save()

    log.results["train_seconds"] = train_seconds
    log.results["train_sequences_per_second"] = train_sequences / max(train_seconds, 1e-9)
    test_loader = create_data_loader(test_view, eval_batch_size, False)
    if validated:
        last = evaluate_ranking(model, test_loader, device, rank_cap)
        log.evaluation(num_epochs - 1, "test_last", True, last.means(), last.count)
        atomic_torch_save(model.state_dict(), run_dir / "last_model.pt")
        model.load_state_dict(best_state)
        atomic_torch_save(best_state, run_dir / "best_model.pt")
        best_test = evaluate_ranking(model, test_loader, device, rank_cap)
        log.evaluation(best["epoch"], "test_best", True, best_test.means(), best_test.count)
        best["test"] = best_test.means()
        log.results["last"] = last.means()
        log.results["best"] = best
        print(f"best epoch by validation {selection_metric}: {best['epoch']}", flush=True)
    else:
        full_evals = [e for e in log.results["evaluations"] if e["full"]]
        log.results["last"] = full_evals[-1]["metrics"]
        log.results["best"] = None  # no validation split under the reference protocol
        atomic_torch_save(model.state_dict(), run_dir / "last_model.pt")
    log.results["gin_config"] = gin.operative_config_str()
    log.save()
    log.writer.close()
    return log.results
