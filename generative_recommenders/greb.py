"""GRE-B: does a text encoder make recommendations better? The runner (its tables: ``reports/greb_tables.py``).

    python3 -m generative_recommenders.greb --dataset ml100k --local_dir DIR \\
        --encoders none,minilm,hf:PATH --models sasrec,dssm,hstu,din,deepfm --seeds 1,2,3 \\
        [--epochs N] [--ctr_epochs N] [--cold_item_share 0.1] [--gin_bindings B ...] [--output_dir exps/greb]

It prepares what is missing (datasets under
``--data_root``, text embeddings per encoder through the embedding cache),
checks every encoder and setting before anything trains, trains every
(dataset, encoder, model, seed) with ``configs/greb/<model>[-text].gin``
(a finished run is not trained again: the trainer returns its results) and
writes ``greb.md``, ``greb.csv`` and ``greb.png`` to ``--output_dir`` from every
finished run there (several invocations, e.g. one per core, share one table).

GRE-B's models are the configs in ``configs/greb/`` (``<model>.gin``, with
text ``<model>-text.gin``); each trains a registered model, whose registration
gives its name in the tables and its task.

A results record is one trained (dataset, encoder, model, seed)::

    {"dataset": "ml100k", "encoder": "minilm", "model": "dssm", "seed": 1,
     "title": "DSSM", "task": "retrieval",          # the registered model and its task
     "test": {"ndcg@10": ..., "hr@10": ..., ...} or {"auc": ..., "logloss": ...},
     "popularity_groups": {"head": {"ndcg@10": ..., ...}, "torso": ..., "tail": ..., "groups": ...},
     "cold_items": {"cold_items": {"ndcg@10": ..., ...}, "groups": ...},   # optional
     "has_categories": true}                                               # ranking models

``encoder`` ``none`` is the id-only (naive) model. With one target per user,
Recall@10 is HR@10.

An encoder name with ``{seed}`` is one encoder per seed (``hf:tmp/gre/gre-ml100k-s{seed}``:
GRE fine-tuned in-domain without that seed's cold items) and one row of the tables. An encoder
that ``gre_train`` fine-tuned on a benchmarked dataset is refused for a retrieval run whose
cold-item split it did not leave out (``gre_training.json`` says which it left out): it has
seen the held-out items' interactions.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from generative_recommenders.errors import UserError, run_command
from generative_recommenders.evaluation.target_groups import COLD_ITEMS
from generative_recommenders.reports.greb_tables import EPOCHS_COLUMN, NAIVE, TIME_COLUMN, write_greb_tables

TUNE_SPACE = "greb/search-space.toml"  # a shipped search space (gr-tune)
SEED_FIELD = "{seed}"


def greb_models() -> Dict[str, Any]:
    """GRE-B's models: ``{key: ModelSpec}`` for each shipped config ``greb/<key>`` (its ``-text`` twin
    aside), the registered model that config trains; retrieval models first."""
    import generative_recommenders.trainer.train  # noqa: F401  (registers train_fn and the models' configurables)
    from generative_recommenders.config_files import available_configs, resolve_config
    from generative_recommenders.modeling.registry import model_spec
    from generative_recommenders.trainer.config import bound_parameter, parse_gin

    models = {}
    for name in available_configs():
        if name.startswith("greb/") and not name.endswith("-text"):
            parse_gin([str(resolve_config(name))], [])
            models[name[len("greb/"):]] = model_spec(bound_parameter("train_fn.main_module", "HSTU"))
    return dict(sorted(models.items(), key=lambda item: item[1].task != "retrieval"))

class GrebError(UserError):
    """A GRE-B runner argument that cannot run."""


def _names(text: str, option: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise GrebError(f"{option} needs at least one name")
    return list(dict.fromkeys(names))


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m generative_recommenders.greb", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", action="append", default=[], help="a prepared or public dataset (repeatable)")
    parser.add_argument("--local_dir", action="append", default=[], type=Path,
                        help="a local-format folder (interactions.csv + items.jsonl), named by its folder (repeatable)")
    parser.add_argument("--encoders", default="none,minilm",
                        help="text encoders; none is the id-only model; {seed} in a name: one encoder per seed")
    parser.add_argument("--models", help="configs of configs/greb/ by name (default: every one)")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--epochs", type=int, help="caps every model's epochs (a quick look)")
    parser.add_argument("--ctr_epochs", type=int, help="caps the CTR models' (DIN, DeepFM) epochs (default --epochs)")
    parser.add_argument("--gin_bindings", action="append", default=[], help="passed to every run (repeatable)")
    parser.add_argument("--cold_item_share", type=float,
                        help="retrieval models train without this seeded share of the items (train_fn.cold_item_share)")
    parser.add_argument("--data_root", type=Path, default=Path("tmp"), help="where datasets are prepared")
    parser.add_argument("--output_dir", type=Path, default=Path("exps/greb"))
    parser.add_argument("--tune", type=int, metavar="N",
                        help="first tune each (dataset, encoder, model) with N trials (gr-tune, on validation, "
                        "first seed); its seeds then train with the best bindings")
    parser.add_argument("--tune_space", default=TUNE_SPACE, help=f"the search space of --tune (default {TUNE_SPACE})")
    args = parser.parse_args(argv)
    args.encoders = _names(args.encoders, "--encoders")
    known = greb_models()
    args.models = list(known) if args.models is None else _names(args.models, "--models")
    unknown = [m for m in args.models if m not in known]
    if unknown:
        raise GrebError(f"--models: {', '.join(unknown)} is not a GRE-B model; choose from {', '.join(known)}")
    args.tasks = {model: known[model].task for model in args.models}
    args.known_models = list(known)
    try:
        args.seeds = [int(seed) for seed in _names(args.seeds, "--seeds")]
    except ValueError:
        raise GrebError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    for option in ("epochs", "ctr_epochs", "tune"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise GrebError(f"--{option} must be >= 1, got {getattr(args, option)}")
    if not args.dataset and not args.local_dir:
        raise GrebError("name a dataset: --dataset NAME or --local_dir DIR")
    return args


def prepare_datasets(args: argparse.Namespace) -> List[str]:
    """Prepares what is missing under ``--data_root``; returns the dataset names."""
    from generative_recommenders import prepare as prep

    from generative_recommenders.data.local import load_local_dataset

    names = []
    for name in args.dataset:
        if prep.why_not_prepared(args.data_root / name) is None:
            names.append(name)
            continue
        if name not in prep.PUBLIC_DATASETS:
            raise GrebError(f"--dataset {name}: not prepared in {args.data_root} and not a public dataset; "
                            "pass its folder with --local_dir")
        public = prep.PUBLIC_DATASETS[name]
        prep.prepare_dataset(
            name, partial(public.load, args.data_root / "raw"), args.data_root, False, public.text_recipe,
            f"python3 preprocess_public_data.py --dataset {name}", timestamp_unit=public.timestamp_unit,
            source={"public_dataset": name},  # data/sources.py: recorded, and checked on a rerun
        )
        names.append(name)
    for folder in args.local_dir:
        name = folder.resolve().name
        if name in names:  # one folder name, one prepared dataset
            raise GrebError(
                f"--local_dir {folder}: its name {name} is already a dataset of this run (--dataset or another "
                f"--local_dir); prepare it under another name (python3 preprocess_public_data.py --local_dir "
                f"{folder} --dataset_name NAME) and pass --dataset NAME"
            )
        prep.prepare_dataset(
            name, partial(load_local_dataset, folder), args.data_root, False, "local",
            f"python3 preprocess_public_data.py --local_dir {folder} --dataset_name {name}",
            source={"local_dir": str(folder.resolve())},  # data/sources.py: recorded, and checked on a rerun
        )
        names.append(name)
    return names


def prepare_embeddings(datasets: Sequence[str], encoders: Sequence[str], data_root: Path) -> None:
    """Computes the text embeddings that are missing; every encoder they need is loaded (checked) first."""
    from generative_recommenders.text.embedding_store import (
        EmbeddingFileError,
        compute_item_text_embeddings,
        load_dataset_text_embeddings,
        read_item_texts,
    )
    from generative_recommenders.text.encoders import check_text_encoder_name, get_text_encoder

    missing = []
    for encoder in encoders:
        if encoder == NAIVE:
            continue
        check_text_encoder_name(encoder)
        for dataset in datasets:
            texts = read_item_texts(data_root / dataset)
            try:
                load_dataset_text_embeddings(data_root / dataset, encoder, len(texts))
            except EmbeddingFileError:
                missing.append((dataset, encoder, texts))
    loaded = {encoder: get_text_encoder(encoder) for encoder in dict.fromkeys(e for _, e, _ in missing)}
    for dataset, encoder, texts in missing:
        print(f"{dataset}: computing {encoder} item text embeddings")
        compute_item_text_embeddings(texts, loaded[encoder], data_root / dataset, data_root / "text_cache")


def _folder_name(encoder: str) -> str:
    """An encoder's name as one folder name (``hf:tmp/gre/x`` -> ``hf-tmp-gre-x``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", encoder).strip("-")


def encoder_for_seed(encoder: str, seed: int) -> str:
    """The encoder that trains ``seed``'s runs: ``encoder`` with ``{seed}`` replaced by the seed."""
    return encoder.replace(SEED_FIELD, str(seed))


def check_in_domain_encoders(args: argparse.Namespace, datasets: Sequence[str]) -> None:
    """A GRE encoder fine-tuned on a benchmarked dataset left out each retrieval run's cold items."""
    if not args.cold_item_share or all(task != "retrieval" for task in args.tasks.values()):
        return
    for encoder in args.encoders:
        for seed in args.seeds:
            name = encoder_for_seed(encoder, seed)
            record = Path(name[len("hf:"):]) / "gre_training.json"
            if not name.startswith("hf:") or not record.is_file():
                continue
            settings = json.loads(record.read_text())["settings"]
            held_out = (settings.get("cold_item_share"), settings.get("cold_item_seed"))
            for dataset in set(datasets) & set(settings["dataset"]):
                if held_out != (args.cold_item_share, seed):
                    left_out = "none" if not held_out[0] else f"share {held_out[0]}, seed {held_out[1]}"
                    raise GrebError(
                        f"--encoders {name}: fine-tuned on {dataset}'s pairs with cold items left out: {left_out}; "
                        f"the seed-{seed} run holds out share {args.cold_item_share} drawn with seed {seed}, whose "
                        f"interactions it has seen. Train one encoder per seed (gre_train --cold_item_share "
                        f"{args.cold_item_share} --cold_item_seed N) and name them with {SEED_FIELD} (hf:DIR-s{SEED_FIELD})"
                    )


def run_name(model: str, encoder: str, tuned: bool = False) -> str:
    """The run folder name of a cell (its seeds add ``-s<seed>``); ``tuned``: trained with ``--tune``'s bindings."""
    return f"{model}-{_folder_name(encoder)}{'-tuned' if tuned else ''}"


def run_bindings(
    args: argparse.Namespace, dataset: str, encoder: str, model: str, seed: int, tuned: bool = False
) -> List[str]:
    """The runner's bindings of one run (``tuned``: named as trained with ``--tune``'s bindings)."""
    encoder = encoder_for_seed(encoder, seed)
    bindings = [
        f'train_fn.dataset_name = "{dataset}"',
        f'train_fn.data_root = "{args.data_root}"',
        f'train_fn.output_root = "{args.output_dir / "runs"}"',
        f'train_fn.run_name = "{run_name(model, encoder, tuned)}"',
        f"train_fn.random_seed = {seed}",
    ]
    if encoder != NAIVE:
        bindings.append(f'train_fn.text_embedding_model = "{encoder}"')
    ranking = args.tasks[model] == "ctr"
    epochs = args.ctr_epochs if ranking and args.ctr_epochs is not None else args.epochs
    if epochs is not None:
        bindings.append(f"train_fn.num_epochs = {epochs}")
    if args.cold_item_share is not None and not ranking:  # CTR samples have no cold split
        bindings.append(f"train_fn.cold_item_share = {args.cold_item_share}")
    return bindings + list(args.gin_bindings)


def tuned_cell_bindings(args: argparse.Namespace, dataset: str, encoder: str, model: str) -> List[str]:
    """With ``--tune N``: the best bindings of N trials of the cell (its first seed)."""
    if args.tune is None:
        return []
    from generative_recommenders.tune import tuned_bindings

    best = tuned_bindings(
        config_file(model, encoder), run_bindings(args, dataset, encoder, model, args.seeds[0]), args.tune_space,
        args.tune, args.output_dir / "tune" / f"{dataset}-{_folder_name(encoder)}-{model}",
    )
    return best


def config_file(model: str, encoder: str) -> str:
    from generative_recommenders.config_files import resolve_config

    return str(resolve_config(f"greb/{model}{'' if encoder == NAIVE else '-text'}"))


def check_runs(args: argparse.Namespace, datasets: Sequence[str]) -> None:
    """Every run's config checks out against its data before anything trains."""
    from generative_recommenders.data.sequence_format import load_sequence_dataset
    from generative_recommenders.trainer.config import parse_gin
    from generative_recommenders.trainer.train import config_from_gin

    for dataset in datasets:
        num_items = load_sequence_dataset(args.data_root / dataset).num_items
        for model in args.models:
            for encoder in args.encoders:
                parse_gin([config_file(model, encoder)], run_bindings(args, dataset, encoder, model, args.seeds[0]))
                config = config_from_gin()
                if config.task == "retrieval" and config.num_negatives >= num_items:
                    raise GrebError(
                        f"{dataset} has {num_items} items, fewer than {model}'s {config.num_negatives} negatives "
                        "per position; lower it with --gin_bindings 'train_fn.num_negatives = N'"
                    )


def greb_record(results: Dict[str, Any], dataset: str, encoder: str, model: str, seed: int) -> Dict[str, Any]:
    """A trainer results record as the tables read it."""
    from generative_recommenders.modeling.registry import model_spec

    record = {
        "dataset": dataset, "encoder": encoder, "model": model, "seed": seed,
        "title": model_spec(results["config"]["main_module"]).title, "task": results["task"],
        "test": results["best"]["test"],
        TIME_COLUMN: results["train_seconds"] / max(1, results["epochs_trained"]),
        EPOCHS_COLUMN: results["epochs_trained"],
    }
    for key in ("popularity_groups", COLD_ITEMS, "has_categories"):
        if key in results:
            record[key] = results[key]
    record["num_items"] = results["dataset"]["num_items"]
    return record


def finished_records(
    output_dir: Path, models: Sequence[str], tuned: bool = False, encoders: Sequence[str] = ()
) -> List[Dict[str, Any]]:
    """A record of every finished run of ``models`` (GRE-B's, in table order) under ``output_dir/runs``,
    whichever invocation trained it (one process per dataset or per core writes one table); with
    ``tuned``, the ``--tune`` runs instead of the others. A folder the runner did not name is left out.
    A run of an ``encoders`` name with ``{seed}`` is recorded under that name."""
    records = []
    for path in sorted(Path(output_dir, "runs").glob("*/*/results.json")):
        results = json.loads(path.read_text())
        config = results.get("config", {})
        encoder = results.get("text_embedding_model") or NAIVE
        named = [m for m in models if config.get("run_name") == run_name(m, encoder, tuned)]
        if results.get("finished") and named:
            seed = config["random_seed"]
            encoder = next((e for e in encoders if SEED_FIELD in e and encoder_for_seed(e, seed) == encoder), encoder)
            records.append(greb_record(results, config["dataset_name"], encoder, named[0], seed))
    order = list(models)  # the id-only row first
    return sorted(records, key=lambda r: (r["dataset"], order.index(r["model"]), r["encoder"] != NAIVE, r["encoder"], r["seed"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from generative_recommenders.logs import configure_logging
    from generative_recommenders.trainer.train import train_config_file

    configure_logging()
    args = parse_args(argv)
    datasets = prepare_datasets(args)
    check_in_domain_encoders(args, datasets)
    per_seed = dict.fromkeys(encoder_for_seed(e, seed) for e in args.encoders for seed in args.seeds)
    prepare_embeddings(datasets, list(per_seed), args.data_root)
    check_runs(args, datasets)
    for dataset in datasets:
        for encoder in args.encoders:
            for model in args.models:
                best = tuned_cell_bindings(args, dataset, encoder, model)
                for seed in args.seeds:
                    bindings = run_bindings(args, dataset, encoder, model, seed, args.tune is not None) + best
                    # resume: a run cut short goes on from its checkpoint; a finished one returns its results.
                    train_config_file(config_file(model, encoder), bindings, resume=True)
                    records = finished_records(args.output_dir, args.known_models, args.tune is not None, args.encoders)
                    paths = write_greb_tables(records, args.output_dir)  # the table so far
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    run_command("greb", main, sys.argv[1:])
