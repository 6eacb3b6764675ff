"""Train and evaluate a sequential recommender from a gin config: the reference's command,
the same as the installed ``gr-train`` (see ``generative_recommenders/train_command.py``).

    python3 main.py --gin_config_file=configs/ml100k/hstu-sampled-softmax-n128-final.gin --master_port=12345
"""

from absl import app

from generative_recommenders.train_command import main

if __name__ == "__main__":
    app.run(main)
