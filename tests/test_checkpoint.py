"""Checkpoint/resume: the resumable order, the generator states, the checkpoint file, and kill + resume."""

import functools
import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import gin
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from generative_recommenders.trainer import tasks, train
from generative_recommenders.trainer.run_folder import RunFolderError
from generative_recommenders.trainer.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    ResumableSampler,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from test_train import REPO, cyclic_dataset, run_folder, run_main, tiny_config

# 320 users, batches of 32: 10 steps per epoch.
RESUME_BINDINGS = (
    "train_fn.num_epochs = 3",
    "train_fn.checkpoint_every_n_steps = 4",
    "train_fn.dropout_rate = 0.3",  # dropout draws from the restored generator too
    "hstu_encoder.linear_dropout_rate = 0.3",
    "train_fn.deterministic = True",  # bit-exact gradient accumulation on CPU
)


@pytest.fixture(autouse=True, scope="module")
def _restore_determinism():
    enabled = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(enabled)


class _Range(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def test_resumable_sampler_is_the_distributed_order_minus_the_batches_done():
    dataset = _Range(23)
    reference = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=5)
    reference.set_epoch(3)
    full_order = list(reference)
    sampler = ResumableSampler(dataset, batch_size=4, seed=5)
    sampler.set_position(3)
    assert list(sampler) == full_order and sorted(full_order) == list(range(23))
    sampler.set_position(3, skip_batches=2)
    assert list(sampler) == full_order[8:] and len(sampler) == 15
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler)
    assert [b.tolist() for b in loader] == [full_order[i:i + 4] for i in range(8, 23, 4)]
    sampler.set_position(4)
    assert list(sampler) != full_order  # a new order every epoch


def test_generator_states_survive_a_checkpoint_file(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.standard_normal()  # leaves a cached gaussian in NumPy's state
    state = capture_rng_state()
    expected = (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist())
    save_checkpoint(tmp_path / "c.pt", {"gin_config": "", "dataset": {}, "world_size": 1, "rng": state})
    loaded = load_checkpoint(tmp_path / "c.pt", "", {})
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.standard_normal(3).tolist(), torch.rand(3).tolist()) == expected


def test_unreadable_or_foreign_checkpoints_are_clear_errors(tmp_path):
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(truncated, {"gin_config": "", "dataset": {}})
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(CheckpointError, match=f"{truncated}: not a readable checkpoint"):
        load_checkpoint(truncated, "", {})
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a checkpoint of this trainer"):
        load_checkpoint(foreign, "", {})


def test_a_different_gin_config_dataset_or_process_count_is_refused(tmp_path):
    path = tmp_path / CHECKPOINT_FILE
    config = "train_fn.learning_rate = 0.01\ntrain_fn.num_epochs = 3"
    save_checkpoint(path, {"gin_config": config, "dataset": {"num_users": 9}, "world_size": 2})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, "train_fn.learning_rate = 0.02\ntrain_fn.num_epochs = 3", {"num_users": 9}, 2)
    message = str(error.value)
    assert "different gin config" in message and "\n" not in message
    assert message.endswith("(- checkpoint, + this run): -train_fn.learning_rate = 0.01; +train_fn.learning_rate = 0.02")
    # More epochs, nothing else changed: the run goes on; fewer are refused.
    extended = "train_fn.learning_rate = 0.01\ntrain_fn.num_epochs = 5"
    assert load_checkpoint(path, extended, {"num_users": 9}, world_size=2)["world_size"] == 2
    with pytest.raises(CheckpointError, match="only a larger train_fn.num_epochs"):
        load_checkpoint(path, "train_fn.learning_rate = 0.01\ntrain_fn.num_epochs = 2", {"num_users": 9}, 2)
    with pytest.raises(CheckpointError, match=r"other data \({'num_users': 9}\), not {'num_users': 10}"):
        load_checkpoint(path, config, {"num_users": 10}, world_size=2)
    with pytest.raises(CheckpointError, match=r"written by 2 process\(es\), and this run has 1"):
        load_checkpoint(path, config, {"num_users": 9}, world_size=1)
    assert load_checkpoint(path, config, {"num_users": 9}, world_size=2)["world_size"] == 2


class _Crash(Exception):
    pass


def _train_in_process(config: Path, output_root: Path, crash_at_step=None, resume=False, extra_bindings=()):
    """train_fn on the tiny config; with ``crash_at_step``, the loss of that step raises."""
    gin.clear_config()
    gin.parse_config_files_and_bindings(
        [str(config)],
        [*RESUME_BINDINGS, f'train_fn.output_root = "{output_root}"', 'train_fn.run_name = "hstu-tiny"',
         *extra_bindings],
    )
    losses = tasks.RetrievalTask.default_losses
    real_loss, calls = losses["SampledSoftmaxLoss"], []

    @functools.wraps(real_loss)  # its signature: the task binds the run's settings by it
    def crashing_loss(*args, **kwargs):
        if len(calls) == crash_at_step:
            raise _Crash()
        calls.append(None)
        return real_loss(*args, **kwargs)

    losses["SampledSoftmaxLoss"] = crashing_loss
    try:
        return train.train_fn(resume=resume)
    finally:
        losses["SampledSoftmaxLoss"] = real_loss
        gin.clear_config()


def _comparable(results: dict) -> dict:
    return {key: results[key] for key in ("epochs", "evaluations", "best", "last")}


@pytest.fixture(scope="module")
def tiny_hstu(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    cyclic_dataset(root / "data")
    return root, tiny_config(root, "HSTU")


@pytest.fixture(scope="module")
def uninterrupted(tiny_hstu):
    root, config = tiny_hstu
    return _train_in_process(config, root / "uninterrupted")


# Step 20: the first of epoch 2, right after the epoch-end checkpoint; step 29: the last of
# the run (last checkpoint: step 28, mid-epoch). The subprocess test below kills mid-epoch 1.
@pytest.mark.parametrize("crash_at_step, checkpoint_step", [(20, 20), (29, 28)])
def test_a_crashed_run_resumes_to_the_uninterrupted_results(tiny_hstu, uninterrupted, tmp_path, crash_at_step,
                                                            checkpoint_step):
    _, config = tiny_hstu
    with pytest.raises(_Crash):
        _train_in_process(config, tmp_path, crash_at_step)
    results = _train_in_process(config, tmp_path, resume=True)
    assert results["resumed_at"] == [{"epoch": checkpoint_step // 10, "step": checkpoint_step}]
    assert _comparable(results) == _comparable(uninterrupted)
    with pytest.raises(RunFolderError, match=r"another configuration .*\+train_fn.learning_rate = 0.02"):
        _train_in_process(config, tmp_path, resume=True, extra_bindings=("train_fn.learning_rate = 0.02",))


@pytest.mark.slow  # trains end to end in subprocesses: make test-all
def test_sigkilled_main_resumes_to_the_uninterrupted_results(tiny_hstu, tmp_path):
    _, config = tiny_hstu
    straight = run_main(config, *RESUME_BINDINGS, f'train_fn.output_root = "{tmp_path / "straight"}"')
    assert straight.returncode == 0, straight.stderr[-3000:]
    # The 15th loss call (step 14, mid-epoch 1) kills its own process; the last checkpoint is step 12's.
    killer = (
        "import functools, os, signal, sys\n"
        "from absl import app\n"
        "import main\n"
        "from generative_recommenders.trainer import tasks\n"
        "losses = tasks.RetrievalTask.default_losses\n"
        "real_loss, calls = losses['SampledSoftmaxLoss'], []\n"
        "@functools.wraps(real_loss)\n"
        "def killing_loss(*args, **kwargs):\n"
        "    calls.append(None)\n"
        "    if len(calls) == 15:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real_loss(*args, **kwargs)\n"
        "losses['SampledSoftmaxLoss'] = killing_loss\n"
        "app.run(main.main, argv=sys.argv)\n"
    )
    bindings = [*RESUME_BINDINGS, f'train_fn.output_root = "{tmp_path / "killed"}"']
    argv = [f"--gin_config_file={config}", *(f"--gin_bindings={b}" for b in bindings)]
    killed = subprocess.run(
        [sys.executable, "-c", killer, *argv], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = run_folder(tmp_path / "killed")
    checkpoint = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    assert checkpoint["progress"]["step"] == 12 and checkpoint["progress"]["batches_done"] == 2

    resumed = run_main(config, *bindings, flags=["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run_dir} at epoch 1, step 12" in resumed.stdout
    results = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((run_folder(tmp_path / "straight") / "results.json").read_text())
    assert _comparable(results) == _comparable(expected)
