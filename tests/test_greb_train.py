"""The trainer on GRE-B's tasks: CTR runs end to end, retrieval runs with BCE, groups and cold items."""

import json
from pathlib import Path

import gin
import numpy as np
import pytest
import torch

from generative_recommenders.data.cold_items import split_cold_items
from generative_recommenders.data.sequence_format import load_sequence_dataset
from generative_recommenders.recommender import Recommender, RecommenderError
from generative_recommenders.text.embedding_store import write_item_texts
from generative_recommenders.trainer import tasks
from generative_recommenders.trainer.config import ConfigError
from generative_recommenders.trainer.train import train_config_file
from test_train import cyclic_dataset, run_main

CTR_BINDINGS = (
    'train_fn.loss_module = "BinaryCrossEntropyLoss"',
    'train_fn.selection_metric = "auc"',
    "train_fn.lr_plateau_factor = 0.5",
    "train_fn.lr_plateau_patience = 0",
)


def greb_config(tmp_path, module, extra=""):
    path = tmp_path / f"{module.lower()}.gin"
    path.write_text(
        f"""
train_fn.dataset_name = "cyclic"
train_fn.data_root = "{tmp_path / 'data'}"
train_fn.output_root = "{tmp_path / 'exps'}"
train_fn.main_module = "{module}"
train_fn.run_name = "{module.lower()}"
train_fn.max_sequence_length = 10
train_fn.local_batch_size = 64
train_fn.item_embedding_dim = 16
train_fn.learning_rate = 5e-3
train_fn.num_epochs = 3
{extra}"""
    )
    return path


@pytest.fixture
def cyclic(tmp_path):
    cyclic_dataset(tmp_path / "data")
    return tmp_path


def test_a_ctr_model_trains_through_main_and_selects_on_validation(cyclic):
    config = greb_config(cyclic, "DIN", "\n".join(CTR_BINDINGS))
    proc = run_main(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((cyclic / "exps" / "cyclic" / "din-s42" / "results.json").read_text())
    assert results["task"] == "ctr" and results["has_categories"] is False
    # 320 users of 12 items: training positions 1..9, one validation and one test position each,
    # every positive with one negative.
    assert results["samples"] == {"train": 2 * 320 * 9, "valid": 640, "test": 640}
    during = [e for e in results["evaluations"] if e["split"] not in ("test_last", "test_best")]
    assert [e["split"] for e in during] == ["valid"] * 3 and all(e["samples"] == 640 and "users" not in e for e in during)
    assert [e["split"] for e in results["evaluations"][3:]] == ["test_last", "test_best"]
    best = results["best"]
    assert best["valid"]["auc"] == max(e["metrics"]["auc"] for e in during)
    # The next item is learnable from the behaviours: far above chance.
    assert best["test"]["auc"] > 0.8 and 0 < best["test"]["logloss"] < np.log(2)


def test_a_resumed_ctr_run_gives_the_uninterrupted_numbers(cyclic):
    config = greb_config(cyclic, "DeepFM", "\n".join(CTR_BINDINGS))
    straight = train_config_file(str(config), ['train_fn.output_root = "%s"' % (cyclic / "straight")])
    train_config_file(str(config), ["train_fn.num_epochs = 2"])
    resumed = train_config_file(str(config), [], resume=True)
    assert resumed["resumed_at"] == [{"epoch": 2, "step": 180}]
    assert [e["metrics"] for e in resumed["evaluations"]] == [e["metrics"] for e in straight["evaluations"]]
    assert resumed["best"] == straight["best"]


def test_the_plateau_schedule_lowers_the_rate_after_validations_without_a_better_auc(cyclic, monkeypatch):
    scripted = iter([0.7, 0.6, 0.65, 0.5, 0.5])  # three validations, then test_last and test_best

    def evaluate(self, model, loader, context, max_batches=None):
        return tasks.Evaluation({"auc": next(scripted), "logloss": 0.5}, len(loader.dataset))

    monkeypatch.setattr(tasks.CTRTask, "evaluate", evaluate)
    train_config_file(str(greb_config(cyclic, "DeepFM", "\n".join(CTR_BINDINGS))), [])
    checkpoint = torch.load(cyclic / "exps" / "cyclic" / "deepfm-s42" / "checkpoint.pt", weights_only=False)
    assert checkpoint["scheduler"] is None and checkpoint["plateau"]["best"] == 0.7
    # Patience 0, factor 0.5: halved after 0.6 and again after 0.65 (neither beats 0.7).
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(5e-3 / 4)


def test_retrieval_with_bce_reports_popularity_groups_and_cold_items(cyclic):
    config = greb_config(
        cyclic, "DSSM", 'train_fn.loss_module = "BinaryCrossEntropyLoss"\ntrain_fn.num_negatives = 1\n'
        "train_fn.cold_item_share = 0.1\ntrain_fn.num_epochs = 2"
    )
    results = train_config_file(str(config), [])
    data = load_sequence_dataset(cyclic / "data" / "cyclic")
    split = split_cold_items(data, 0.1, seed=42)
    held_out = [data.maps["id2item"][k - 1] for k in split.cold_item_ids]
    assert results["cold_item_split"] == {**split.summary(), "held_out_item_ids": held_out}
    assert split.summary()["num_cold_items"] == 4
    cold = results["cold_items"]
    assert cold["groups"] == {"num_items": 4} and cold["cold_items"]["num_users"] == len(split.cold_users) > 0
    groups = results["popularity_groups"]
    assert sum(groups[g]["num_users"] for g in ("head", "torso", "tail")) == data.num_users
    assert set(groups["groups"]) == {"rule", "head", "torso", "tail"}
    assert groups["groups"]["tail"]["min_count"] == 0  # the cold items, never trained on
    # Every validation evaluation has its groups too.
    assert all("popularity_groups" in e["groups"] for e in results["evaluations"])
    write_item_texts(cyclic / "data" / "cyclic", [f"item {name}" for name in data.maps["id2item"]])
    check_the_recommender_knows_the_held_out_items(Path(results["run_dir"]), held_out)


def check_the_recommender_knows_the_held_out_items(run_dir, held_out):
    """The run is served as it was trained: its held-out items are cold, flagged whenever recommended,
    left out where the (id-only) model cannot score them; another split is refused."""
    every_user = None
    for include_cold in (False, True):
        rec = Recommender.from_run(run_dir, include_cold=include_cold)
        assert set(held_out) <= set(rec.cold_item_ids)
        every_user = rec.recommend(rec.user_ids, k=rec.num_items // 2)
        shown = every_user[every_user["item_id"].isin(held_out)]
        assert (len(shown) > 0) == include_cold and shown["cold"].all()
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text())
    results["cold_item_split"]["held_out_item_ids"] = held_out[:-1] + ["another"]
    results_path.write_text(json.dumps(results))
    with pytest.raises(RecommenderError, match=r"is not the data run .* \(other held-out \(cold\) items\)"):
        Recommender.from_run(run_dir)


@pytest.mark.parametrize(
    "module, loss", [("DSSM", "BinaryCrossEntropyLoss"), ("SASRec", "BinaryCrossEntropyLoss"), ("HSTU", "SampledSoftmaxLoss")]
)
def test_cold_items_are_never_sampled_as_negatives(cyclic, monkeypatch, module, loss):
    """Held out of training means out of the negatives too: an item only ever drawn as a negative is
    learned as one nobody wants, and even a text model would rank it last."""
    from generative_recommenders.modeling import dssm, losses

    real, drawn = losses.sample_negatives, []

    def recorded(*args, **kwargs):
        negatives = real(*args, **kwargs)
        drawn.append(negatives.flatten())
        return negatives

    monkeypatch.setattr(losses, "sample_negatives", recorded)
    monkeypatch.setattr(dssm, "sample_negatives", recorded)
    config = greb_config(
        cyclic, module, f'train_fn.loss_module = "{loss}"\ntrain_fn.num_negatives = 4\n'
        "train_fn.cold_item_share = 0.1\ntrain_fn.num_epochs = 1"
    )
    train_config_file(str(config), [])
    cold = split_cold_items(load_sequence_dataset(cyclic / "data" / "cyclic"), 0.1, seed=42).cold_item_ids
    sampled = torch.cat(drawn).unique().numpy()
    assert len(cold) == 4 and not np.isin(sampled, cold).any()
    assert len(sampled) == 40 - 4  # every other item was drawn


@pytest.mark.parametrize(
    "module, bindings, message",
    [
        ("DIN", ['train_fn.loss_module = "BinaryCrossEntropyLoss"', 'train_fn.selection_metric = "auc"',
                 'train_fn.eval_protocol = "reference"'], "trains under the validated protocol only"),
        ("DIN", ['train_fn.loss_module = "BinaryCrossEntropyLoss"'], r'main_module = "DIN" is a CTR model .* train_fn.selection_metric = "auc"; start from configs/greb/din.gin' ),
        ("DSSM", [], "train_fn.loss_module='SampledSoftmaxLoss' is not supported"),
        ("SASRec", ['train_fn.eval_protocol = "reference"', "train_fn.cold_item_share = 0.1"],
         "cold_item_share needs the validated protocol"),
        ("SASRec", ["train_fn.lr_plateau_factor = 0.5", "train_fn.num_warmup_steps = 10"],
         "needs the validated protocol and train_fn.num_warmup_steps = 0"),
        ("GREBSASRec", ['train_fn.training_samples = "every_position"'],
         "training_samples='every_position' is not supported; choose from \\('window', 'per_position'\\)"),
        ("DIN", [*CTR_BINDINGS, 'train_fn.training_samples = "per_position"'],
         "training_samples is for retrieval models; drop it for DIN"),
        ("DIN", [*CTR_BINDINGS, "train_fn.mask_seen_items = True"], "mask_seen_items is for retrieval models"),
        ("SASRec", ["train_fn.grad_clip_norm = 0"], "grad_clip_norm must be > 0 or None, got 0"),
        ("SASRec", ["train_fn.adam_beta2 = 1.0"], "adam_beta2 must be in \\[0, 1\\), got 1.0"),
    ],
)
def test_task_settings_that_cannot_train_are_one_line_errors(cyclic, module, bindings, message):
    with pytest.raises(ConfigError, match=message):
        train_config_file(str(greb_config(cyclic, module)), bindings)
    assert not (cyclic / "exps").exists()
    gin.clear_config()


def test_a_greb_retrieval_run_trains_per_position_and_masks_seen_items(cyclic):
    greb = """
train_fn.loss_module = "BinaryCrossEntropyLoss"
train_fn.num_negatives = 1
train_fn.item_l2_norm = False
train_fn.dropout_rate = 0.1
train_fn.training_samples = "per_position"
train_fn.mask_seen_items = True
train_fn.adam_beta2 = 0.999
train_fn.grad_clip_norm = 1.0
train_fn.patience = 3
"""
    results = train_config_file(str(greb_config(cyclic, "GREBSASRec", greb)), [])
    # 320 users of 12 items: training positions 1 .. 9, one sample each.
    assert results["training_samples"] == {"kind": "per_position", "count": 320 * 9}
    # Each user's items are distinct: no test target was seen, so nothing is a forced miss; the next
    # item of the walk is learnable (a random ranking's HR@10: 10 of the 29 unseen items).
    assert results["best"]["test"]["hr@10"] > 0.5
    gin.clear_config()


def test_compare_shows_the_groups_and_leaves_ctr_runs_to_the_greb_table(cyclic, capsys):
    from generative_recommenders.reports import compare

    retrieval = train_config_file(str(greb_config(
        cyclic, "SASRec", 'train_fn.num_negatives = 8\ntrain_fn.cold_item_share = 0.1\ntrain_fn.num_epochs = 1\n'
        "sasrec_encoder.num_blocks = 1")), [])
    train_config_file(str(greb_config(cyclic, "DeepFM", "\n".join(CTR_BINDINGS) + "\ntrain_fn.num_epochs = 1")), [])
    compare.main([str(cyclic / "exps" / "cyclic"), "--output_dir", str(cyclic / "cmp")])
    out = capsys.readouterr()
    assert "a CTR run" in out.out and "deepfm-s42" in out.out
    head = retrieval["popularity_groups"]["head"]
    cold = retrieval["cold_items"]["cold_items"]
    assert "| model | head | torso | tail | cold_items |" in out.out
    assert f"| SASRec | {head['ndcg@10']:.4f} / {head['hr@10']:.4f} |" in out.out
    assert f"{cold['ndcg@10']:.4f} / {cold['hr@10']:.4f} |" in out.out
    assert "cold_items: 4 items held out of training" in (cyclic / "cmp" / "comparison.md").read_text()
