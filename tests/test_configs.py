from pathlib import Path

import gin
import pytest

import generative_recommenders.trainer.train  # noqa: F401  (registers the configurables)

CONFIG_ROOT = Path(__file__).resolve().parents[1] / "configs"
# Per-dataset configs; configs/greb/ holds dataset-independent ones (tests/test_greb_configs.py).
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob("*.gin") if p.parent.name != "greb")
PAPER_DATASETS = ("amzn23_game", "amzn23_office", "amzn23_music", "steam")
# The paper's four configs per dataset, plus the offline MiniLM variants: (model, text encoder).
PAPER_VARIANTS = {
    "sasrec-sampled-softmax-n512-final": ("SASRec", None),
    "hstu-sampled-softmax-n512-final": ("HSTU", None),
    "hstu-sampled-softmax-n512-blair": ("HSTU", "blair"),
    "hstu-sampled-softmax-n512-openai": ("HSTU", "openai"),
    "hstu-sampled-softmax-n512-minilm": ("HSTU", "minilm"),
    "sasrec-sampled-softmax-n512-minilm": ("SASRec", "minilm"),
}
# HSTU-BLaIR's hyperparameters (seq len 50, dim 64, 4 blocks x 4 heads, dqk = dv = 16, ...).
PAPER_VALUES = {
    "train_fn.max_sequence_length": 50,
    "train_fn.item_embedding_dim": 64,
    "train_fn.dropout_rate": 0.5,
    "train_fn.num_negatives": 512,
    "train_fn.temperature": 0.05,
    "train_fn.item_l2_norm": True,
    "train_fn.learning_rate": 1e-3,
    "train_fn.weight_decay": 0,
    "train_fn.local_batch_size": 128,
    "train_fn.num_epochs": 101,
    "train_fn.full_eval_every_n": 5,
    "train_fn.loss_module": "SampledSoftmaxLoss",
}
ENCODER_VALUES = {
    "HSTU": {
        "hstu_encoder.num_blocks": 4,
        "hstu_encoder.num_heads": 4,
        "hstu_encoder.dqk": 16,
        "hstu_encoder.dv": 16,
        "hstu_encoder.linear_dropout_rate": 0.5,
    },
    "SASRec": {
        "sasrec_encoder.num_blocks": 4,
        "sasrec_encoder.num_heads": 4,
        "sasrec_encoder.ffn_hidden_dim": 64,
        "sasrec_encoder.ffn_dropout_rate": 0.5,
    },
}


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


def test_the_paper_datasets_have_exactly_their_configs():
    for dataset in PAPER_DATASETS:
        assert sorted(p.stem for p in (CONFIG_ROOT / dataset).glob("*.gin")) == sorted(PAPER_VARIANTS)


def _bound(name, default=None):
    try:
        return gin.query_parameter(name)
    except ValueError:  # not bound in the config
        return default


@pytest.mark.parametrize("variant", sorted(PAPER_VARIANTS))
@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_paper_configs_hold_the_papers_values(dataset, variant):
    module, encoder = PAPER_VARIANTS[variant]
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(CONFIG_ROOT / dataset / f"{variant}.gin")], [])
        expected = {**PAPER_VALUES, **ENCODER_VALUES[module], "train_fn.main_module": module}
        assert {name: gin.query_parameter(name) for name in expected} == expected
        assert _bound("train_fn.text_embedding_model") == encoder
        if encoder is None:
            assert _bound("train_fn.embedding_module_type", "local") == "local"
        else:
            assert gin.query_parameter("train_fn.embedding_module_type") == "local_and_text"
            assert gin.query_parameter("text_fusion.mode") == "add"
    finally:
        gin.clear_config()


def test_paper_text_config_builds_the_add_fusion():
    import torch

    from generative_recommenders.modeling.item_embeddings import ItemEmbeddingWithText
    from generative_recommenders.modeling.registry import ModelInputs, build_model

    config = Path(__file__).resolve().parents[1] / "configs/amzn14_office/hstu-sampled-softmax-n512-blair.gin"
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(config)], [])
        assert gin.query_parameter("train_fn.embedding_module_type") == "local_and_text"
        text = torch.randn(11, 768)
        model = build_model("HSTU", ModelInputs(10, 64, 61, 0.5, text_embeddings=text))
    finally:
        gin.clear_config()
    emb = model.item_embedding
    assert isinstance(emb, ItemEmbeddingWithText) and emb.mode == "add"
    ids = torch.tensor([1, 7])
    expected = emb.id_embedding(ids) + text[ids] @ emb.text_projection.weight.T + emb.text_projection.bias
    torch.testing.assert_close(model.item_embeddings(ids), expected)
