"""The trainer's numbers, pinned: short seeded runs must give exactly the recorded losses and metrics.

The pins in ``fixtures/regression_pins.json`` (``_host`` says where they were
recorded) must be met by a change of the code that is not meant to change
results. Another CPU (or torch's other SIMD path, ``ATEN_CPU_CAPABILITY=default``,
``avx2``, ``avx512``) rounds differently in the last bits, so floats are compared
with a tolerance any x86 CPU meets: losses to a relative 1e-5, metrics that are
shares of users (HR@K) exactly, the other metrics to a relative 1e-6.
Regenerate the pins (``python3 tests/test_regression.py``) only with a change
that is meant to change the numbers, and say so in its commit.

Every run is deterministic (``train_fn.deterministic = True``) on one thread.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import gin
import numpy as np
import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script to regenerate the pins
    sys.path.insert(0, str(REPO))

from generative_recommenders.data.sequence_format import write_sequence_dataset  # noqa: E402
from generative_recommenders.text.embedding_store import compute_item_text_embeddings, write_item_texts  # noqa: E402
from generative_recommenders.trainer.train import train_fn  # noqa: E402

PINS = Path(__file__).resolve().parent / "fixtures" / "regression_pins.json"
NUM_ITEMS = 30

BASE = [
    'train_fn.dataset_name = "pinned"',
    "train_fn.max_sequence_length = 8",
    "train_fn.local_batch_size = 16",
    "train_fn.eval_batch_size = 16",
    "train_fn.item_embedding_dim = 16",
    "train_fn.num_negatives = 8",
    "train_fn.learning_rate = 1e-2",
    "train_fn.num_warmup_steps = 3",
    "train_fn.dropout_rate = 0.2",
    "train_fn.num_epochs = 3",
    "train_fn.deterministic = True",
    "train_fn.checkpoint_every_n_steps = 3",
    "train_fn.random_seed = 7",
]
MODELS = {
    "hstu": [
        'train_fn.main_module = "HSTU"',
        "hstu_encoder.num_blocks = 2",
        "hstu_encoder.num_heads = 2",
        "hstu_encoder.dqk = 8",
        "hstu_encoder.dv = 8",
        "hstu_encoder.linear_dropout_rate = 0.1",
    ],
    "sasrec": [
        'train_fn.main_module = "SASRec"',
        "sasrec_encoder.num_blocks = 2",
        "sasrec_encoder.num_heads = 2",
        "sasrec_encoder.ffn_hidden_dim = 16",
    ],
}
TEXT = [
    'train_fn.embedding_module_type = "local_and_text"',
    'train_fn.text_embedding_model = "fake"',
]
CASES = {
    f"{model}{'-text' if text else ''}-{protocol}": (model, text, protocol)
    for model in ("hstu", "sasrec")
    for text in (False, True)
    for protocol in ("validated", "reference")
    if not (model == "sasrec" and text)
}


class _HashEncoder:
    """A deterministic stand-in text encoder: a random vector seeded by the text."""

    name = cache_key = "fake"
    dim = 6
    metadata = {"pooling": "none", "normalized": False}

    def encode(self, texts: List[str]) -> torch.Tensor:
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts]
        return torch.stack(rows)


def write_pinned_dataset(root: Path) -> None:
    """64 users stepping through the catalogue with user-specific strides, times a day apart."""
    rng = np.random.default_rng(3)
    rows = []
    for user in range(64):
        start, stride, length = int(rng.integers(NUM_ITEMS)), 1 + user % 3, int(rng.integers(5, 14))
        for step in range(length):
            rows.append((f"u{user}", f"i{(start + stride * step) % NUM_ITEMS}", 1.0, 86_400 * step + 7 * user))
    data_dir = root / "pinned"
    maps = write_sequence_dataset(data_dir, pd.DataFrame(rows, columns=["user_id", "item_id", "rating", "timestamp"]))
    texts = [f"item {name} of the pinned catalogue" for name in maps.maps["id2item"]]
    write_item_texts(data_dir, texts)
    compute_item_text_embeddings(texts, _HashEncoder(), data_dir, root / "cache")


def _bindings(case: str, root: Path) -> List[str]:
    model, text, protocol = CASES[case]
    return [
        *BASE,
        *MODELS[model],
        *(TEXT if text else []),
        f'train_fn.eval_protocol = "{protocol}"',
        f'train_fn.data_root = "{root / "data"}"',
        f'train_fn.output_root = "{root / "exps"}"',
        f'train_fn.run_name = "{case}"',
    ]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(False)
        gin.clear_config()


def run_case(case: str, root: Path, resume: bool = False) -> Dict[str, Any]:
    gin.clear_config()
    gin.parse_config_files_and_bindings([], _bindings(case, root))
    return train_fn(resume=resume)


def pinned_numbers(results: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "losses": [epoch["train_loss"] for epoch in results["epochs"]],
        "evaluations": [[e["epoch"], e["split"], e["full"], e["metrics"]] for e in results["evaluations"]],
        "best": results["best"],
        "last": results["last"],
    }


LOSS_RTOL = 1e-5
METRIC_RTOL = 1e-6


def assert_meets_pins(actual: Any, expected: Any, path: str = "") -> None:
    """``actual`` equals ``expected`` in structure, ints, strings and HR@K shares, other floats within
    the tolerances above (``losses`` to LOSS_RTOL)."""
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for key in expected:
            assert_meets_pins(actual[key], expected[key], f"{path}/{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), f"{path}: {len(actual)} entries, pinned {len(expected)}"
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_meets_pins(a, e, f"{path}[{index}]")
    elif isinstance(expected, float) and "/hr@" not in path:
        rtol = LOSS_RTOL if path.startswith("/losses") else METRIC_RTOL
        assert math.isclose(actual, expected, rel_tol=rtol, abs_tol=1e-12), f"{path}: {actual} vs pinned {expected}"
    else:
        assert actual == expected, f"{path}: {actual!r} vs pinned {expected!r}"


def test_the_pin_comparison_tolerates_rounding_and_nothing_more():
    pinned = {"losses": [6.084436655044556], "evaluations": [[0, "test", True, {"hr@10": 0.5, "mrr": 0.25}]]}
    rounded = {"losses": [6.084436655044556 * (1 + 3e-6)], "evaluations": [[0, "test", True, {"hr@10": 0.5, "mrr": 0.25 * (1 + 5e-7)}]]}
    assert_meets_pins(rounded, pinned)
    for changed in (
        {"losses": [6.084436655044556 * (1 + 3e-5)], "evaluations": pinned["evaluations"]},
        {"losses": pinned["losses"], "evaluations": [[0, "test", True, {"hr@10": 0.515625, "mrr": 0.25}]]},
        {"losses": pinned["losses"], "evaluations": [[0, "test", True, {"hr@10": 0.5, "mrr": 0.2501}]]},
        {"losses": pinned["losses"], "evaluations": [[1, "test", True, {"hr@10": 0.5, "mrr": 0.25}]]},
    ):
        with pytest.raises(AssertionError):
            assert_meets_pins(changed, pinned)


def pinned_runs() -> Dict[str, Any]:
    return {case: numbers for case, numbers in json.loads(PINS.read_text()).items() if case != "_host"}


@pytest.fixture(scope="module")
def pinned_root(tmp_path_factory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("pinned")
    write_pinned_dataset(root / "data")
    with one_thread():
        yield root


@pytest.mark.parametrize("case", sorted(CASES))
def test_short_runs_give_the_pinned_losses_and_metrics(pinned_root, case):
    assert_meets_pins(pinned_numbers(run_case(case, pinned_root)), pinned_runs()[case])


class _Crash(Exception):
    pass


def test_a_resumed_run_gives_the_pinned_numbers(pinned_root, monkeypatch):
    """Killed at its 8th optimizer step (mid-epoch 1, after the step-6 checkpoint), then resumed."""
    real_step, calls = torch.optim.AdamW.step, []

    def crashing_step(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 8:
            raise _Crash()
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", crashing_step)
    root = pinned_root / "resumed"
    root.mkdir()
    (root / "data").symlink_to(pinned_root / "data")
    with pytest.raises(_Crash):
        run_case("hstu-text-validated", root)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    results = run_case("hstu-text-validated", root, resume=True)
    assert results["resumed_at"] == [{"epoch": 1, "step": 6}]
    assert_meets_pins(pinned_numbers(results), pinned_runs()["hstu-text-validated"])


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_pinned_dataset(Path(tmp) / "data")
        with one_thread():
            pins = {name: pinned_numbers(run_case(name, Path(tmp))) for name in sorted(CASES)}
    pins["_host"] = {
        "cpu": next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    PINS.write_text(json.dumps(pins, indent=1) + "\n")
    print(f"wrote {PINS} ({len(CASES)} runs)")
