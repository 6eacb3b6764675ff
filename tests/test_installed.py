"""The package as a user installs it: a wheel of the checkout, installed (not editable) into a fresh
virtual environment, prepares, trains a shipped config by name and recommends, each from its own
folder, with the console commands; and every console command's --help and one bad input."""

import json
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from test_train import REPO

COMMANDS = ("gr-prepare", "gr-train", "gr-compare", "gr-recommend", "gr-greb", "gr-tune", "gr-gre-train")
# What a wheel is built from (a copy: the build leaves its build/ and egg-info beside it).
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "requirements.txt", "generative_recommenders", "configs")
TINY = [
    "train_fn.num_epochs = 2", "train_fn.max_sequence_length = 10", "train_fn.local_batch_size = 32",
    "train_fn.item_embedding_dim = 16", "train_fn.num_negatives = 16", "train_fn.learning_rate = 1e-2",
    "hstu_encoder.num_blocks = 1", "hstu_encoder.dqk = 16", "hstu_encoder.dv = 16",
    "create_data_loader.num_workers = 0",
]


def _run(args, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh virtual environment holding the package installed from a wheel; its bin folder.
    The pinned requirements come from this interpreter's site-packages (a path in a .pth file:
    the editable install of the checkout that lives there too is not seen)."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}))
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", root / "dist", source], root)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (root / "dist").glob("generative_recommenders-*.whl")
    venv = root / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], root)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    install = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], root)
    assert install.returncode == 0, install.stderr[-3000:]
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout.strip())
    (purelib / "requirements.pth").write_text("\n".join(site.getsitepackages() + [sysconfig.get_paths()["purelib"]]) + "\n")
    return venv / "bin"


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_prepares_trains_by_name_and_recommends_from_any_folder(installed, tmp_path):
    folders = {name: tmp_path / name for name in ("data_home", "train_home", "serve_home")}
    for folder in folders.values():
        folder.mkdir()
    where = _run([installed / "python", "-c", "import generative_recommenders; print(generative_recommenders.__file__)"],
                 folders["serve_home"])
    assert str(installed.parent) in where.stdout, where  # the installed copy, not the checkout
    raw = folders["data_home"] / "raw"
    raw.mkdir()
    rows = ["user_id,item_id,timestamp"] + [
        f"u{user},i{(user + step) % 30},{step}" for user in range(200) for step in range(10)
    ]
    (raw / "interactions.csv").write_text("\n".join(rows) + "\n")
    (raw / "items.jsonl").write_text("".join(json.dumps({"item_id": f"i{i}", "title": f"Item {i}"}) + "\n" for i in range(30)))
    prepared = _run([installed / "gr-prepare", "--local_dir", "raw", "--dataset_name", "ml100k",
                     "--data_root", "prepared", "--text_embedding_model", "none"], folders["data_home"])
    assert prepared.returncode == 0, prepared.stderr[-3000:]

    trained = _run([installed / "gr-train", "--gin_config_file=ml100k/hstu-sampled-softmax-n128-final",
                    f"--data_root={Path('..') / 'data_home' / 'prepared'}", "--output_root=runs",
                    *(f"--gin_bindings={b}" for b in TINY)], folders["train_home"])
    assert trained.returncode == 0, trained.stderr[-3000:]
    (run_dir,) = (folders["train_home"] / "runs" / "ml100k").iterdir()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["data_dir"] == str(folders["data_home"] / "prepared" / "ml100k")
    assert results["best"]["test"]["hr@10"] > 0.5  # the next item follows the user's last one

    recommended = _run([installed / "gr-recommend", "--run_dir", run_dir, "--user_id", "u3", "--k", "3"],
                       folders["serve_home"])
    assert recommended.returncode == 0, recommended.stderr[-3000:]
    assert "(best weights, exact retrieval)" in recommended.stdout
    lines = recommended.stdout.strip().splitlines()
    assert lines[-4].split() == ["rank", "item_id", "score", "title"] and len(lines[-3:]) == 3

    # The data moved: the message says where it looked and how to point elsewhere.
    shutil.move(folders["data_home"] / "prepared", folders["data_home"] / "moved")
    moved = _run([installed / "gr-recommend", "--run_dir", run_dir, "--user_id", "u3"], folders["serve_home"])
    assert moved.returncode == 1 and len(moved.stderr.strip().splitlines()) == 1, moved.stderr
    assert f"looked in {folders['data_home'] / 'prepared' / 'ml100k'}" in moved.stderr and "--data_dir" in moved.stderr
    again = _run([installed / "gr-recommend", "--run_dir", run_dir, "--user_id", "u3", "--k", "3",
                  "--data_dir", folders["data_home"] / "moved" / "ml100k"], folders["serve_home"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip().splitlines()[-3:] == lines[-3:]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_every_console_command_has_help(installed, tmp_path, command):
    shown = _run([installed / command, "--help"], tmp_path)
    # absl (gr-train's flags, as main.py's) ends its --help with status 1.
    assert shown.returncode == (1 if command == "gr-train" else 0) and shown.stdout.count("\n") > 5, shown
    assert "--data_root" in shown.stdout or command in ("gr-compare", "gr-recommend"), shown.stdout
    assert "Traceback" not in shown.stderr


# One bad input per command: one line on stderr naming the problem, exit status 1.
BAD_INPUTS = {
    "gr-prepare": (["--local_dir", "missing", "--dataset_name", "toy", "--text_embedding_model", "none"], "missing"),
    "gr-train": (["--gin_config_file=ml100k/hstu-no-such-config"], "ml100k/ holds hstu-sampled-softmax-n128-blair, "),
    "gr-compare": (["no_such_run"], "no_such_run"),
    "gr-recommend": (["--run_dir", "no_such_run", "--user_id", "1"], "no_such_run/results.json not found"),
    "gr-greb": (["--dataset", "ml100k", "--models", "gru4rec"], "gru4rec is not a GRE-B model"),
    "gr-tune": (["--gin_config_file", "ml100k/hstu-sampled-softmax-n128-final", "--space", "no_space.toml"],
                "search space no_space.toml not found"),
    "gr-gre-train": (["--dataset", "nowhere", "--output", "encoder"], "--dataset nowhere: no prepared dataset in"),
}


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_every_console_command_refuses_a_bad_input_in_one_line(installed, tmp_path, command):
    args, message = BAD_INPUTS[command]
    refused = _run([installed / command, *args], tmp_path)
    assert refused.returncode == 1, refused
    lines = refused.stderr.strip().splitlines()
    program = lines[0].split(":")[0] if lines else ""
    assert len(lines) == 1 and message in lines[0] and program in (command, command[3:]), refused.stderr
