"""Prepares datasets into the sequence format: the reference's command, the same as the
installed ``gr-prepare`` (see ``generative_recommenders/prepare.py``).

    python3 preprocess_public_data.py --dataset amzn23_game [--data_root tmp]
"""

from generative_recommenders.errors import run_command
from generative_recommenders.prepare import main

if __name__ == "__main__":
    run_command("preprocess_public_data.py", main)
