"""Where scoring the whole item table beats gathering the sampled negatives (forward + backward).

    python3 benchmarks/sampled_softmax.py

``gathered``: ``table[negative_ids]`` (``[P, R, D]``) and a batched dot product;
``item_table``: ``queries @ table.T`` (``[P, I]``) and the negatives' logits picked
from it. The first costs ``P * R * D`` memory traffic, the second ``P * I * D``
matmul work: the table wins on small catalogues. ``training_loss`` picks
``item_table`` up to 32 items per negative.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generative_recommenders.modeling.losses import (  # noqa: E402
    sampled_softmax_loss,
    sampled_softmax_loss_from_table,
)

# (positions P, negatives R, items I, dim D): the Amazon and MovieLens configs, then larger catalogues.
SHAPES = [
    (1150, 512, 2421, 64),
    (12000, 128, 1683, 50),
    (1150, 512, 20000, 64),
    (1150, 512, 77552, 64),
    (12000, 128, 20000, 50),
]


def _seconds_per_call(loss_fn: Callable[[], torch.Tensor], repeats: int) -> float:
    loss_fn().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        loss_fn().backward()
    return (time.perf_counter() - start) / repeats


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print("| positions | negatives | items | items per negative | gathered ms | item_table ms | table speed-up |")
    print("|---|---|---|---|---|---|---|")
    for positions, negatives, items, dim in SHAPES:
        generator = torch.Generator().manual_seed(0)
        queries = F.normalize(torch.randn(positions, dim, generator=generator), dim=-1).requires_grad_()
        table = F.normalize(torch.randn(items, dim, generator=generator), dim=-1).requires_grad_()
        positive_ids = torch.randint(1, items, (positions,), generator=generator)
        positives = table.detach()[positive_ids]
        negative_ids = torch.randint(1, items, (positions, negatives), generator=generator)

        def gathered() -> torch.Tensor:
            return sampled_softmax_loss(queries, positive_ids, positives, negative_ids, table[negative_ids], 0.05)

        def item_table() -> torch.Tensor:
            return sampled_softmax_loss_from_table(queries, positive_ids, positives, negative_ids, table, 0.05)

        gathered_s = _seconds_per_call(gathered, args.repeats)
        table_s = _seconds_per_call(item_table, args.repeats)
        print(
            f"| {positions} | {negatives} | {items} | {items / negatives:.0f} | {gathered_s * 1e3:.0f} "
            f"| {table_s * 1e3:.0f} | {gathered_s / table_s:.2f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
