"""HSTU and HSTU-BLaIR sequential recommenders.

``generative_recommenders.Recommender`` (a trained run, used) is imported on
first access, so that ``import generative_recommenders`` stays light.
"""

import os
from typing import Any

# Idle OpenMP threads spin briefly, then sleep. With OpenMP's default (GOMP_SPINCOUNT 300,000) a
# step of many small parallel ops costs several times one thread's CPU, and several times its wall
# clock when other processes share the cores; sleeping at once (OMP_WAIT_POLICY=PASSIVE) makes two
# threads slower than one on an idle machine. 10,000 keeps the good side of both
# (benchmarks/cpu_scaling.py, docs/performance.md). OpenMP reads it when torch loads it, so it is
# set on the package's import, before torch's; a policy or spin count the user set wins.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    if name == "Recommender":
        from generative_recommenders.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'generative_recommenders' has no attribute {name!r}")
