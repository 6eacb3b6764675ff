"""Recommendations, scores and embeddings from a trained run, on the command line.

    python3 -m generative_recommenders.recommend --run_dir exps/ml100k/RUN --user_id 1 --user_id 2
    python3 -m generative_recommenders.recommend --run_dir exps/ml100k/RUN --history 50,172,181
    python3 -m generative_recommenders.recommend --run_dir exps/ml100k/RUN --all_users --output recs.csv
    python3 -m generative_recommenders.recommend --run_dir exps/ml100k/RUN --export_embeddings emb/

``--user_id`` and ``--history`` print a table (rank, item id, score, title)
per user. ``--all_users`` writes every user's top-k to ``--output``
(``.csv``, or ``.parquet`` with pyarrow) a chunk of users at a time, through
a temp file renamed at the end. ``--export_embeddings DIR`` writes
``item_embeddings.npy`` / ``item_ids.json`` and ``user_embeddings.npy`` /
``user_ids.json`` (row i belongs to id i). Ids are the dataset's original
ones; see ``generative_recommenders.recommender`` for the semantics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import pandas as pd
from tqdm import tqdm

from generative_recommenders.atomic_files import atomic_path, atomic_write_text
from generative_recommenders.errors import run_command
from generative_recommenders.recommender import Recommender, RecommenderError
from generative_recommenders.retrieval import INDEX_KINDS

PROGRAM = "recommend"
TITLE_WIDTH = 64
OUTPUT_FORMATS = (".csv", ".parquet")


def check_device(name: str) -> None:
    """Raises RecommenderError unless ``--device name`` is a device this machine has."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecommenderError(f"--device {name}: not a device name; use cpu, or cuda where there is a GPU") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecommenderError(f"--device {name}: this machine has no usable CUDA GPU; use --device cpu (or leave it out)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise RecommenderError(
            f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    if device.type not in ("cpu", "cuda"):
        raise RecommenderError(f"--device {name}: the recommender runs on cpu or cuda")


def _parse_list(text: str, flag: str) -> List[str]:
    values = [value.strip() for value in text.split(",") if value.strip()]
    if not values:
        raise RecommenderError(f"{flag} {text!r} is empty: give comma-separated values, oldest first")
    return values


def _parse_ints(text: str, flag: str) -> List[int]:
    values = _parse_list(text, flag)
    try:
        return [int(value) for value in values]
    except ValueError:
        raise RecommenderError(f"{flag} {text!r}: expected comma-separated whole numbers") from None


def format_table(recommendations: pd.DataFrame) -> str:
    """``rank  item_id  score  title`` lines; cold items are marked ``[cold]``."""
    id_width = max([len("item_id"), *(len(item) for item in recommendations["item_id"])])
    lines = [f"{'rank':>4}  {'item_id':<{id_width}}  {'score':>7}  title"]
    for rank, item, score, title, cold in recommendations[["rank", "item_id", "score", "title", "cold"]].itertuples(index=False):
        title = title if len(title) <= TITLE_WIDTH else title[: TITLE_WIDTH - 3] + "..."
        lines.append(f"{rank:>4}  {item:<{id_width}}  {score:>7.4f}  {title}{' [cold]' if cold else ''}")
    return "\n".join(lines)


def write_recommendations(
    rec: Recommender, user_ids: List[str], k: int, exclude_history: bool, output: Path, chunk_size: int
) -> int:
    """Streams every user's top-``k`` to ``output`` a chunk of users at a time; returns the rows written."""
    if output.suffix not in OUTPUT_FORMATS:
        raise RecommenderError(f"--output {output}: write .csv or .parquet")
    if output.suffix == ".parquet":
        try:
            import pyarrow
            import pyarrow.parquet
        except ImportError:
            raise RecommenderError(
                f"--output {output}: writing .parquet needs the pyarrow package (pip install pyarrow), or write .csv"
            ) from None
    rows = 0
    with atomic_path(output) as tmp, tqdm(total=len(user_ids), unit="user", desc="recommending", mininterval=2, disable=None) as bar:
        writer = None
        for begin in range(0, len(user_ids), chunk_size):
            chunk = rec.recommend(user_ids[begin:begin + chunk_size], k=k, exclude_history=exclude_history)
            if output.suffix == ".csv":
                chunk.to_csv(tmp, mode="w" if begin == 0 else "a", header=begin == 0, index=False)
            else:
                table = pyarrow.Table.from_pandas(chunk, preserve_index=False)
                writer = writer or pyarrow.parquet.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            rows += len(chunk)
            bar.update(min(chunk_size, len(user_ids) - begin))
        if writer is not None:
            writer.close()
    return rows


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)


def export_embeddings(rec: Recommender, folder: Path) -> List[Path]:
    """Item and user embeddings as ``.npy`` with their id lists as JSON; returns the files written."""
    written = []
    for kind, (ids, vectors) in (("item", rec.item_embeddings()), ("user", rec.user_embeddings())):
        _save_npy(folder / f"{kind}_embeddings.npy", vectors)
        atomic_write_text(folder / f"{kind}_ids.json", json.dumps(ids.tolist()))
        written += [folder / f"{kind}_embeddings.npy", folder / f"{kind}_ids.json"]
    return written


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True, help="a training run's folder (holds results.json and the weights)")
    parser.add_argument("--user_id", action="append", default=[], help="a user of the dataset (repeatable)")
    parser.add_argument("--history", help="comma-separated item ids, oldest first, for someone not in the data")
    parser.add_argument("--timestamps", help="with --history: one time per item (default: positions 0..n-1)")
    parser.add_argument("--request_time", type=int, help="with --history: when it is asked (default: the last item's time)")
    parser.add_argument("--all_users", action="store_true", help="every user of the dataset, written to --output")
    parser.add_argument("--output", type=Path, help="with --all_users: recs.csv or recs.parquet")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user (default 10)")
    parser.add_argument("--include_history", action="store_true", help="keep items the user has already seen")
    parser.add_argument("--include_cold", action="store_true",
                        help="also rank items never trained on (default: only for models with text)")
    parser.add_argument("--weights", choices=("best", "last"),
                        help="default: the run's choice, best where validation chose an epoch, else last")
    parser.add_argument("--index", choices=INDEX_KINDS, default="exact",
                        help="exact (default) or a faiss index: flat, hnsw, ivf (saved in the run folder)")
    parser.add_argument("--export_embeddings", type=Path, metavar="DIR", help="write item and user embeddings here")
    parser.add_argument("--data_dir", type=Path, help="the run's prepared dataset (default: where it was trained from)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--chunk_size", type=int, default=1024, help="users per chunk with --all_users")
    args = parser.parse_args(argv)
    if not (args.user_id or args.history or args.all_users or args.export_embeddings):
        parser.error("say what to do: --user_id U, --history i1,i2,..., --all_users --output F, or --export_embeddings DIR")
    if args.all_users != (args.output is not None):
        raise RecommenderError("--all_users and --output go together: --all_users --output recs.csv")
    if (args.timestamps or args.request_time is not None) and not args.history:
        raise RecommenderError("--timestamps and --request_time describe a --history: give --history i1,i2,... too")
    if args.chunk_size < 1:
        raise RecommenderError(f"--chunk_size {args.chunk_size}: must be at least 1")

    if args.device is not None:
        check_device(args.device)
    rec = Recommender.from_run(
        args.run_dir, args.weights, args.device, args.data_dir, args.index, True if args.include_cold else None
    )
    exclude_history = not args.include_history
    source = f"{args.run_dir} ({rec.weights} weights, {args.index} retrieval)"
    for user in args.user_id:
        table = rec.recommend([user], k=args.k, exclude_history=exclude_history)
        print(f"\nuser {user}: top {args.k} from {source}\n{format_table(table)}")
    if args.history:
        items = _parse_list(args.history, "--history")
        times = None if args.timestamps is None else _parse_ints(args.timestamps, "--timestamps")
        table = rec.recommend_for_history(items, times, args.request_time, args.k, exclude_history)
        print(f"\nhistory {','.join(items)}: top {args.k} from {source}\n{format_table(table)}")
    if args.all_users:
        start = time.perf_counter()
        rows = write_recommendations(rec, rec.user_ids, args.k, exclude_history, args.output, args.chunk_size)
        print(f"{args.output}: {rows} recommendations for {len(rec.user_ids)} users in {time.perf_counter() - start:.1f} s")
    if args.export_embeddings:
        written = export_embeddings(rec, args.export_embeddings)
        print(f"{args.export_embeddings}: {', '.join(path.name for path in written)}")


if __name__ == "__main__":
    run_command(PROGRAM, main)
