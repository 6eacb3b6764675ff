"""The demo behind ``make demo``: SASRec, HSTU and HSTU + MiniLM text on MovieLens-100K.

    python3 -m generative_recommenders.demo [--epochs N] [--seeds 42]

Trains the three with the HSTU paper's MovieLens configs (fewer epochs, so
that it finishes in minutes on a laptop CPU) under the validated protocol, and
ends with the comparison table of its runs (``generative_recommenders.compare``):
the test metrics of the epoch picked by validation NDCG@10, with the % change
over HSTU and over SASRec; then one user's last five films and the top-10 that
the best model (by validation NDCG@10) recommends to them, with titles. The item text embeddings come from the bundled
MiniLM encoder (``preprocess_public_data.py`` computes them).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import List, Optional, Sequence

from generative_recommenders.reports import compare
from generative_recommenders.config_files import resolve_config
from generative_recommenders.recommend import format_table
from generative_recommenders.recommender import Recommender
from generative_recommenders.trainer.train import train_config_file

CONFIGS = (  # shipped configs, by name (config_files.py)
    "ml100k/sasrec-sampled-softmax-n128-final",
    "ml100k/hstu-sampled-softmax-n128-final",
    "ml100k/hstu-sampled-softmax-n128-minilm",
)


def run(
    epochs: int, full_eval_every_n: int, seeds: Sequence[int], data_root: str, output_root: str
) -> List[Path]:
    """Trains every config with every seed; returns the run folders."""
    run_dirs = []
    for config in CONFIGS:
        for seed in seeds:
            bindings = [
                f"train_fn.num_epochs = {epochs}",
                f"train_fn.full_eval_every_n = {full_eval_every_n}",
                f"train_fn.random_seed = {seed}",
                f'train_fn.run_name = "demo-{Path(config).stem}"',
                f'train_fn.data_root = "{data_root}"',
                f'train_fn.output_root = "{output_root}"',
            ]
            run_dirs.append(Path(train_config_file(str(resolve_config(config)), bindings)["run_dir"]))
    return run_dirs


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--full_eval_every_n", type=int, default=2)
    parser.add_argument("--seeds", default="42", help="comma-separated; one run per config and seed")
    parser.add_argument("--data_root", default="tmp")
    parser.add_argument("--output_root", default="exps")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    run_dirs = run(args.epochs, args.full_eval_every_n, seeds, args.data_root, args.output_root)
    print(f"\nMovieLens-100K, {args.epochs} epochs:\n")
    compare.main([*map(str, run_dirs), "--output_dir", str(run_dirs[0].parent)])
    show_recommendations(run_dirs)


def show_recommendations(run_dirs: Sequence[Path], user_index: int = 0, k: int = 10) -> None:
    """Prints a user's last five films and the top-``k`` of the run with the best validation NDCG@10."""
    def validation_ndcg(run_dir: Path) -> float:
        return json.loads((run_dir / "results.json").read_text())["best"]["valid"]["ndcg@10"]

    best = max(run_dirs, key=validation_ndcg)
    rec = Recommender.from_run(best)
    user = rec.user_ids[user_index]
    last_five = rec.data.item_ids[user_index][-5:]
    print(f"\nUser {user}'s last five films (oldest first):")
    for item in last_five:
        print(f"  {rec.data.maps['id2item'][item]:<6} {rec.titles[item]}")
    print(f"\nTop {k} for user {user} from {best} (best validation NDCG@10 of the demo's runs):")
    print(format_table(rec.recommend(user, k=k)))


if __name__ == "__main__":
    main()
