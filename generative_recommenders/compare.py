"""``python3 -m generative_recommenders.compare RUN ...``: the paper-style table of finished runs.

The command of :mod:`generative_recommenders.reports.compare` (``gr-compare`` when installed).
"""

from generative_recommenders.errors import run_command
from generative_recommenders.reports.compare import main

if __name__ == "__main__":
    run_command("compare", main)
