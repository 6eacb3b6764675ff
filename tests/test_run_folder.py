"""A run folder belongs to one configuration, one process at a time; results are never lost or silently replaced."""

import fcntl
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from generative_recommenders.errors import one_line
from generative_recommenders.trainer import tasks
from generative_recommenders.trainer.config import ConfigError
from generative_recommenders.trainer.run_folder import RunFolderError, RunFolderLock, only_extends_epochs
from generative_recommenders.trainer.train import TrainingDiverged, train_config_file
from test_train import REPO, cyclic_dataset, run_folder, run_main, tiny_config

ONE_EPOCH = "train_fn.num_epochs = 1"


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def tiny(tmp_path):
    cyclic_dataset(tmp_path / "data")
    return tmp_path, tiny_config(tmp_path, "HSTU")


@pytest.mark.slow  # trains end to end in subprocesses: make test-all
def test_a_changed_binding_gets_its_own_folder_and_the_earlier_run_stays(tiny):
    root, config = tiny
    first = run_main(config, ONE_EPOCH)
    assert first.returncode == 0, first.stderr[-2000:]
    # No third-party noise: no fbgemm library lines, no absl-format log lines; bars are off in a pipe.
    assert first.stderr == "" and first.stdout.startswith("cyclic: 320 users, 40 items; training HSTU")
    earlier = run_folder(root / "exps")
    before = _snapshot(earlier)
    second = run_main(config, ONE_EPOCH, "train_fn.learning_rate = 3e-3")
    assert second.returncode == 0, second.stderr[-2000:]
    folders = sorted(p.name for p in (root / "exps" / "cyclic").iterdir())
    assert len(folders) == 2 and earlier.name in folders
    changed = next(root / "exps" / "cyclic" / f for f in folders if f != earlier.name)
    assert json.loads((changed / "results.json").read_text())["config"]["learning_rate"] == 3e-3
    assert _snapshot(earlier) == before  # not a byte of the earlier run changed
    # The same bindings, in another order and spacing, name the same folder: a rerun finds its finished run.
    again = run_main(config, "train_fn.learning_rate=3e-3", ONE_EPOCH)
    assert again.returncode == 0
    assert f"{changed} finished all 1 epochs of this configuration already; its results stand" in again.stdout
    assert len(list((root / "exps" / "cyclic").iterdir())) == 2


@pytest.mark.slow  # trains end to end in subprocesses: make test-all
def test_a_folder_of_another_configuration_is_refused_in_one_line_and_left_as_it_was(tiny):
    root, config = tiny
    assert run_main(config, ONE_EPOCH).returncode == 0
    folder = run_folder(root / "exps")
    before = _snapshot(folder)
    # The config file edited in place: same name, another configuration.
    config.write_text(config.read_text().replace("train_fn.learning_rate = 1e-2", "train_fn.learning_rate = 5e-2"))
    proc = run_main(config, ONE_EPOCH)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "holds a run of another configuration" in lines[0] and "+train_fn.learning_rate = 0.05" in lines[0]
    assert "--overwrite" in lines[0]
    assert _snapshot(folder) == before
    replaced = run_main(config, ONE_EPOCH, flags=["--overwrite"])
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert json.loads((folder / "results.json").read_text())["config"]["learning_rate"] == 0.05


def test_debug_shows_the_traceback(tiny):
    _, config = tiny
    proc = run_main(config, "train_fn.num_negatives = 0", flags=["--debug"])
    assert proc.returncode == 1 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "main.py: train_fn.num_negatives must be >= 1, got 0"


@pytest.mark.parametrize(
    "binding, message",
    [
        ("train_fn.num_negatives = 0", "train_fn.num_negatives must be >= 1, got 0"),
        ("train_fn.local_batch_size = 0", "train_fn.local_batch_size must be >= 1, got 0"),
        ("train_fn.eval_batch_size = -4", "train_fn.eval_batch_size must be >= 1, got -4"),
        ('train_fn.num_epochs = "two"', "train_fn.num_epochs must be an integer, got 'two'"),
        ("train_fn.num_epochs = 2.5", "train_fn.num_epochs must be an integer, got 2.5"),
        ('train_fn.learning_rate = "fast"', "train_fn.learning_rate must be a number, got 'fast'"),
        ("train_fn.dropout_rate = 1.5", "train_fn.dropout_rate must be in [0, 1), got 1.5"),
        ('train_fn.item_l2_norm = "yes"', "train_fn.item_l2_norm must be True or False, got 'yes'"),
        ("train_fn.patience = 0", "train_fn.patience must be >= 1, got 0"),
    ],
)
def test_settings_that_cannot_train_are_refused_before_anything_is_written(tiny, binding, message):
    root, config = tiny
    with pytest.raises(ConfigError) as error:
        train_config_file(str(config), [binding])
    assert one_line(error.value) == message
    assert not (root / "exps").exists()


def test_more_negatives_than_items_is_a_warning_with_the_numbers(tiny, capsys):
    _, config = tiny
    train_config_file(str(config), [ONE_EPOCH, "train_fn.num_negatives = 64"])
    assert "train_fn.num_negatives = 64 is more than the 40 items of cyclic" in capsys.readouterr().out


def test_a_nan_loss_is_one_line_naming_the_step(tiny, monkeypatch):
    _, config = tiny
    real_loss = tasks.RetrievalTask.default_losses["SampledSoftmaxLoss"]

    @functools.wraps(real_loss)  # its signature: the task binds the run's settings by it
    def nan_at_third_step(*args, **kwargs):
        loss = real_loss(*args, **kwargs)
        nan_at_third_step.calls += 1
        return loss * math.nan if nan_at_third_step.calls == 3 else loss

    nan_at_third_step.calls = 0
    monkeypatch.setitem(tasks.RetrievalTask.default_losses, "SampledSoftmaxLoss", nan_at_third_step)
    with pytest.raises(TrainingDiverged) as error:
        train_config_file(str(config), [ONE_EPOCH])
    assert one_line(error.value) == (
        "the training loss became nan; lower train_fn.learning_rate or raise train_fn.num_warmup_steps (epoch 0, step 2)"
    )


def test_resume_extends_a_finished_run_and_a_finished_run_says_so(tiny, capsys):
    root, config = tiny
    two = train_config_file(str(config), [])  # 2 epochs
    folder = Path(two["run_dir"])
    again = train_config_file(str(config), [], resume=True)
    assert again == two
    assert f"{folder} finished all 2 epochs of this configuration already; its results stand" in capsys.readouterr().out
    three = train_config_file(str(config), ["train_fn.num_epochs = 3"], resume=True)
    assert three["epochs_trained"] == 3 and three["resumed_at"] == [{"epoch": 2, "step": 20}]
    assert three["epochs"][:2] == two["epochs"]  # the first two epochs are the finished run's
    with pytest.raises(RunFolderError) as refused:  # more epochs without --resume: says that --resume extends it
        train_config_file(str(config), ["train_fn.num_epochs = 4"])
    assert one_line(refused.value) == (
        f"{folder} holds this run with fewer epochs (-train_fn.num_epochs = 3; +train_fn.num_epochs = 4): "
        "pass --resume to extend it to the larger train_fn.num_epochs, or give this run its own train_fn.run_name"
    )
    assert only_extends_epochs("a = 1\ntrain_fn.num_epochs = 2", "a = 1\ntrain_fn.num_epochs = 3")
    assert not only_extends_epochs("a = 1\ntrain_fn.num_epochs = 3", "a = 2\ntrain_fn.num_epochs = 4")


def test_an_unfinished_run_is_neither_restarted_nor_replaced_without_being_asked(tiny):
    root, config = tiny
    results = train_config_file(str(config), [])
    folder = Path(results["run_dir"])
    unfinished = dict(results, finished=False)
    (folder / "results.json").write_text(json.dumps(unfinished))
    with pytest.raises(RunFolderError, match="unfinished run of this configuration .* --resume .* --overwrite"):
        train_config_file(str(config), [])


def test_a_folder_in_use_is_refused_and_a_dead_holder_is_taken_over(tiny):
    root, config = tiny
    folder = root / "exps" / "cyclic" / "hstu-tiny-s42"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path\n"
         "from generative_recommenders.trainer.run_folder import RunFolderLock\n"
         f"lock = RunFolderLock(Path({str(folder)!r})).__enter__(); print('locked', flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = run_main(config, 'train_fn.run_name = "hstu-tiny"')
        assert proc.returncode == 1
        assert f"{folder} is in use by process {holder.pid} on" in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()
    # The killed holder's lock went with it: the next run takes the folder over.
    proc = run_main(config, 'train_fn.run_name = "hstu-tiny"')
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(folder / ".lock") as lock_file:  # released again at the end of the run
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_results_record_their_provenance_and_config(tiny):
    _, config = tiny
    results = train_config_file(str(config), [ONE_EPOCH])
    provenance = results["provenance"]
    assert provenance["python"].count(".") == 2 and provenance["versions"]["torch"].startswith("2.")
    assert provenance["started"].endswith("+00:00")
    assert len(provenance["code_commit"] or "") in (0, 40)  # a commit in a git checkout
    assert results["config"]["num_epochs"] == 1 and results["config"]["dataset_name"] == "cyclic"
    # What ran: on a CPU the length-grouped PyTorch attention (the Triton kernel is for CUDA).
    assert results["attention_backend"] == {"requested": "auto", "training": "torch", "evaluation": "torch"}
    assert results["jagged_backend"] in ("torch", "fbgemm")
    mapping = results["gin_config_mapping"]
    assert mapping["train_fn"]["num_epochs"] == 1 and mapping["hstu_encoder"]["dqk"] == 16
    with RunFolderLock(Path(results["run_dir"])):  # the run released its folder
        pass
    assert os.environ.get("GR_DEBUG") in (None, "", "0")


@pytest.mark.slow  # trains end to end in subprocesses: make test-all
def test_a_finished_run_with_a_damaged_results_file_is_never_trained_over(tiny):
    root, config = tiny
    assert run_main(config, ONE_EPOCH).returncode == 0
    folder = run_folder(root / "exps")
    results = folder / "results.json"
    finished = json.loads(results.read_text())
    results.write_text(results.read_text()[:300])  # cut short
    before = _snapshot(folder)
    proc = run_main(config, ONE_EPOCH)
    try:
        json.loads(results.read_text())
    except json.JSONDecodeError as error:
        damage = f"JSONDecodeError: {error}"
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", (
        f"main.py: {results} is damaged ({damage}), beside the run's checkpoint.pt, best_model.pt, last_model.pt; "
        "nothing was removed: restore it from a backup, pass --resume to rebuild it from checkpoint.pt, or pass "
        "--overwrite to train the run again (replacing them) (details: --debug)\n"
    ))
    assert _snapshot(folder) == before
    # Without the checkpoint, --resume cannot rebuild it either.
    (folder / "checkpoint.pt").rename(root / "checkpoint.pt")
    proc = run_main(config, ONE_EPOCH, flags=["--resume"])
    assert (proc.returncode, proc.stderr) == (1, (
        f"main.py: {results} is damaged ({damage}), beside the run's best_model.pt, last_model.pt; nothing was "
        "removed: restore it from a backup, pass --overwrite to train the run again (replacing them) (details: --debug)\n"
    ))
    (root / "checkpoint.pt").rename(folder / "checkpoint.pt")
    assert _snapshot(folder) == before
    assert run_main(config, ONE_EPOCH, flags=["--resume"]).returncode == 0
    rebuilt = json.loads(results.read_text())
    assert rebuilt["finished"] and rebuilt["epochs"] == finished["epochs"] and rebuilt["best"] == finished["best"]


def test_weights_without_a_results_file_are_refused(tiny):
    root, config = tiny
    folder = Path(train_config_file(str(config), [ONE_EPOCH])["run_dir"])
    (folder / "results.json").unlink()
    (folder / "checkpoint.pt").unlink()
    before = _snapshot(folder)
    with pytest.raises(RunFolderError) as refused:
        train_config_file(str(config), [ONE_EPOCH])
    assert one_line(refused.value) == (
        f"{folder / 'results.json'} is missing, beside the run's best_model.pt, last_model.pt; nothing was removed: "
        "restore it from a backup, pass --overwrite to train the run again (replacing them)"
    )
    assert _snapshot(folder) == before


def test_resume_and_overwrite_together_are_refused(tiny):
    root, config = tiny
    folder = Path(train_config_file(str(config), [ONE_EPOCH])["run_dir"])
    before = _snapshot(folder)
    with pytest.raises(RunFolderError) as refused:
        train_config_file(str(config), [ONE_EPOCH], resume=True, overwrite=True)
    assert one_line(refused.value) == (
        f"--resume and --overwrite contradict each other (--resume continues the run in {folder}, "
        "--overwrite deletes it): pass one of them"
    )
    assert _snapshot(folder) == before


def test_a_finished_run_moved_to_another_output_root_is_the_same_run(tiny, capsys):
    root, config = tiny
    finished = train_config_file(str(config), [ONE_EPOCH])
    moved_root = root / "moved"
    folder = Path(finished["run_dir"])
    (moved_root / "cyclic").mkdir(parents=True)
    moved = moved_root / "cyclic" / folder.name
    folder.rename(moved)
    before = _snapshot(moved)
    again = train_config_file(str(config), [ONE_EPOCH, f'train_fn.output_root = "{moved_root}"'])
    assert again["best"] == finished["best"] and again["epochs"] == finished["epochs"]
    assert f"{moved} finished all 1 epochs of this configuration already; its results stand" in capsys.readouterr().out
    assert _snapshot(moved) == before


def test_a_full_disk_while_training_is_named_as_such_and_leaves_no_partial_file(tiny, monkeypatch):
    import collections

    import torch

    from generative_recommenders import atomic_files

    root, config = tiny

    def disk_full(obj, f):
        f.write(b"PK")  # a part of the archive got out before the disk filled
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2048 vs 1986")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", disk_full)
    monkeypatch.setattr(atomic_files.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    with pytest.raises(OSError) as error:
        train_config_file(str(config), [ONE_EPOCH, 'train_fn.run_name = "full"'])
    folder = root / "exps" / "cyclic" / "full-s42"
    assert one_line(error.value) == (
        f"{folder / 'checkpoint.pt'}: no space left on the device; free some space or write elsewhere"
    )
    assert not [p.name for p in folder.iterdir() if p.suffix in (".pt", ".tmp")]  # nothing half-written


@pytest.mark.parametrize(
    "module, bindings, message",
    [
        ("HSTU", ['train_fn.main_module = "DIN"'],
         'train_fn.main_module = "DIN" is a CTR model (it scores (history, item) pairs, judged by AUC), not a '
         'retrieval model: it trains with train_fn.loss_module = "BinaryCrossEntropyLoss" and '
         'train_fn.selection_metric = "auc"; start from configs/greb/din.gin'),
        ("HSTU", ["train_fn.temperature = 1e-40"],
         "train_fn.temperature = 1e-40 is too small: a similarity divided by it overflows float32 and the loss "
         "becomes NaN; use at least 3e-39 (the reference uses 0.05)"),
        ("HSTU", ["train_fn.num_epochs = (1"],
         "invalid --gin_bindings 'train_fn.num_epochs = (1': EOF in multi-line statement (a bracket or quote left open)"),
        ("HSTU", ["train_fn.num_epochs = = 1", "train_fn.learning_rate = 0.1"],
         "invalid --gin_bindings 'train_fn.num_epochs = = 1': Unable to parse value. (line 1)"),
        ("HSTU", ["hstu_encoder.num_heads = 0"], "hstu_encoder.num_heads must be a whole number >= 1, got 0"),
        ("SASRec", ["sasrec_encoder.num_heads = 3", "train_fn.item_embedding_dim = 50"],
         "sasrec_encoder.num_heads = 3 does not divide the embedding dimension 50 (train_fn.item_embedding_dim): "
         "choose one of 1, 2, 5, 10, 25, 50"),
        ("HSTU", ['train_fn.embedding_module_type = "local_and_text"', 'train_fn.text_embedding_model = "fake"',
                  'text_fusion.mode = "multiply"'],
         "text_fusion.mode must be one of add, gate, concat, text_only, got 'multiply'"),
    ],
)
def test_settings_main_refuses_in_one_line_naming_the_setting(tmp_path, module, bindings, message):
    from test_train import _text_dataset

    _text_dataset(tmp_path)
    proc = run_main(tiny_config(tmp_path, module), *bindings)
    assert (proc.returncode, proc.stderr) == (1, f"main.py: {message} (details: --debug)\n")
    assert not (tmp_path / "exps").exists() or not list((tmp_path / "exps").rglob("*.pt"))


def test_a_syntax_error_in_the_config_file_names_the_file_and_line(tmp_path):
    config = tmp_path / "broken.gin"
    config.write_text("train_fn.num_epochs = = 2\n")
    proc = run_main(config)
    assert (proc.returncode, proc.stderr) == (
        1, f"main.py: invalid gin config {config}: Unable to parse value. (broken.gin, line 1) (details: --debug)\n"
    )


def test_nproc_zero_names_the_flag(tiny):
    _, config = tiny
    proc = run_main(config, flags=["--nproc=0"])
    assert (proc.returncode, proc.stderr) == (
        1, "main.py: --nproc must be >= 1 (the processes to start on this machine), got 0 (details: --debug)\n"
    )
