"""The console commands an installed package puts on the PATH, one per job.

=================  ==========================================  ==========================
command            what it runs                                 also runs as
=================  ==========================================  ==========================
``gr-prepare``     prepares datasets                            ``python3 preprocess_public_data.py``
``gr-train``       trains and evaluates a gin config            ``python3 main.py``
``gr-compare``     tables and figures of finished runs          ``python3 -m generative_recommenders.compare``
``gr-recommend``   top-k, scores and embeddings from a run      ``python3 -m generative_recommenders.recommend``
``gr-greb``        the GRE-B text-encoder benchmark             ``python3 -m generative_recommenders.greb``
``gr-tune``        hyper-parameter search (Optuna)              ``python3 -m generative_recommenders.tune``
``gr-gre-train``   fine-tunes a text encoder (GRE)              ``python3 -m generative_recommenders.gre_train``
=================  ==========================================  ==========================

Each entry imports its module when called, so that one command's start does not pay
for the others' imports. Bad input is one line and exit status 1.
"""

from __future__ import annotations

from generative_recommenders.errors import run_command


def train() -> None:
    from generative_recommenders.train_command import console_main

    console_main()


def prepare() -> None:
    from generative_recommenders.prepare import console_main

    console_main()


def compare() -> None:
    from generative_recommenders.reports.compare import main

    run_command("gr-compare", main)


def recommend() -> None:
    from generative_recommenders.recommend import main

    run_command("gr-recommend", main)


def greb() -> None:
    from generative_recommenders.greb import main

    run_command("gr-greb", main)


def tune() -> None:
    from generative_recommenders.tune import main

    run_command("gr-tune", main)


def gre_train() -> None:
    from generative_recommenders.gre_train import main

    run_command("gr-gre-train", main)
