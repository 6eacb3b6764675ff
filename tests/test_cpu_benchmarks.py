"""benchmarks/cpu_speed.py's pieces on tiny inputs: data of the paper's shape, and each case's before and
after paths agreeing."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _benchmark(name: str):
    sys.path.insert(0, str(BENCHMARKS))  # cpu_speed imports preprocess_memory as a sibling
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cpu_speed = _benchmark("cpu_speed")


def test_paper_scale_users_have_the_papers_shape():
    data = cpu_speed.paper_scale_users(2000)
    lengths = np.array([len(items) for items in data.item_ids])
    assert data.num_items == 77_600 and len(lengths) == 2000
    assert lengths.min() >= 5 and lengths.max() <= 50 and abs(lengths.mean() - 8) < 0.5
    assert all(items.min() >= 0 and items.max() < 77_600 for items in data.item_ids)


def test_retrieval_case_finds_the_same_ids_both_ways():
    timing, differing = cpu_speed.retrieval_case(items=5000, queries=40, rounds=2)
    assert differing == 0
    assert timing.count == {"before": 80, "after": 80}  # every round searched all queries on both paths


@pytest.mark.slow  # a model over the paper's 77.6K items, two paths
def test_training_steps_of_both_paths_run_and_count_their_sequences():
    data = cpu_speed.paper_scale_users(1000)  # batches of 128: one warm-up, then two full ones each
    timing = cpu_speed.train_case(cpu_speed.PAPER_CONFIG, data, steps=2)
    assert timing.count == {"before": 256, "after": 256}
    assert timing.cpu["before"] > 0 and timing.cpu["after"] > 0


def test_evaluation_case_ranks_every_user_alike_on_both_paths():
    # Each path ranks the same batches in the same order, so the ranks compare user by user.
    timing, differing = cpu_speed.eval_case(cpu_speed.paper_scale_users(700), batches=5)
    assert differing == 0
    assert timing.count == {"before": 640, "after": 640}


@pytest.mark.parametrize(
    "environment, expected",
    [
        ({}, ("10000", None)),  # the package's spin count
        ({"GOMP_SPINCOUNT": "500"}, ("500", None)),  # the user's, kept
        ({"OMP_WAIT_POLICY": "ACTIVE"}, (None, "ACTIVE")),  # a policy the user set: no spin count added
    ],
)
def test_importing_the_package_sets_openmps_spin_count_unless_the_user_did(environment, expected):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(environment)
    code = "import os, generative_recommenders; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1]).stdout.split()
    assert tuple(None if value == "None" else value for value in out) == expected
