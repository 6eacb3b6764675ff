"""HSTU and HSTU-BLaIR sequential recommenders.

``generative_recommenders.Recommender`` (a trained run, used) is imported on
first access, so that ``import generative_recommenders`` stays light.
"""

import os
from typing import Any

# Idle OpenMP threads sleep instead of spinning: with spinning, a step of small parallel ops costs
# several times the CPU of one thread, for no wall-clock gain (benchmarks/cpu_scaling.py). OpenMP
# reads it when torch loads it, so it is set on the package's import, before torch's; a value the
# user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    if name == "Recommender":
        from generative_recommenders.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'generative_recommenders' has no attribute {name!r}")
