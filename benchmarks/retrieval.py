"""Top-k retrieval from a million items: exact torch against faiss flat, HNSW and IVF.

    python3 benchmarks/retrieval.py [--items 1000000] [--queries 1000] [--threads 2]

The catalogue is synthetic but clustered, so that approximate search is
tested honestly: ``--clusters`` Gaussian clusters of uneven sizes (Dirichlet
weights) around random unit centres, every item and query L2-normalised, and
the queries drawn from the same mixture (their true neighbours sit in dense
clusters, among many near-equal candidates). For each index kind of
``generative_recommenders.retrieval``: build time, the index's size, the
process's peak resident memory after building it, queries per second (one
batch of ``--queries``) and recall@k against exact search.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generative_recommenders.retrieval import INDEX_KINDS, FaissIndex, build_index  # noqa: E402


def clustered_catalogue(num_items: int, num_queries: int, dim: int, clusters: int, spread: float, seed: int = 0):
    """``(items [N, D], queries [Q, D])`` float32, L2-normalised, from one Gaussian mixture."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.ones(clusters))

    def draw(count: int) -> np.ndarray:
        points = centres[rng.choice(clusters, size=count, p=weights)]
        points += spread * rng.standard_normal(points.shape, dtype=np.float32)
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    return draw(num_items), draw(num_queries)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true top-k that ``found`` holds."""
    return float(np.mean([len(set(f.tolist()) & set(t.tolist())) / truth.shape[1] for f, t in zip(found, truth)]))


def measure(kind: str, items: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int) -> Dict[str, float]:
    start = time.perf_counter()
    index = build_index(kind, items)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    _, found = index.search(queries, k)
    search_s = time.perf_counter() - start
    size = index.nbytes if isinstance(index, FaissIndex) else items.nbytes
    return {
        "build_s": build_s,
        "index_mib": size / 2**20,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "queries_per_s": len(queries) / search_s,
        "recall": recall_at_k(found, truth),
    }


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=10000)
    parser.add_argument("--spread", type=float, default=0.08, help="per-dimension std of a cluster")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kinds", default=",".join(INDEX_KINDS))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = args.kinds.split(",")
    if any(kind != "exact" for kind in kinds):
        import faiss

        faiss.omp_set_num_threads(args.threads)
    start = time.perf_counter()
    items, queries = clustered_catalogue(args.items, args.queries, args.dim, args.clusters, args.spread)
    print(
        f"{args.items} items x {args.dim}, {args.clusters} clusters (spread {args.spread}), {args.queries} queries, "
        f"k={args.k}, {args.threads} threads; generated in {time.perf_counter() - start:.1f} s\n"
    )
    _, truth = build_index("exact", items).search(queries, args.k)
    print(f"| index | build s | index MiB | peak RSS MiB | queries/s | recall@{args.k} |")
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        result = measure(kind, items, queries, truth, args.k)
        print(
            f"| {kind} | {result['build_s']:.1f} | {result['index_mib']:.0f} | {result['peak_rss_mib']:.0f} "
            f"| {result['queries_per_s']:.0f} | {result['recall']:.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
