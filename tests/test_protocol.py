"""The evaluation protocols: which item trains, validates and tests; model selection; early stopping."""

import functools
import json

import gin
import numpy as np
import pytest
import torch

from generative_recommenders.data.sequence_format import SequenceDataset, load_sequence_dataset
from generative_recommenders.evaluation.metrics import MetricAccumulator
from generative_recommenders.trainer import tasks, train
from generative_recommenders.trainer.protocol import ModelSelection, protocol_views
from test_train import cyclic_dataset, tiny_config


def _hand_made() -> SequenceDataset:
    sequences = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [0, 4, 2, 9, 3]]  # 0-based item ids, oldest first
    return SequenceDataset(
        name="hand",
        num_items=10,
        item_ids=[np.array(s, dtype=np.int64) for s in sequences],
        ratings=[np.ones(len(s), dtype=np.float32) for s in sequences],
        timestamps=[np.arange(len(s), dtype=np.int64) for s in sequences],
        maps={},
    )


def _examples(view):
    """(user, history, target) per example, in the views' 1-based ids."""
    return [(e["user_index"], e["history_ids"].tolist(), e["target_id"]) for e in (view[i] for i in range(len(view)))]


def test_validated_protocol_holds_out_the_last_two_items():
    views = protocol_views(_hand_made(), max_sequence_length=2, protocol="validated")
    # User 1 (3 items) has no training example: its first item alone would predict the validation item.
    assert _examples(views.train) == [(0, [3, 4], 5), (2, [1, 5], 3)]
    assert _examples(views.eval) == [(0, [4, 5], 6), (1, [8], 9), (2, [5, 3], 10)]
    assert _examples(views.test) == [(0, [5, 6], 7), (1, [8, 9], 10), (2, [3, 10], 4)]
    assert views.eval_split == "valid"


def test_reference_protocol_trains_on_all_but_the_last_item_and_evaluates_on_it():
    views = protocol_views(_hand_made(), max_sequence_length=2, protocol="reference")
    assert _examples(views.train) == [(0, [4, 5], 6), (1, [8], 9), (2, [5, 3], 10)]
    assert _examples(views.eval) == _examples(views.test) == [(0, [5, 6], 7), (1, [8, 9], 10), (2, [3, 10], 4)]
    assert views.eval_split == "test"


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="unknown eval_protocol 'best'"):
        protocol_views(_hand_made(), 2, "best")


def _configure(tmp_path, *bindings):
    cyclic_dataset(tmp_path / "data")
    gin.clear_config()
    gin.parse_config_files_and_bindings([str(tiny_config(tmp_path, "HSTU"))], list(bindings))


@pytest.mark.parametrize("protocol, held_out", [("validated", 2), ("reference", 1)])
def test_training_never_sees_the_held_out_items(tmp_path, monkeypatch, protocol, held_out):
    _configure(tmp_path, f'train_fn.eval_protocol = "{protocol}"', "train_fn.num_epochs = 1")
    seen = {}

    @functools.wraps(tasks.RetrievalTask.default_losses["SampledSoftmaxLoss"])  # the task binds by its signature
    def recording_loss(model, batch, *args, **kwargs):
        for user, history, length, target in zip(
            batch["user_index"].tolist(), batch["history_ids"], batch["history_lengths"], batch["target_ids"]
        ):
            seen[user] = history[:length].tolist() + [int(target)]  # everything the loss reads
        return torch.zeros((), requires_grad=True)

    monkeypatch.setitem(tasks.RetrievalTask.default_losses, "SampledSoftmaxLoss", recording_loss)
    train.train_fn()
    data = load_sequence_dataset(tmp_path / "data" / "cyclic")
    assert len(seen) == data.num_users
    for user, items in enumerate(data.item_ids):
        assert seen[user] == (items[:-held_out] + 1)[-11:].tolist()  # 10 history items + the target


def test_selection_keeps_the_first_strict_best_and_counts_evaluations_without_improvement():
    model = torch.nn.Linear(1, 1)
    selection = ModelSelection("ndcg@10", patience=2)
    scripted = [0.1, 0.3, 0.2, 0.3, 0.35, 0.1, 0.2]
    improved, stop = [], []
    for epoch, value in enumerate(scripted):
        with torch.no_grad():
            model.weight.fill_(epoch)
        improved.append(selection.update(epoch, {"ndcg@10": value}, model))
        stop.append(selection.should_stop)
    assert improved == [True, True, False, False, True, False, False]  # 0.3 again is no improvement
    assert stop == [False, False, False, True, False, False, True]
    assert selection.best == {"epoch": 4, "valid": {"ndcg@10": 0.35}}
    assert selection.best_state["weight"].item() == 4.0  # a copy, not the live weights (now 6)


def test_selection_state_resumes_where_it_stopped():
    model = torch.nn.Linear(1, 1)
    first = ModelSelection("mrr", patience=3)
    for epoch, value in enumerate([0.2, 0.1]):
        first.update(epoch, {"mrr": value}, model)
    second = ModelSelection("mrr", patience=3)
    second.load_state_dict(first.state_dict())
    assert [second.update(2 + i, {"mrr": v}, model) for i, v in enumerate([0.15, 0.19])] == [False, False]
    assert second.should_stop and second.best["epoch"] == 0


def test_patience_must_be_positive():
    with pytest.raises(ValueError, match="patience must be >= 1"):
        ModelSelection("ndcg@10", patience=0)


# The metrics are scripted, so training need not learn: one batch of all 320 users per epoch.
ONE_STEP_EPOCHS = ("train_fn.local_batch_size = 320",)
# Validation ranks per evaluation, in order; NDCG@10 = 1 / log2(rank + 1) falls as the rank grows.
SCRIPTED_RANKS = [4, 2, 3, 2, 5, 1, 1]


def _scripted_evaluation(monkeypatch):
    """Replaces the ranking with scripted validation ranks; records the weights each evaluation saw."""
    calls = []

    def evaluate(model, loader, device, rank_cap=None, max_batches=None, **groups_and_repeats):
        split = "valid" if loader.dataset.ignore_last_n == 1 else "test"
        rank = SCRIPTED_RANKS[sum(c[0] == "valid" for c in calls)] if split == "valid" else 1
        calls.append((split, {k: v.clone() for k, v in model.state_dict().items()}))
        acc = MetricAccumulator()
        acc.add(torch.tensor([rank]))
        return acc

    monkeypatch.setattr(tasks, "evaluate_ranking", evaluate)
    return calls


def _same_weights(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "patience, epochs_trained, best_epoch",
    [
        (2, 4, 1),  # ranks 4, 2 (best), 3, 2 (a tie is no improvement): stop after epoch 3
        (None, 7, 5),  # all 7 epochs; rank 1 first at epoch 5, the tie at epoch 6 keeps it
    ],
)
def test_best_weights_and_early_stopping_on_scripted_metrics(tmp_path, monkeypatch, patience, epochs_trained,
                                                             best_epoch):
    _configure(tmp_path, "train_fn.num_epochs = 7", f"train_fn.patience = {patience}", *ONE_STEP_EPOCHS)
    calls = _scripted_evaluation(monkeypatch)
    results = train.train_fn()
    valid_states = [state for split, state in calls if split == "valid"]
    (last_state, best_state) = [state for split, state in calls if split == "test"]
    assert len(valid_states) == epochs_trained
    assert _same_weights(last_state, valid_states[-1])
    assert _same_weights(best_state, valid_states[best_epoch])
    run_dir = tmp_path / "exps" / "cyclic" / "HSTU-b1-h1-dqk16-dv16-d0.0-id16-s42"  # named after the model
    assert results["run_dir"] == str(run_dir)
    assert _same_weights(torch.load(run_dir / "best_model.pt"), valid_states[best_epoch])
    assert results["best"]["epoch"] == best_epoch
    assert results["best"]["valid"]["ndcg@10"] == pytest.approx(1 / np.log2(SCRIPTED_RANKS[best_epoch] + 1))
    assert results["epochs_trained"] == epochs_trained and len(results["epochs"]) == epochs_trained
    assert results["stopped_early"] == (patience is not None)
    splits = [(e["epoch"], e["split"]) for e in results["evaluations"]]
    assert splits[-2:] == [(epochs_trained - 1, "test_last"), (best_epoch, "test_best")]
    assert json.loads((run_dir / "results.json").read_text())["best"] == results["best"]


def test_validation_runs_every_full_eval_every_n_epochs_and_at_the_last(tmp_path, monkeypatch):
    _configure(tmp_path, "train_fn.num_epochs = 5", "train_fn.full_eval_every_n = 3", *ONE_STEP_EPOCHS)
    _scripted_evaluation(monkeypatch)
    results = train.train_fn()
    assert [e["epoch"] for e in results["evaluations"] if e["split"] == "valid"] == [0, 3, 4]
    assert results["best"]["epoch"] == 3  # ranks 4, 2, 3 at epochs 0, 3, 4


def test_patience_under_the_reference_protocol_is_refused(tmp_path):
    _configure(tmp_path, 'train_fn.eval_protocol = "reference"', "train_fn.patience = 3")
    with pytest.raises(ValueError, match="patience needs the validated protocol"):
        train.train_fn()


@pytest.fixture(autouse=True)
def _clear_gin():
    yield
    gin.clear_config()
