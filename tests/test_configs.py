from pathlib import Path

import gin
import pytest

import generative_recommenders.trainer.train  # noqa: F401  (registers the configurables)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.gin"))


def test_configs_exist():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_config_binds(config):
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(config)], [])
        assert gin.query_parameter("train_fn.dataset_name") == config.parent.name
        assert gin.query_parameter("train_fn.main_module") in ("HSTU", "SASRec")
    finally:
        gin.clear_config()
