"""The GRE-B configs: every binding resolves, and they hold GRE-B's values."""

from pathlib import Path

import gin
import pytest

import generative_recommenders.modeling.deepfm  # noqa: F401  (registers deepfm.*)
import generative_recommenders.modeling.din  # noqa: F401  (registers din.*)
import generative_recommenders.modeling.dssm  # noqa: F401  (registers dssm.*)
import generative_recommenders.modeling.greb_sasrec  # noqa: F401  (registers greb_sasrec.*)
import generative_recommenders.trainer.train  # noqa: F401  (registers train_fn.*, the encoders, text_fusion.*)

GREB_ROOT = Path(__file__).resolve().parents[1] / "configs" / "greb"
MODELS = {"sasrec": "GREBSASRec", "dssm": "DSSM", "hstu": "HSTU", "din": "DIN", "deepfm": "DeepFM"}
RETRIEVAL = {"train_fn.max_sequence_length": 20, "train_fn.item_embedding_dim": 64, "train_fn.patience": 10,
             "train_fn.selection_metric": "ndcg@10", "train_fn.mask_seen_items": True}
GREB_RETRIEVAL = {"train_fn.training_samples": "per_position", "train_fn.adam_beta2": 0.999,
                  "train_fn.weight_decay": 0, "train_fn.local_batch_size": 2048}
CTR = {"train_fn.max_sequence_length": 20, "train_fn.item_embedding_dim": 32, "train_fn.patience": 3,
       "train_fn.num_epochs": 10, "train_fn.weight_decay": 1e-6, "train_fn.selection_metric": "auc",
       "train_fn.adam_beta2": 0.999, "train_fn.grad_clip_norm": 1.0, "train_fn.lr_plateau_factor": 0.3,
       "train_fn.lr_plateau_patience": 0, "train_fn.local_batch_size": 2048}
# GRE-B's model settings, naive (and text where they differ).
VALUES = {
    "sasrec": {**GREB_RETRIEVAL, "greb_sasrec.num_blocks": 2, "greb_sasrec.num_heads": 2, "greb_sasrec.ffn_hidden_dim": 128,
               "greb_sasrec.activation": "gelu", "greb_sasrec.layer_norm_eps": 1e-12, "train_fn.dropout_rate": 0.5,
               "train_fn.learning_rate": 1e-3, "train_fn.loss_module": "BinaryCrossEntropyLoss",
               "train_fn.num_negatives": 1},
    "dssm": {**GREB_RETRIEVAL, "dssm.mlp_dims": [128, 128, 128], "dssm.activation": "tanh", "dssm.dropout_rate": 0.3,
             "train_fn.num_negatives": 1, "train_fn.learning_rate": 1e-3},
    "hstu": {"train_fn.loss_module": "SampledSoftmaxLoss"},
    "din": {"din.attention_mlp_dims": [64, 32], "din.mlp_dims": [128, 64, 64], "din.activation": "dice",
            "din.dropout_rate": 0.5, "train_fn.learning_rate": 3e-3},
    "deepfm": {"deepfm.mlp_dims": [128, 64, 64], "deepfm.activation": "relu", "deepfm.dropout_rate": 0.5,
               "train_fn.learning_rate": 5e-3},
}
TEXT_VALUES = {"sasrec": {"train_fn.num_negatives": 10, "text_fusion.projection": "dropout_linear_relu"},
               "dssm": {"text_fusion.projection": "dropout_linear_relu"}}


def test_every_model_has_a_naive_and_a_text_config():
    expected = sorted(f"{model}{suffix}" for model in MODELS for suffix in ("", "-text"))
    assert sorted(p.stem for p in GREB_ROOT.glob("*.gin")) == expected


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("text", [False, True], ids=["naive", "text"])
def test_config_binds_and_holds_grebs_values(model, text):
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(GREB_ROOT / f"{model}{'-text' if text else ''}.gin")], [])
        expected = {
            "train_fn.main_module": MODELS[model],
            **(CTR if model in ("din", "deepfm") else RETRIEVAL),
            **VALUES[model],
            **(TEXT_VALUES.get(model, {}) if text else {}),
        }
        assert {name: gin.query_parameter(name) for name in expected} == expected
        if text:
            assert gin.query_parameter("train_fn.embedding_module_type") == "local_and_text"
        else:
            with pytest.raises(ValueError):
                gin.query_parameter("train_fn.text_embedding_model")
    finally:
        gin.clear_config()


def test_din_config_builds_the_configured_model():
    import torch

    from generative_recommenders.modeling.din import build_din
    from generative_recommenders.modeling.registry import ModelInputs

    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(GREB_ROOT / "din-text.gin")], [])
        model = build_din(ModelInputs(10, 32, num_positions=1, dropout_rate=0.0, text_embeddings=torch.randn(11, 8)))
    finally:
        gin.clear_config()
    linears = [m.out_features for m in model.output.modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [128, 64, 64, 1] and model.fields.num_fields == 2
