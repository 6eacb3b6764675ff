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


def test_paper_text_config_builds_the_add_fusion():
    import torch

    from generative_recommenders.modeling.item_embeddings import ItemEmbeddingWithText
    from generative_recommenders.trainer.train import build_model

    config = Path(__file__).resolve().parents[1] / "configs/amzn14_office/hstu-sampled-softmax-n512-blair.gin"
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(config)], [])
        assert gin.query_parameter("train_fn.embedding_module_type") == "local_and_text"
        text = torch.randn(11, 768)
        model = build_model("HSTU", 10, 64, 61, 0.5, "l2_norm", 1e-6, text)
    finally:
        gin.clear_config()
    emb = model.item_embedding
    assert isinstance(emb, ItemEmbeddingWithText) and emb.mode == "add"
    ids = torch.tensor([1, 7])
    expected = emb.id_embedding(ids) + text[ids] @ emb.text_projection.weight.T + emb.text_projection.bias
    torch.testing.assert_close(model.item_embeddings(ids), expected)
