"""The benchmarks' own pieces: synthetic data, reference padding, and tiny measured cases."""

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from generative_recommenders.data.dataset import SequenceView, collate_sequences



BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


train_throughput = _benchmark("train_throughput")
attention = _benchmark("attention")
preprocess_memory = _benchmark("preprocess_memory")
paper_scale = _benchmark("paper_scale")
greb_epoch = _benchmark("greb_epoch")


def test_synthetic_histories_span_one_to_the_length():
    data = train_throughput.synthetic_dataset(num_users=400, max_length=20)
    history = [len(s) - 2 for s in data.item_ids]
    assert min(history) == 1 and max(history) == 20
    assert all((s >= 0).all() and (s < data.num_items).all() for s in data.item_ids)
    assert all((t[1:] >= t[:-1]).all() for t in data.timestamps)


def test_reference_batches_are_padded_to_the_full_length_and_keep_their_values():
    data = train_throughput.synthetic_dataset(num_users=5, max_length=6)
    batch = collate_sequences([SequenceView(data, 6, ignore_last_n=1)[i] for i in range(5)])
    padded = train_throughput.pad_batch(batch, 17)
    width = batch["history_ids"].size(1)
    for key in ("history_ids", "history_timestamps", "history_ratings"):
        assert padded[key].shape == (5, 17)
        assert torch.equal(padded[key][:, :width], batch[key]) and not padded[key][:, width:].any()
    assert torch.equal(padded["target_ids"], batch["target_ids"])


@pytest.mark.slow  # trains end to end in subprocesses: make test-all
def test_a_tiny_case_is_measured_on_every_path():
    args = argparse.Namespace(tokens_per_batch=48, warmup=1, steps=1, data_root="unused")
    results = train_throughput.measure_speed("synthetic-12", ["reference", "optimized", "bucketed"], args)
    for path in ("reference", "optimized", "bucketed"):
        assert results[path]["train_seq_per_s"] > 0 and results[path]["eval_users_per_s"] > 0
        assert results[path]["epoch_seconds"] is None  # synthetic data has no epoch
    assert train_throughput.measure_memory("synthetic-12", "optimized", args)["peak_mib"] > 0


def test_attention_benchmark_times_every_backend():
    args = argparse.Namespace(tokens_per_batch=64, warmup=1, steps=1)
    result = attention.measure(16, ["padded", "torch"], args, torch.device("cpu"))
    assert set(result["seconds"]) == {"padded", "torch"} and min(result["seconds"].values()) > 0


def test_retrieval_benchmark_catalogue_is_clustered_and_exact_kinds_have_full_recall():
    pytest.importorskip("faiss")
    retrieval = _benchmark("retrieval")
    items, queries = retrieval.clustered_catalogue(3000, 50, 16, clusters=20, spread=0.05)
    assert items.shape == (3000, 16) and queries.shape == (50, 16)
    np.testing.assert_allclose(np.linalg.norm(items, axis=1), 1.0, rtol=1e-5)
    # Clustered: a query's nearest items are far closer than a random item.
    scores = queries @ items.T
    assert np.sort(scores, axis=1)[:, -10:].mean() > 0.9 > scores.mean() + 0.5
    truth = np.argsort(-scores, axis=1)[:, :10]
    for kind in ("exact", "flat"):
        assert retrieval.measure(kind, items, queries, truth, 10)["recall"] == 1.0
    assert retrieval.recall_at_k(truth[:, ::-1], truth) == 1.0
    assert retrieval.recall_at_k(np.zeros_like(truth), truth) == pytest.approx(np.mean((truth == 0).sum(1)) / 10)


gpu_check = _benchmark("gpu_check")


def test_gpu_check_says_there_is_no_cuda_in_one_line_and_exits_0(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "gpu_check: no CUDA device here (torch sees none); nothing to check\n"
    assert not any(tmp_path.iterdir())


def test_gpu_check_compares_backends_on_the_same_inputs_and_flags_a_wrong_one():
    inputs = gpu_check.attention_inputs(50, torch.device("cpu"), tokens=400)
    lengths = (inputs[1].offsets[1:] - inputs[1].offsets[:-1]).tolist()
    assert min(lengths) == 1 and max(lengths) == 50
    reference = gpu_check.attention_and_gradients("torch", inputs, bf16=False)
    padded = gpu_check.attention_and_gradients("padded", inputs, bf16=False)
    assert len(reference) == 6  # the output and the gradients of q, k, v and both bias tables
    assert gpu_check._worst_excess(padded, reference, *gpu_check.TOLERANCE["fp32"]) <= 0
    wrong = [t * 1.01 for t in padded]
    assert gpu_check._worst_excess(wrong, reference, *gpu_check.TOLERANCE["fp32"]) > 0


def test_a_failing_gpu_check_is_a_row_and_the_others_still_run():
    def failing(check):
        raise RuntimeError("no kernel image is available")

    checks = []
    gpu_check._run_check(checks, "fails", failing)
    gpu_check._run_check(checks, "passes", lambda check: None)
    assert [(c.name, c.status, c.detail) for c in checks] == [
        ("fails", "FAIL", "RuntimeError: no kernel image is available"), ("passes", "ok", "")
    ]
    assert "fails   FAIL" in gpu_check.table(checks, "a test device")


def test_power_law_lengths_have_the_asked_mean_and_bounds():
    lengths = preprocess_memory.power_law_lengths(np.random.default_rng(0), 200_000, 8.06, 5, 50)
    assert lengths.min() == 5 and lengths.max() == 50
    assert lengths.mean() == pytest.approx(8.06, rel=0.01)
    # A long tail: most users at the minimum, the count falling with the length.
    counts = np.bincount(lengths)
    assert counts[5] > counts[6] > counts[10] > counts[50] > 0
    with pytest.raises(ValueError, match="mean"):
        preprocess_memory.power_law_lengths(np.random.default_rng(0), 10, 40.0, 5, 50)


def test_paper_run_projection_by_hand():
    # 100,000 users: 101 epochs at 1,000 sequences/s; 21 full evaluations (epochs 0, 5, ..., 100)
    # and 80 partial ones of 64 x 128 = 8,192 users, at 500 users/s.
    hours = paper_scale.projected_hours(100_000, train_rate=1_000.0, eval_rate=500.0)
    assert hours["train_hours"] == pytest.approx(101 * 100_000 / 1_000 / 3600)
    assert hours["eval_hours"] == pytest.approx((21 * 100_000 + 80 * 8_192) / 500 / 3600)
    assert hours["total_hours"] == pytest.approx(hours["train_hours"] + hours["eval_hours"])
    # Fewer users than a partial evaluation's batches: every evaluation is a full one.
    assert paper_scale.projected_hours(1_000, 1.0, 1.0)["eval_hours"] == pytest.approx(101 * 1_000 / 3600)


def test_random_text_encoder_is_seeded():
    first = paper_scale.RandomEncoder().encode(["a", "b"])
    assert first.shape == (2, 768) and first.dtype == torch.float32
    assert torch.equal(first, paper_scale.RandomEncoder().encode(["c", "d"]))


def test_greb_epoch_times_each_configs_epoch(tmp_path, capsys):
    from test_train import cyclic_dataset

    cyclic_dataset(tmp_path / "data")  # 320 users of 12 items
    configs = []
    for samples in ("window", "per_position"):
        path = tmp_path / f"{samples}.gin"
        path.write_text(
            'train_fn.main_module = "GREBSASRec"\ntrain_fn.loss_module = "BinaryCrossEntropyLoss"\n'
            "train_fn.num_negatives = 1\ntrain_fn.item_l2_norm = False\ntrain_fn.max_sequence_length = 5\n"
            f'train_fn.item_embedding_dim = 8\ntrain_fn.local_batch_size = 512\ntrain_fn.training_samples = "{samples}"\n'
        )
        configs.append(str(path))
    greb_epoch.main(["--data_root", str(tmp_path / "data"), "--dataset", "cyclic", "--configs", *configs,
                     "--repeats", "1"])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(str(tmp_path))}
    # One window per user against one sample per training position (positions 1..9 of each user).
    assert rows[configs[0]][2:4] == ["320", "1"] and rows[configs[1]][2:4] == ["2880", "6"]
    assert all(float(row[4]) > 0 for row in rows.values())
