"""Where scoring the whole item table beats gathering the sampled negatives (forward + backward).

    python3 benchmarks/sampled_softmax.py [--threads 1]

``gathered``: ``table[negative_ids]`` (``[P, R, D]``) and a batched dot product;
``chunked``: the same a chunk of positions at a time, without the ``[P, R, D]``
tensor (bit-identical at one thread); ``item_table``: ``queries @ table.T``
(``[P, I]``) and the negatives' logits picked from it. Gathering costs ``P * R * D``
memory traffic, the table ``P * I * D`` matmul work: the table wins on small
catalogues. ``training_loss`` picks ``item_table`` up to
``ITEM_TABLE_MAX_ITEMS_PER_NEGATIVE`` items per negative, else ``chunked``.
Times are CPU seconds of this process (all threads), the paths alternating.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generative_recommenders.modeling.losses import (  # noqa: E402
    sampled_softmax_loss,
    sampled_softmax_loss_chunked,
    sampled_softmax_loss_from_table,
)

# (positions P, negatives R, items I, dim D): the Amazon and MovieLens configs, then larger catalogues.
SHAPES = [
    (1150, 512, 2421, 64),
    (12000, 128, 1683, 50),
    (1150, 512, 8000, 64),
    (1150, 512, 16000, 64),
    (1150, 512, 20000, 64),
    (1150, 512, 77552, 64),
    (12000, 128, 20000, 50),
]


def _cpu_seconds_per_call(loss_fns: Dict[str, Callable[[], torch.Tensor]], repeats: int) -> Dict[str, float]:
    """CPU seconds of one forward + backward of each, calls alternating (A B C C B A ...)."""
    seconds = dict.fromkeys(loss_fns, 0.0)
    for loss_fn in loss_fns.values():
        loss_fn().backward()  # warm-up
    for repeat in range(repeats):
        names = list(loss_fns) if repeat % 2 == 0 else list(reversed(list(loss_fns)))
        for name in names:
            start = time.process_time()
            loss_fns[name]().backward()
            seconds[name] += time.process_time() - start
    return {name: total / repeats for name, total in seconds.items()}


def main(argv: List[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads\n")
    print("| positions | negatives | items | items per negative | gathered CPU-ms | chunked CPU-ms | item_table CPU-ms |")
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

        def chunked() -> torch.Tensor:
            return sampled_softmax_loss_chunked(queries, positive_ids, positives, negative_ids, table, 0.05)

        def item_table() -> torch.Tensor:
            return sampled_softmax_loss_from_table(queries, positive_ids, positives, negative_ids, table, 0.05)

        ms = {name: s * 1e3 for name, s in _cpu_seconds_per_call(
            {"gathered": gathered, "chunked": chunked, "item_table": item_table}, args.repeats
        ).items()}
        print(
            f"| {positions} | {negatives} | {items} | {items / negatives:.0f} | {ms['gathered']:.0f} "
            f"| {ms['chunked']:.0f} | {ms['item_table']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:])
