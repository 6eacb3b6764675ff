"""HSTU and HSTU-BLaIR sequential recommenders.

``generative_recommenders.Recommender`` (a trained run, used) is imported on
first access, so that ``import generative_recommenders`` stays light.
"""

from typing import Any

__all__ = ["Recommender"]


def __getattr__(name: str) -> Any:
    if name == "Recommender":
        from generative_recommenders.recommender import Recommender

        return Recommender
    raise AttributeError(f"module 'generative_recommenders' has no attribute {name!r}")
