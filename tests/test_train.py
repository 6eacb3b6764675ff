"""Smoke tests of the whole train path: main.py, gin, data, model, loss, evaluation."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pytest

from generative_recommenders.data.sequence_format import write_sequence_dataset
from generative_recommenders.text.embedding_store import write_item_texts

REPO = Path(__file__).resolve().parents[1]
NUM_ITEMS = 40


def cyclic_dataset(root: Path) -> None:
    """Users walk the catalogue in order from a random start: the next item is learnable."""
    rng = np.random.default_rng(0)
    rows = []
    for user in range(320):
        start = int(rng.integers(NUM_ITEMS))
        for step in range(12):
            rows.append((f"u{user}", f"i{(start + step) % NUM_ITEMS}", 1.0, 1000 * step + user))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"])
    write_sequence_dataset(root / "cyclic", df)


def tiny_config(tmp_path: Path, module: str, extra: str = "") -> Path:
    encoder = (
        "hstu_encoder.num_blocks = 1\nhstu_encoder.num_heads = 1\nhstu_encoder.dqk = 16\nhstu_encoder.dv = 16\n"
        if module == "HSTU"
        else "sasrec_encoder.num_blocks = 1\nsasrec_encoder.ffn_hidden_dim = 16\n"
    )
    text = f"""
train_fn.dataset_name = "cyclic"
train_fn.data_root = "{tmp_path / 'data'}"
train_fn.output_root = "{tmp_path / 'exps'}"
train_fn.main_module = "{module}"
train_fn.max_sequence_length = 10
train_fn.local_batch_size = 32
train_fn.item_embedding_dim = 16
train_fn.num_negatives = 16
train_fn.learning_rate = 1e-2
train_fn.dropout_rate = 0.0
train_fn.num_epochs = 2
{encoder}{extra}"""
    path = tmp_path / f"{module.lower()}-tiny.gin"
    path.write_text(text)
    return path


def run_folder(exps: Path, seed: int = 42) -> Path:
    """The one run folder of ``seed`` under ``exps`` (its name carries the hash of the bindings)."""
    (folder,) = exps.glob(f"cyclic/*-s{seed}")
    return folder


def run_main(config: Path, *bindings: str, flags: Sequence[str] = ()) -> subprocess.CompletedProcess:
    args = [sys.executable, "main.py", f"--gin_config_file={config}", "--master_port=12399", *flags]
    args += [f"--gin_bindings={b}" for b in bindings]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("module", ["HSTU", "SASRec"])
def test_main_trains_and_beats_random(tmp_path, module):
    cyclic_dataset(tmp_path / "data")
    proc = run_main(tiny_config(tmp_path, module))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval @ epoch 1 [valid, 320 users]" in proc.stdout
    run_dir = tmp_path / "exps" / "cyclic" / f"{module.lower()}-tiny-s42"
    results = json.loads((run_dir / "results.json").read_text())
    losses = [e["train_loss"] for e in results["epochs"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    # A random ranking of the 30 unseen items puts the target in the top 10 a third of the time.
    assert results["best"]["test"]["hr@10"] > 0.6
    assert results["last"]["hr@10"] > 0.6
    assert results["protocol"] == "validated" and results["dataset"]["num_users"] == 320
    assert (run_dir / "best_model.pt").is_file()
    assert any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir())


def test_seeds_run_once_each_log_to_tensorboard_and_end_with_their_table(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    cyclic_dataset(tmp_path / "data")
    proc = run_main(tiny_config(tmp_path, "HSTU"), "train_fn.num_epochs = 1", flags=["--seeds=3,5"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {}
    for seed in (3, 5):
        run_dir = run_folder(tmp_path / "exps", seed)
        assert run_dir.name == f"hstu-tiny-s{seed}"  # num_epochs alone names no other folder
        runs[seed] = json.loads((run_dir / "results.json").read_text())
        assert runs[seed]["seed"] == seed and f"train_fn.random_seed = {seed}" in runs[seed]["gin_config"]
    assert runs[3]["epochs"] != runs[5]["epochs"]
    ndcg10 = [runs[seed]["best"]["test"]["ndcg@10"] for seed in (3, 5)]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("HSTU "))
    assert row.split()[1] == "3,5"
    assert f"{np.mean(ndcg10):.4f} ± {np.std(ndcg10, ddof=1):.4f}" in row

    events = EventAccumulator(str(run_folder(tmp_path / "exps", 3)))
    events.Reload()
    assert {"losses/train", "valid/ndcg@10", "test_best/ndcg@10", "test_last/ndcg@10"} <= set(events.Tags()["scalars"])
    assert [e.value for e in events.Scalars("valid/mrr")] == [pytest.approx(runs[3]["best"]["valid"]["mrr"])]
    assert [e.value for e in events.Scalars("test_best/ndcg@10")] == [pytest.approx(ndcg10[0])]
    hparams = {tag: HParamsPluginData.FromString(c) for tag, c in events.PluginTagToContent("hparams").items()}
    session = hparams["_hparams_/session_start_info"].session_start_info.hparams
    # Every TrainConfig field, by its name, and the model's description.
    assert session["random_seed"].number_value == 3 and session["eval_protocol"].string_value == "validated"
    assert session["num_epochs"].number_value == 1 and session["text_embedding_model"].string_value == "none"
    assert session["model"].string_value == runs[3]["model"]
    metrics = {m.name.tag for m in hparams["_hparams_/experiment"].experiment.metric_infos}
    assert {"valid/ndcg@10", "test_best/ndcg@10"} <= metrics


def test_reference_protocol_reports_the_last_full_test_evaluation(tmp_path):
    cyclic_dataset(tmp_path / "data")
    config = tiny_config(tmp_path, "HSTU", 'train_fn.eval_protocol = "reference"\ntrain_fn.full_eval_every_n = 2\n')
    proc = run_main(
        config, "train_fn.num_epochs = 3", "train_fn.partial_eval_num_iters = 1", "train_fn.eval_batch_size = 32"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = run_folder(tmp_path / "exps")
    assert run_dir.name.startswith("hstu-tiny-reference-")
    results = json.loads((run_dir / "results.json").read_text())
    evals = [(e["epoch"], e["split"], e["full"], e["users"]) for e in results["evaluations"]]
    # Full passes at epochs 0 and 2 (the last), one partial batch of 32 users at epoch 1.
    assert evals == [(0, "test", True, 320), (1, "test", False, 32), (2, "test", True, 320)]
    assert results["last"] == results["evaluations"][-1]["metrics"]
    assert results["best"] is None


def test_unknown_gin_parameter_is_a_clear_error(tmp_path):
    config = tiny_config(tmp_path, "HSTU", "train_fn.not_a_parameter = 3\n")
    proc = run_main(config)
    assert proc.returncode != 0
    assert "doesn't have a parameter named 'not_a_parameter'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_dataset_is_a_clear_error(tmp_path):
    proc = run_main(tiny_config(tmp_path, "HSTU"))
    assert proc.returncode != 0
    assert "sasrec_format.csv not found" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "binding, name",
    [('train_fn.main_module = "GRU4Rec"', "main_module"), ('train_fn.selection_metric = "ndcg@5"', "selection_metric")],
)
def test_unsupported_setting_is_a_clear_error(tmp_path, binding, name):
    cyclic_dataset(tmp_path / "data")
    proc = run_main(tiny_config(tmp_path, "HSTU"), binding)
    assert proc.returncode != 0 and name in proc.stderr and "Traceback" not in proc.stderr


class _HashEncoder:
    """A deterministic stand-in text encoder: a random vector seeded by the text."""

    name = cache_key = "fake"
    dim = 8
    metadata = {"pooling": "none", "normalized": False}

    def encode(self, texts):
        import hashlib

        import torch

        rows = []
        for text in texts:
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            rows.append(torch.randn(self.dim, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


def _text_dataset(tmp_path: Path) -> Path:
    from generative_recommenders.text.embedding_store import compute_item_text_embeddings

    cyclic_dataset(tmp_path / "data")
    data_dir = tmp_path / "data" / "cyclic"
    maps = json.loads((data_dir / "data_maps.json").read_text())
    texts = [f"item {name}" for name in maps["id2item"]]
    write_item_texts(data_dir, texts)
    compute_item_text_embeddings(texts, _HashEncoder(), data_dir, tmp_path / "cache")
    return data_dir


TEXT_BINDINGS = (
    'train_fn.embedding_module_type = "local_and_text"',
    'train_fn.text_embedding_model = "fake"',
    'train_fn.sampling_strategy = "local_with_text"',
    'train_fn.feat_prep = "LearnablePositionalEmbeddingWithTextPreprocessor"',
)


@pytest.mark.parametrize("module, mode", [("HSTU", "add"), ("HSTU", "gate"), ("SASRec", "add")])
def test_main_trains_with_text_fusion(tmp_path, module, mode):
    _text_dataset(tmp_path)
    bindings = (*TEXT_BINDINGS, f'text_fusion.mode = "{mode}"', f'train_fn.run_name = "fusion-{mode}"')
    proc = run_main(tiny_config(tmp_path, module), *bindings)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "exps" / "cyclic" / f"fusion-{mode}-s42" / "results.json").read_text())
    assert results["text_embedding_model"] == "fake"
    assert f"text8-{mode}-linear" in results["model"]
    assert results["best"]["test"]["hr@10"] > 0.6


def test_stale_text_embeddings_are_refused(tmp_path):
    data_dir = _text_dataset(tmp_path)
    texts = json.loads((data_dir / "item_texts.json").read_text())
    texts[3] = "a new description"
    write_item_texts(data_dir, texts)  # the texts change, the embeddings are not recomputed
    proc = run_main(tiny_config(tmp_path, "HSTU"), *TEXT_BINDINGS)
    assert proc.returncode != 0 and "item texts changed" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Written by hand, the texts no longer match the dataset's manifest.
    (data_dir / "item_texts.json").write_text(json.dumps(texts[::-1]))
    proc = run_main(tiny_config(tmp_path, "HSTU"), *TEXT_BINDINGS)
    assert proc.returncode != 0 and "item_texts.json: changed since it was prepared" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_text_model_without_text_module_is_a_clear_error(tmp_path):
    cyclic_dataset(tmp_path / "data")
    proc = run_main(tiny_config(tmp_path, "HSTU"), 'train_fn.text_embedding_model = "fake"')
    assert proc.returncode != 0 and "go together" in proc.stderr


def test_length_bucketed_batches_train_every_sequence_once_per_epoch(tmp_path):
    cyclic_dataset(tmp_path / "data")
    proc = run_main(tiny_config(tmp_path, "HSTU"), "train_fn.length_bucketed_batches = True")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_folder(tmp_path / "exps") / "results.json").read_text())
    assert results["best"]["test"]["hr@10"] > 0.6
    # 320 users x 2 epochs: each training sequence once per epoch.
    trained = results["train_sequences_per_second"] * results["train_seconds"]
    assert trained == pytest.approx(640)
