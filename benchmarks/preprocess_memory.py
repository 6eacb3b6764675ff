"""Peak memory and time of preparing raw files the size of Amazon Reviews 2023 Office Products.

    python3 benchmarks/preprocess_memory.py
    python3 benchmarks/preprocess_memory.py --metadata_records 20000 --rated_items 5000 \
        --users 10000 --ratings 80000                    # a quick run

Generates, in a temporary folder removed afterwards, the two raw files of
``amzn23_office`` at the release's sizes: a 5-core rating-only CSV (1.8M
ratings of 223.3K users and 77.6K items, every one with >= 5) and a metadata
JSONL.gz of 710.4K item records (the category's item count) of about 1.6 KB
each (1.1 GiB unpacked) with the release's fields (titles, feature and
description lists, categories, details, image and video URLs). Then it runs
``preprocess_public_data.py --dataset amzn23_office --text_embedding_model none``
on them in a child process and prints that process's peak resident memory and
wall time, next to a child that only imports the script."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "paper pen stapler desk organizer ink toner label binder folder clip notebook marker "
    "printer sheet pack office school black blue durable premium refill cartridge tape "
    "envelope calendar planner chair lamp cable storage box heavy duty compatible with"
).split()


def _ids(rng: np.random.Generator, count: int, prefix: str, length: int) -> np.ndarray:
    """``count`` distinct random upper-case ids such as Amazon's user ids and ASINs."""
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    ids: set = set()
    while len(ids) < count:
        chars = alphabet[rng.integers(0, len(alphabet), size=(count, length - len(prefix)))]
        ids.update(prefix + "".join(row) for row in chars)
    return np.array(sorted(ids)[:count])


def power_law_lengths(rng: np.random.Generator, count: int, mean: float, low: int, high: int) -> np.ndarray:
    """``count`` lengths in ``low..high`` with P(n) proportional to n^-a, a set so the mean is ``mean``.

    The long tail of Amazon's 5-core users: most have 5 or 6 ratings, a few many more.
    """
    if not low < mean < (low + high) / 2:
        raise ValueError(f"a decreasing power law on {low}..{high} has a mean in ({low}, {(low + high) / 2}), not {mean}")
    lengths = np.arange(low, high + 1)

    def probabilities(exponent: float) -> np.ndarray:
        weights = lengths.astype(np.float64) ** -exponent
        return weights / weights.sum()

    lower, upper = 0.0, 50.0  # the mean falls as the exponent grows
    for _ in range(60):
        exponent = (lower + upper) / 2
        lower, upper = (exponent, upper) if probabilities(exponent) @ lengths > mean else (lower, exponent)
    return rng.choice(lengths, count, p=probabilities((lower + upper) / 2))


def write_ratings(
    path: Path, rng: np.random.Generator, users: np.ndarray, items: np.ndarray, num_ratings: int,
    max_user_ratings: Optional[int] = None,
) -> None:
    """A 5-core CSV: every user and item has >= 5 ratings; item popularity is Zipf-like.

    Users' rating counts are Zipf-like too, or, with ``max_user_ratings``, a
    power law on ``5..max_user_ratings`` with about ``num_ratings`` in all.
    """
    min_count = 5
    if max_user_ratings is None:
        extra_users = rng.choice(len(users), num_ratings - min_count * len(users), p=_zipf(len(users)))
        user_column = np.concatenate([np.repeat(np.arange(len(users)), min_count), extra_users])
    else:
        lengths = power_law_lengths(rng, len(users), num_ratings / len(users), min_count, max_user_ratings)
        user_column = np.repeat(np.arange(len(users)), lengths)
        num_ratings = len(user_column)
    extra_items = rng.choice(len(items), num_ratings - min_count * len(items), p=_zipf(len(items)))
    item_column = rng.permutation(np.concatenate([np.repeat(np.arange(len(items)), min_count), extra_items]))
    frame = pd.DataFrame(
        {
            "user_id": users[user_column],
            "parent_asin": items[item_column],
            "rating": rng.integers(1, 6, num_ratings).astype(np.float64),
            "timestamp": rng.integers(946_684_800_000, 1_694_000_000_000, num_ratings),
        }
    ).sample(frac=1.0, random_state=0)
    frame.to_csv(path, index=False, compression={"method": "gzip", "compresslevel": 1})


def _zipf(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 0.8
    return weights / weights.sum()


def _sentence(rng: np.random.Generator, words: int) -> str:
    return " ".join(rng.choice(WORDS, words)).capitalize() + "."


def write_metadata(path: Path, rng: np.random.Generator, asins: np.ndarray) -> None:
    """One release-shaped record per ASIN, in random order."""
    sentences = [_sentence(rng, int(n)) for n in rng.integers(6, 30, 5000)]

    def pick(k: int) -> List[str]:
        return [sentences[i] for i in rng.integers(0, len(sentences), k)]

    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for asin in rng.permutation(asins):
            image = f"https://m.media-amazon.com/images/I/{asin}"
            record = {
                "main_category": "Office Products",
                "title": pick(1)[0],
                "average_rating": 4.3,
                "rating_number": int(rng.integers(1, 5000)),
                "features": pick(int(rng.integers(0, 6))),
                "description": pick(int(rng.integers(0, 3))),
                "price": None,
                "images": [
                    {"thumb": f"{image}{k}._SS40_.jpg", "large": f"{image}{k}.jpg",
                     "variant": "MAIN" if k == 0 else f"PT0{k}", "hi_res": f"{image}{k}._SL1500_.jpg"}
                    for k in range(int(rng.integers(1, 6)))
                ],
                "videos": [],
                "store": "Generic",
                "categories": ["Office Products", "Office & School Supplies", "Paper"],
                "details": {"Brand": "Generic", "Color": "Black", "Item Weight": "8.1 ounces"},
                "parent_asin": str(asin),
                "bought_together": None,
            }
            f.write(json.dumps(record) + "\n")


def run_child(args: List[str]) -> Tuple[float, float, str]:
    """Runs a child Python; returns its peak RSS in MiB, its wall time in s and its stdout."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited with {child.returncode}:\n{stdout}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start, stdout  # ru_maxrss is in KiB on Linux


def generate(raw: Path, args: argparse.Namespace) -> None:
    rng = np.random.default_rng(0)
    asins = _ids(rng, args.metadata_records, "B0", 10)
    rated = rng.choice(asins, args.rated_items, replace=False)
    write_ratings(
        raw / "Office_Products.csv.gz", rng, _ids(rng, args.users, "A", 28), rated, args.ratings,
        args.max_user_ratings,
    )
    write_metadata(raw / "meta_Office_Products.jsonl.gz", rng, asins)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metadata_records", type=int, default=710_400)
    parser.add_argument("--rated_items", type=int, default=77_600)
    parser.add_argument("--users", type=int, default=223_300)
    parser.add_argument("--ratings", type=int, default=1_800_000)
    parser.add_argument(
        "--max_user_ratings", type=int,
        help="users' rating counts from a power law on 5..this (default: Zipf-like, unbounded)",
    )
    parser.add_argument("--generate_into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.metadata_records < args.rated_items or args.ratings < 5 * max(args.users, args.rated_items):
        parser.error("need metadata_records >= rated_items and ratings >= 5 x max(users, rated_items)")
    if args.generate_into is not None:
        generate(args.generate_into, args)
        return

    # Every step runs in a child: a child's peak RSS starts at its parent's size when it forks.
    with tempfile.TemporaryDirectory(prefix="preprocess_memory_") as tmp:
        raw, out = Path(tmp) / "raw", Path(tmp) / "out"
        raw.mkdir()
        _, seconds, _ = run_child([__file__, *sys.argv[1:], "--generate_into", str(raw)])
        metadata = raw / "meta_Office_Products.jsonl.gz"
        with gzip.open(metadata, "rb") as f:
            metadata_bytes = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 24), b""))
        print(
            f"generated in {seconds:.0f} s: {args.ratings:,} ratings "
            f"({(raw / 'Office_Products.csv.gz').stat().st_size / 2**20:.0f} MiB gzipped), "
            f"{args.metadata_records:,} metadata records ({metadata_bytes / 2**20:,.0f} MiB, "
            f"{metadata.stat().st_size / 2**20:,.0f} MiB gzipped)"
        )
        baseline, _, _ = run_child(["-c", "import preprocess_public_data"])
        peak, seconds, stdout = run_child(
            ["preprocess_public_data.py", "--dataset", "amzn23_office", "--raw_dir", str(raw),
             "--output_root", str(out), "--text_embedding_model", "none"]
        )
        print(stdout, end="")
        print(f"peak RSS: {peak:,.0f} MiB preparing amzn23_office in {seconds:.0f} s "
              f"(importing the script alone: {baseline:,.0f} MiB)")


if __name__ == "__main__":
    main()
