"""gr-tune: the search space file, the study on SQLite and on a real PostgreSQL server (two workers,
a killed worker's trial failed and retried), pruning, and a whole search of real training runs."""

import json
import re
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import gin
import optuna
import pytest
from optuna.trial import TrialState

from generative_recommenders import tune
from generative_recommenders.errors import run_command
from test_train import REPO, cyclic_dataset, tiny_config


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_space_file_gives_typed_parameters_and_their_grid(tmp_path):
    space = tune.read_space(_space(tmp_path, """
        ["train_fn.learning_rate"]
        low = 1e-5
        high = 1e-1
        log = true

        ["train_fn.dropout_rate"]
        low = 0.0
        high = 0.5
        step = 0.25

        ["train_fn.num_negatives"]
        low = 8
        high = 32
        step = 8

        ["train_fn.text_embedding_model"]
        choices = ["minilm", "blair"]
    """))
    lr, dropout, negatives, encoder = space
    assert (lr.name, lr.low, lr.high, lr.log, lr.is_int) == ("train_fn.learning_rate", 1e-5, 1e-1, True, False)
    assert dropout.grid() == [0.0, 0.25, 0.5]
    assert negatives.is_int and negatives.grid() == [8, 16, 24, 32]
    assert encoder.grid() == ["minilm", "blair"]
    with pytest.raises(tune.TuneError, match="a grid needs choices"):
        lr.grid()
    study = optuna.create_study()
    trial = study.ask()
    values = {p.name: p.suggest(trial) for p in space}
    assert 1e-5 <= values["train_fn.learning_rate"] <= 1e-1
    assert values["train_fn.dropout_rate"] in (0.0, 0.25, 0.5)
    assert values["train_fn.num_negatives"] in (8, 16, 24, 32) and isinstance(values["train_fn.num_negatives"], int)
    assert tune.gin_value("minilm") == '"minilm"' and tune.gin_value(0.25) == "0.25"
    assert tune.gin_value(True) == "True" and tune.gin_value("@SampledSoftmaxLoss") == "@SampledSoftmaxLoss"


def test_the_shipped_search_spaces_are_found_by_name_and_read():
    assert [p.name for p in tune.read_space("ml100k/hstu-search-space")] == [
        "train_fn.learning_rate", "train_fn.dropout_rate", "train_fn.weight_decay",
    ]
    assert len(tune.read_space("greb/search-space.toml")) == 3


@pytest.mark.parametrize("text, message", [
    ('["learning_rate"]\nlow = 1\nhigh = 2\n', r'\["learning_rate"\]: not a gin binding'),
    ('["train_fn.learning_rate"]\nlow = 0.1\nhigh = 0.01\n', "low 0.1 must be less than high 0.01"),
    ('["train_fn.learning_rate"]\nlow = 0.0\nhigh = 0.1\nlog = true\n', "a log range has low > 0"),
    ('["train_fn.learning_rate"]\nlow = 0.0\nhgih = 0.1\n', "unknown keys hgih"),
    ('["train_fn.dropout_rate"]\nchoices = []\n', "choices = \\[...\\] is a non-empty list"),
    ('["train_fn.dropout_rate"]\nlow = 0.0\nhigh = = 1\n', r"not valid TOML \(.*line 3"),
    ('', "the search space is empty"),
])
def test_a_bad_space_file_is_one_line_naming_the_file(tmp_path, capsys, text, message):
    space = tmp_path / "space.toml"
    space.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        run_command("gr-tune", tune.main, ["--gin_config_file", "ml100k/hstu-sampled-softmax-n128-final",
                                           "--space", str(space), "--output_root", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 1 and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"gr-tune: {space}") and re.search(message, err), err
    assert not (tmp_path / "tune").exists()


def test_a_binding_the_config_does_not_have_is_refused_before_any_trial(tmp_path, capsys):
    space = _space(tmp_path, '["train_fn.learnig_rate"]\nlow = 0.001\nhigh = 0.01\n')
    with pytest.raises(SystemExit):
        run_command("gr-tune", tune.main, ["--gin_config_file", "ml100k/hstu-sampled-softmax-n128-final",
                                           "--space", str(space), "--output_root", str(tmp_path)])
    err = capsys.readouterr().err
    assert "the search space does not fit" in err and "learnig_rate" in err and len(err.strip().splitlines()) == 1


def test_the_observer_reports_validations_and_the_pruner_stops_the_trial():
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    observer = tune._TrialObserver(trial, "ndcg@10")
    observer.validated(Path("run"), 0, {"ndcg@10": 0.7, "hr@10": 0.9})
    with pytest.raises(optuna.TrialPruned, match="validation ndcg@10 0.4000 at epoch 1"):
        observer.validated(Path("run"), 1, {"ndcg@10": 0.4, "hr@10": 0.9})
    study.tell(trial, state=TrialState.PRUNED)
    assert study.trials[0].intermediate_values == {0: 0.7, 1: 0.4}
    with pytest.raises(tune.DeferredTest):
        observer.before_test(Path("run"))
    assert observer.run_dir == Path("run")


def test_the_best_validation_reads_full_validations_only():
    results = {"evaluations": [
        {"split": "valid", "full": True, "metrics": {"ndcg@10": 0.3}},
        {"split": "valid", "full": False, "metrics": {"ndcg@10": 0.9}},
        {"split": "valid", "full": True, "metrics": {"ndcg@10": 0.5}},
        {"split": "test_best", "full": True, "metrics": {"ndcg@10": 0.8}},
    ]}
    assert tune.best_validation(results, "ndcg@10") == 0.5


# ------------------------------------------------------------------ workers sharing a study

# A worker: its objective records the trial it runs (a file per run of a trial: a second run of one
# trial finds its file) and, with KILL_ME, hangs in its first trial until the test kills it.
WORKER = """
import os, sys, time
from pathlib import Path
from generative_recommenders import tune
storage, name, record, n_trials, hang = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
study = tune.open_study(storage, name, pruner="none", heartbeat_seconds=1, max_retry=2, seed=os.getpid())
def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    folder = tune._run_name(trial)
    (record / f"trial-{trial.number}").open("x").write(f"{folder} {os.getpid()}")
    if hang == "hang":
        (record / "hanging").write_text(str(trial.number))
        time.sleep(600)
    time.sleep(0.2)
    return x
tune.optimize(study, objective, n_trials)
"""


def _worker(storage: str, name: str, record: Path, n_trials: int, hang: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, storage, name, str(record), str(n_trials), "hang" if hang else "run"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgresql_url():
    """A PostgreSQL server of its own (Debian's postgresql package), reached on a Unix socket."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install psycopg[binary])")
    bin_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    initdb = shutil.which("initdb") or next((str(d / "initdb") for d in reversed(bin_dirs) if (d / "initdb").exists()), None)
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    root = Path(tempfile.mkdtemp(prefix="gr-postgresql-"))
    as_user = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root)
            pytest.skip("running as root and there is no postgres user to run the server as")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = _free_port(), root / "data"
    started = False
    try:
        init = subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "tune", "--no-sync"],
                              capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
        start = subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "start",
             "-o", f"-k {root} -p {port} -c listen_addresses=''"],
            capture_output=True, text=True, timeout=120,
        )
        if start.returncode != 0:
            pytest.skip(f"the PostgreSQL server did not start: {start.stderr.strip()[-300:]}")
        started = True
        yield f"postgresql://tune@/postgres?host={root}&port={port}"
    finally:
        if started:
            subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return request.getfixturevalue("postgresql_url")


def _trials(storage: str, name: str):
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def test_two_workers_share_a_study_without_losing_or_repeating_a_trial(storage, tmp_path):
    name = f"shared-{tmp_path.name}"
    record = tmp_path / "record"
    record.mkdir()
    workers = [_worker(storage, name, record, 8) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = _trials(storage, name)
    complete = [t.number for t in trials if t.state == TrialState.COMPLETE]
    # Each run of a trial left a file (a second run of one would have failed on it).
    assert sorted(int(p.name.split("-")[1]) for p in record.iterdir()) == sorted(t.number for t in trials)
    assert len(complete) >= 8 and all(t.state == TrialState.COMPLETE for t in trials)
    pids = {p.read_text().split()[1] for p in record.iterdir()}
    assert len(pids) == 2  # both workers ran trials


def test_a_killed_workers_trial_is_marked_failed_and_retried_in_its_run_folder(storage, tmp_path):
    name = f"killed-{tmp_path.name}"
    record = tmp_path / "record"
    record.mkdir()
    hanging = _worker(storage, name, record, 3, hang=True)
    deadline = time.monotonic() + 120
    while not (record / "hanging").exists():
        assert hanging.poll() is None and time.monotonic() < deadline, hanging.communicate()
        time.sleep(0.2)
    killed_number = int((record / "hanging").read_text())
    hanging.send_signal(signal.SIGKILL)
    hanging.wait(timeout=60)
    time.sleep(2.5)  # past the grace period (2 heartbeats) of the dead worker's trial
    survivor = _worker(storage, name, record, 3)
    out, err = survivor.communicate(timeout=300)
    assert survivor.returncode == 0, err
    trials = {t.number: t for t in _trials(storage, name)}
    assert trials[killed_number].state == TrialState.FAIL
    retries = [t for t in trials.values() if t.system_attrs.get("retry_history") == [killed_number]]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[killed_number].params
    # The retry trains in the killed trial's run folder (and so resumes from its checkpoint).
    folder = (record / f"trial-{retries[0].number}").read_text().split()[0]
    assert folder == f"trial-{killed_number:04d}"
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3


def test_a_storage_that_cannot_be_opened_is_one_line(tmp_path, capsys):
    space = _space(tmp_path, '["train_fn.dropout_rate"]\nchoices = [0.0]\n')
    with pytest.raises(SystemExit):
        run_command("gr-tune", tune.main, [
            "--gin_config_file", "ml100k/hstu-sampled-softmax-n128-final", "--space", str(space),
            "--output_root", str(tmp_path), "--storage", "nosuchdb://x",
        ])
    err = capsys.readouterr().err
    assert err.startswith("gr-tune: --storage nosuchdb://x: cannot open the study") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------ a whole search


@pytest.mark.slow
def test_a_search_trains_its_trials_tests_the_best_once_and_writes_a_ready_config(tmp_path):
    cyclic_dataset(tmp_path / "data")
    config = tiny_config(tmp_path, "HSTU")
    space = _space(tmp_path, '["train_fn.learning_rate"]\nchoices = [1e-2, 1e-4]\n')
    argv = ["--gin_config_file", str(config), "--space", str(space), "--sampler", "grid",
            "--output_root", str(tmp_path / "exps"), "--gin_bindings", "train_fn.num_epochs = 2"]
    with pytest.raises(SystemExit) as exit_info:
        run_command("gr-tune", tune.main, argv)
    assert exit_info.value.code == 0
    out_dir = tmp_path / "exps" / "tune" / "hstu-tiny-space"
    best = json.loads((out_dir / "best.json").read_text())
    runs = {}
    for number in (0, 1):
        runs[number] = json.loads((out_dir / "trials" / "cyclic" / f"trial-{number:04d}-s42" / "results.json").read_text())
    valid = {n: tune.best_validation(r, "ndcg@10") for n, r in runs.items()}
    chosen = max(valid, key=valid.get)
    assert best["trial"] == chosen and best["validation"] == pytest.approx(valid[chosen])
    # The test set was read for the chosen trial alone.
    assert runs[chosen]["finished"] and best["test"] == runs[chosen]["best"]["test"]
    other = runs[1 - chosen]
    assert not other.get("finished") and not any(e["split"].startswith("test") for e in other["evaluations"])
    # A learning rate of 1e-2 learns the cyclic walk in two epochs; 1e-4 does not.
    assert best["params"] == {"train_fn.learning_rate": 0.01}
    trials = (out_dir / "trials.csv").read_text().splitlines()
    assert trials[0].startswith("number,state,valid_ndcg@10") and len(trials) == 3
    gin.clear_config()
    gin.parse_config_file(str(out_dir / "best.gin"), skip_unknown=True)
    assert gin.query_parameter("train_fn.learning_rate") == 0.01
    gin.clear_config()
    for name in ("history", "importance"):
        assert all((out_dir / f"{name}{suffix}").stat().st_size > 0 for suffix in (".png", ".svg", ".pdf"))
    # Run again: the study is complete; nothing trains, the best's finished test is not read again.
    with pytest.raises(SystemExit) as exit_info:
        run_command("gr-tune", tune.main, argv)
    assert exit_info.value.code == 0
    assert json.loads((out_dir / "best.json").read_text()) == best


def test_greb_tune_searches_each_cell_on_its_first_seed_and_trains_its_seeds_with_the_best(tmp_path, monkeypatch):
    from generative_recommenders import greb

    searched = []

    def fake_tune(settings, n_trials, test_best=True, **_):
        searched.append((settings, n_trials, test_best))
        return {"params": {"train_fn.learning_rate": 0.003, "train_fn.dropout_rate": 0.1}}

    monkeypatch.setattr(tune, "tune", fake_tune)
    args = greb.parse_args(["--dataset", "ml100k", "--models", "hstu", "--seeds", "4,5", "--tune", "7",
                            "--output_dir", str(tmp_path)])
    bindings = greb.tuned_cell_bindings(args, "ml100k", "minilm", "hstu")
    assert bindings == ["train_fn.learning_rate = 0.003", "train_fn.dropout_rate = 0.1"]
    assert 'train_fn.run_name = "hstu-minilm-tuned"' in greb.run_bindings(args, "ml100k", "minilm", "hstu", 5, tuned=True)
    ((settings, n_trials, test_best),) = searched
    assert (n_trials, test_best) == (7, False)  # the seeds' runs read the test, not the search
    assert settings.config_file.endswith("greb/hstu-text.gin") and "train_fn.random_seed = 4" in settings.bindings
    assert settings.output_dir == tmp_path / "tune" / "ml100k-minilm-hstu"
    assert [p.name for p in settings.space] == ["train_fn.learning_rate", "train_fn.dropout_rate", "train_fn.weight_decay"]
    assert greb.tuned_cell_bindings(greb.parse_args(["--dataset", "ml100k"]), "ml100k", "none", "hstu") == []
