"""GRE's contrastive fine-tuning of a text encoder on item pairs (``models/contrastive.py``,
``module/loss.py``, ``config/contrastive.yaml`` of github:pepsi2222/GREB).

The loss is GRE's ``GuidedImprovedInBatchNegativeInfoNCELoss`` (GISTEmbed-style):
for the pair ``(q_i, p_i)`` of a batch, softmax cross-entropy of ``cos(q_i, p_i)``
against ``cos(q_i, p_j)``, ``cos(q_i, q_j)``, ``cos(p_i, p_j)`` (all j) and the
pair's sampled negatives, divided by a temperature, where every candidate that
the frozen guide model scores above the pair's own guide similarity is masked
out (a likely false negative). Two deliberate differences:

* sampled negatives are scored against the query, ``cos(q_i, n)``; GRE scores
  ``cos(p_i, n)`` while masking them with the guide's ``cos(q_i, n)``, so its
  mask and its scores disagree on which item the negative is compared with;
* an item against itself (the diagonals of query-query and positive-positive)
  is always masked; GRE masks it only through the guide (self-similarity 1
  above the pair's), which a pair of identical texts escapes.

Training follows GRE's config: AdamW (weight decay 0), linear decay without
warm-up, gradient norm clipped at 1 (the transformers Trainer's default),
gradient (activation) checkpointing, a
held-out share of the pairs whose loss (dropout off) is computed after every
epoch, early stopping on it and the best epoch's weights kept. Batches hold
the pairs of one dataset only (GRE's per-domain batches); GRE's scale_dict is
1 for every domain, so every pair is seen once per epoch. Everything random
(split, batch order, sampled negatives) derives from the seed, the epoch and
the batch index, and the checkpoint carries the generator states dropout
draws from, so a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from generative_recommenders.atomic_files import atomic_torch_save
from generative_recommenders.errors import UserError
from generative_recommenders.logs import get_logger
from generative_recommenders.text.sentence_folder import pool_hidden_states

logger = get_logger(__name__)

CHECKPOINT_VERSION = 1


class ContrastiveTrainingError(UserError):
    """Too few pairs, or a checkpoint that does not belong to this run."""


def guided_in_batch_info_nce(
    query: torch.Tensor,
    positive: torch.Tensor,
    guide_query: torch.Tensor,
    guide_positive: torch.Tensor,
    temperature: float,
    negatives: Optional[torch.Tensor] = None,
    guide_negatives: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """GRE's guided in-batch InfoNCE; ``query``/``positive`` ``[B, D]``, ``negatives`` ``[B, N, D]``.

    The guide tensors are the frozen guide model's embeddings of the same items.
    """
    def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(a.unsqueeze(-2), b.unsqueeze(-3) if b.dim() == 2 else b, dim=-1)

    guide_pair = cosine(guide_query, guide_positive).diagonal().unsqueeze(1)  # [B, 1]
    itself = torch.eye(query.shape[0], dtype=torch.bool, device=query.device)
    candidates = [
        (cosine(query, positive), cosine(guide_query, guide_positive) > guide_pair),
        (cosine(query, query), (cosine(guide_query, guide_query) > guide_pair) | itself),
        (cosine(positive, positive), (cosine(guide_positive, guide_positive) > guide_pair) | itself),
    ]
    if negatives is not None:
        if guide_negatives is None:
            raise ValueError("negatives need their guide embeddings")
        candidates.append((cosine(query, negatives), cosine(guide_query, guide_negatives) > guide_pair))
    scores = torch.cat([s.masked_fill(mask, float("-inf")) for s, mask in candidates], dim=1) / temperature
    return F.cross_entropy(scores, torch.arange(query.shape[0], device=query.device))


@dataclass
class PairDomain:
    """One dataset's item texts, guide embeddings and its pairs, split into training and held-out."""

    name: str
    texts: List[str]  # texts[k]: item id k's
    guide_embeddings: torch.Tensor  # [num_items, d_guide]
    train_pairs: np.ndarray  # int64 [n, 2]
    held_out_pairs: np.ndarray

    @property
    def num_items(self) -> int:
        return len(self.texts)


def split_pairs(pairs: np.ndarray, held_out_share: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """A seeded ``(1 - share, share)`` split of the pairs: GRE's 0.8/0.2."""
    order = np.random.default_rng(seed).permutation(len(pairs))
    num_held_out = int(len(pairs) * held_out_share)
    return pairs[np.sort(order[num_held_out:])], pairs[np.sort(order[:num_held_out])]


@dataclass
class ContrastiveConfig:
    pooling: str = "cls"
    max_length: int = 256
    batch_size: int = 64
    learning_rate: float = 3e-5
    temperature: float = 0.05
    negatives_per_pair: int = 3
    epochs: int = 100
    patience: int = 5
    max_grad_norm: float = 1.0
    seed: int = 42
    checkpoint_every: int = 50  # steps
    gradient_checkpointing: bool = True  # GRE's setting: activations recomputed in backward, a fraction of the memory


@dataclass
class TrainingHistory:
    held_out_loss: List[float] = field(default_factory=list)  # after each epoch
    train_loss: List[float] = field(default_factory=list)  # mean over each epoch's steps
    epoch_seconds: List[float] = field(default_factory=list)  # wall clock
    epoch_cpu_seconds: List[float] = field(default_factory=list)  # this process's CPU time
    held_out_loss_before: float = float("nan")  # of the base model
    best_epoch: int = -1  # 0-based
    steps: int = 0
    stopped_early: bool = False


def sample_negatives(rng: np.random.Generator, pairs: np.ndarray, num_items: int, per_pair: int) -> np.ndarray:
    """``[len(pairs), per_pair]`` items drawn uniformly, never the pair's own two items."""
    low, high = pairs.min(axis=1, keepdims=True), pairs.max(axis=1, keepdims=True)
    drawn = rng.integers(0, num_items - 2, size=(len(pairs), per_pair))
    drawn = drawn + (drawn >= low)  # step over the lower item, then over the higher one
    return drawn + (drawn >= high)


class ContrastiveTrainer:
    """Fine-tunes ``model`` (a transformers encoder) on the domains' pairs."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, domains: Sequence[PairDomain], config: ContrastiveConfig) -> None:
        if config.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, got {config.pooling!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.domains = list(domains)
        self.config = config
        if config.gradient_checkpointing and getattr(model, "supports_gradient_checkpointing", False):
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()  # renamed in transformers 5
        self.guides = [F.normalize(d.guide_embeddings.float(), dim=-1) for d in self.domains]
        # Every item text tokenized once; batches only pad.
        self.token_ids = [
            tokenizer(d.texts, truncation=True, max_length=config.max_length)["input_ids"] for d in self.domains
        ]
        for domain in self.domains:
            if config.negatives_per_pair and domain.num_items < 3:
                raise ContrastiveTrainingError(f"{domain.name}: sampled negatives need at least 3 items")

    # --- batches -----------------------------------------------------------------------------

    def _batches(self, pairs_of: Callable[[PairDomain], np.ndarray], rng: Optional[np.random.Generator]) -> List[Tuple[int, np.ndarray]]:
        """(domain index, pair rows) per batch: one domain per batch, shuffled where ``rng`` is given."""
        batches = []
        for index, domain in enumerate(self.domains):
            rows = np.arange(len(pairs_of(domain)))
            if rng is not None:
                rows = rng.permutation(rows)
            batches += [(index, rows[s : s + self.config.batch_size]) for s in range(0, len(rows), self.config.batch_size)]
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def train_batches(self, epoch: int) -> List[Tuple[int, np.ndarray]]:
        return self._batches(lambda d: d.train_pairs, np.random.default_rng([self.config.seed, 0, epoch]))

    def held_out_batches(self) -> List[Tuple[int, np.ndarray]]:
        return self._batches(lambda d: d.held_out_pairs, None)

    def _embed(self, domain: int, items: np.ndarray) -> torch.Tensor:
        device = next(self.model.parameters()).device
        inputs = self.tokenizer.pad({"input_ids": [self.token_ids[domain][i] for i in items]}, return_tensors="pt").to(device)
        hidden = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        return pool_hidden_states(hidden, inputs["attention_mask"], self.config.pooling)

    def batch_loss(self, domain: int, pairs: np.ndarray, negative_rng: np.random.Generator) -> torch.Tensor:
        guide = self.guides[domain]
        query, positive = self._embed(domain, pairs[:, 0]), self._embed(domain, pairs[:, 1])
        negatives = guide_negatives = None
        if self.config.negatives_per_pair:
            drawn = sample_negatives(negative_rng, pairs, self.domains[domain].num_items, self.config.negatives_per_pair)
            negatives = self._embed(domain, drawn.reshape(-1)).reshape(*drawn.shape, -1)
            guide_negatives = guide[torch.from_numpy(drawn)].to(query.device)
        to = query.device
        return guided_in_batch_info_nce(
            query, positive, guide[torch.from_numpy(pairs[:, 0])].to(to), guide[torch.from_numpy(pairs[:, 1])].to(to),
            self.config.temperature, negatives, guide_negatives,
        )

    @torch.no_grad()
    def held_out_loss(self) -> float:
        """Mean loss over the held-out pairs (weighted by batch size), dropout off, fixed negatives."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for b, (domain, rows) in enumerate(self.held_out_batches()):
            pairs = self.domains[domain].held_out_pairs[rows]
            loss = self.batch_loss(domain, pairs, np.random.default_rng([self.config.seed, 1, b]))
            total += float(loss) * len(rows)
            count += len(rows)
        self.model.train(was_training)
        return total / max(count, 1)

    # --- training ----------------------------------------------------------------------------

    def steps_per_epoch(self) -> int:
        return len(self.train_batches(0))

    def _restore(self, checkpoint_path: Path, run_signature: Optional[Dict[str, Any]], optimizer: torch.optim.Optimizer,
                 scheduler: Any) -> Dict[str, Any]:
        """Loads a checkpoint of this very run into the model, optimizer, schedule and generators;
        returns it for the loop's own state."""
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("version") != CHECKPOINT_VERSION or state.get("signature") != run_signature:
            raise ContrastiveTrainingError(
                f"{checkpoint_path}: written by another run (other data or settings); "
                "rerun with that run's settings, or remove it to start afresh"
            )
        self.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state

    def train(
        self,
        checkpoint_path: Optional[Path] = None,
        resume: bool = False,
        run_signature: Optional[Dict[str, Any]] = None,
        after_step: Optional[Callable[[int], None]] = None,
    ) -> TrainingHistory:
        """Trains until ``epochs`` or early stopping; leaves the best epoch's weights in the model.

        With ``checkpoint_path``, a checkpoint is written every ``checkpoint_every`` steps and
        after each epoch; ``resume`` continues from it (``run_signature`` must match the one
        it was written with). ``after_step(step)`` is called after each step (and checkpoint).
        """
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        steps_per_epoch = self.steps_per_epoch()
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.learning_rate, weight_decay=0.0)
        scheduler = get_linear_schedule_with_warmup(optimizer, 0, config.epochs * steps_per_epoch)
        history = TrainingHistory()
        best_state: Optional[Dict[str, torch.Tensor]] = None
        epoch, step_in_epoch, epoch_loss_sum = 0, 0, 0.0
        epoch_seconds = epoch_cpu_seconds = 0.0
        if resume and checkpoint_path is not None and checkpoint_path.is_file():
            state = self._restore(checkpoint_path, run_signature, optimizer, scheduler)
            history, best_state = state["history"], state["best_state"]
            epoch, step_in_epoch = state["epoch"], state["step_in_epoch"]
            epoch_loss_sum, epoch_seconds, epoch_cpu_seconds = state["epoch_loss_sum"], state["epoch_seconds"], state["epoch_cpu_seconds"]
            logger.info("resumed from %s at epoch %d, step %d of %d", checkpoint_path, epoch + 1, step_in_epoch, steps_per_epoch)

        def save_checkpoint() -> None:
            if checkpoint_path is None:
                return
            atomic_torch_save({
                "version": CHECKPOINT_VERSION, "signature": run_signature,
                "model": self.model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "history": history, "best_state": best_state, "epoch": epoch, "step_in_epoch": step_in_epoch,
                "epoch_loss_sum": epoch_loss_sum, "epoch_seconds": epoch_seconds, "epoch_cpu_seconds": epoch_cpu_seconds,
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            }, checkpoint_path)

        if history.steps == 0:
            history.held_out_loss_before = self.held_out_loss()
            logger.info("held-out loss before training: %.4f", history.held_out_loss_before)
        self.model.train()
        while epoch < config.epochs and not history.stopped_early:
            batches = self.train_batches(epoch)
            start, cpu_start = time.perf_counter(), time.process_time()
            with tqdm(total=len(batches), initial=step_in_epoch, desc=f"epoch {epoch + 1}", unit="step", disable=None) as progress:
                for b in range(step_in_epoch, len(batches)):
                    domain, rows = batches[b]
                    loss = self.batch_loss(domain, self.domains[domain].train_pairs[rows], np.random.default_rng([config.seed, 0, epoch, b]))
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    epoch_loss_sum += loss.item()
                    step_in_epoch, history.steps = b + 1, history.steps + 1
                    progress.update(1)
                    progress.set_postfix(loss=f"{epoch_loss_sum / step_in_epoch:.4f}")
                    if step_in_epoch % config.checkpoint_every == 0 and step_in_epoch < len(batches):
                        epoch_seconds += time.perf_counter() - start
                        epoch_cpu_seconds += time.process_time() - cpu_start
                        start, cpu_start = time.perf_counter(), time.process_time()
                        save_checkpoint()
                    if after_step is not None:
                        after_step(history.steps)
            epoch_seconds += time.perf_counter() - start
            epoch_cpu_seconds += time.process_time() - cpu_start
            held_out = self.held_out_loss()
            history.held_out_loss.append(held_out)
            history.train_loss.append(epoch_loss_sum / max(len(batches), 1))
            history.epoch_seconds.append(epoch_seconds)
            history.epoch_cpu_seconds.append(epoch_cpu_seconds)
            if history.best_epoch < 0 or held_out < history.held_out_loss[history.best_epoch]:
                history.best_epoch = epoch
                best_state = copy.deepcopy(self.model.state_dict())
            elif epoch - history.best_epoch >= config.patience:
                history.stopped_early = True
            logger.info(
                "epoch %d: train loss %.4f, held-out loss %.4f%s, %.1f s (%.1f CPU s)", epoch + 1, history.train_loss[-1],
                held_out, " (best)" if history.best_epoch == epoch else "", epoch_seconds, epoch_cpu_seconds,
            )
            epoch, step_in_epoch, epoch_loss_sum = epoch + 1, 0, 0.0
            epoch_seconds = epoch_cpu_seconds = 0.0
            save_checkpoint()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        return history

