"""The demo behind ``make demo``: SASRec, HSTU and HSTU + MiniLM text on MovieLens-100K.

    python3 -m generative_recommenders.demo [--epochs N]

Trains the three with the HSTU paper's MovieLens configs (fewer epochs, so
that it finishes in minutes on a laptop CPU) under the validated protocol, and
prints the test metrics of the epoch picked by validation NDCG@10, with the %
change over HSTU. The item text embeddings come from the bundled MiniLM
encoder (``preprocess_public_data.py`` computes them).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Optional

import gin

from generative_recommenders.trainer.train import train_fn

CONFIGS = {
    "SASRec": "configs/ml-100k/sasrec-sampled-softmax-n128-final.gin",
    "HSTU": "configs/ml-100k/hstu-sampled-softmax-n128-final.gin",
    "HSTU + MiniLM": "configs/ml-100k/hstu-sampled-softmax-n128-minilm.gin",
}
COLUMNS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@200", "mrr")


def results_table(rows: Dict[str, Dict[str, float]], baseline: str) -> str:
    """A Markdown table of metrics per model, with each model's % change over ``baseline``."""
    header = "| model | " + " | ".join(c.upper() for c in COLUMNS) + " |"
    lines = [header, "|---" * (len(COLUMNS) + 1) + "|"]
    for name, metrics in rows.items():
        cells = []
        for c in COLUMNS:
            cell = f"{metrics[c]:.4f}"
            if name != baseline and rows[baseline][c] > 0:
                cell += f" ({100 * (metrics[c] / rows[baseline][c] - 1):+.1f}%)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(epochs: int, full_eval_every_n: int, output_root: str) -> Dict[str, Dict[str, float]]:
    rows = {}
    for name, config in CONFIGS.items():
        gin.clear_config()
        gin.parse_config_files_and_bindings(
            [config],
            [
                f"train_fn.num_epochs = {epochs}",
                f"train_fn.full_eval_every_n = {full_eval_every_n}",
            ],
        )
        results = train_fn(run_name=f"demo-{Path(config).stem}", output_root=output_root)
        rows[name] = results["best"]["test"]
    return rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--full_eval_every_n", type=int, default=2)
    parser.add_argument("--output_root", default="exps")
    args = parser.parse_args(argv)
    rows = run(args.epochs, args.full_eval_every_n, args.output_root)
    print(f"\nMovieLens-100K, {args.epochs} epochs, test metrics at the best validation epoch:\n")
    print(results_table(rows, baseline="HSTU"))


if __name__ == "__main__":
    main()
