"""AUC and Logloss against hand computations, shard merging, and the CTR evaluation loop."""

import math

import numpy as np
import pytest
import torch

from generative_recommenders.evaluation.classification import ClassificationAccumulator, evaluate_ctr

LABELS = [1, 0, 1, 0]
PROBABILITIES = [0.9, 0.3, 0.3, 0.1]
# Positive-negative pairs: 0.9 beats 0.3 and 0.1; 0.3 ties 0.3 (one half) and beats 0.1.
AUC = (1 + 1 + 0.5 + 1) / 4
LOGLOSS = -(math.log(0.9) + math.log(0.7) + math.log(0.3) + math.log(0.9)) / 4


def test_auc_and_logloss_match_hand_computation_with_a_tie():
    acc = ClassificationAccumulator()
    acc.add(torch.tensor(LABELS), torch.tensor(PROBABILITIES))
    metrics = acc.metrics()
    assert metrics["auc"] == pytest.approx(AUC)
    assert metrics["logloss"] == pytest.approx(LOGLOSS)
    assert acc.count == 4


def test_shards_merge_to_the_single_pass_metrics():
    first, second = ClassificationAccumulator(), ClassificationAccumulator()
    first.add(np.array(LABELS[:1]), np.array(PROBABILITIES[:1]))
    second.add(np.array(LABELS[1:]), np.array(PROBABILITIES[1:]))
    first.merge(ClassificationAccumulator.from_state(second.state()))
    assert first.metrics() == pytest.approx({"auc": AUC, "logloss": LOGLOSS})


def test_a_certain_mistake_costs_a_finite_logloss():
    acc = ClassificationAccumulator()
    acc.add([1, 0], [0.0, 0.0])
    assert acc.metrics()["logloss"] == pytest.approx(-math.log(1e-7) / 2 - math.log(1 - 1e-7) / 2)


def test_bad_inputs():
    acc = ClassificationAccumulator()
    with pytest.raises(ValueError, match="no samples"):
        acc.metrics()
    with pytest.raises(ValueError, match="0 or 1"):
        acc.add([2], [0.5])
    with pytest.raises(ValueError, match="2 labels but 1"):
        acc.add([1, 0], [0.5])
    with pytest.raises(FloatingPointError):
        acc.add([1], [float("nan")])
    acc.add([1, 1], [0.2, 0.4])
    with pytest.raises(ValueError, match="both labels"):
        acc.metrics()


class FixedLogits(torch.nn.Module):
    """Returns the batch's ``logits`` entry; records whether it ran in evaluation mode."""

    def forward(self, batch):
        self.saw_eval_mode = not self.training
        return batch["logits"]


def test_evaluate_ctr_applies_the_sigmoid_and_restores_training_mode():
    model = FixedLogits().train()
    logits = torch.logit(torch.tensor(PROBABILITIES, dtype=torch.float64)).float()
    batches = [
        {"labels": torch.tensor(LABELS[:2], dtype=torch.float32), "logits": logits[:2]},
        {"labels": torch.tensor(LABELS[2:], dtype=torch.float32), "logits": logits[2:]},
    ]
    metrics = evaluate_ctr(model, batches, torch.device("cpu")).metrics()
    assert metrics["auc"] == pytest.approx(AUC)
    assert metrics["logloss"] == pytest.approx(LOGLOSS, rel=1e-5)
    assert model.saw_eval_mode and model.training
    assert evaluate_ctr(model, batches, torch.device("cpu"), max_batches=1).count == 2
