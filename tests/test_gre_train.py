"""GRE: pair mining and the guided loss against hand computation, a tiny random BERT fine-tuned
(held-out loss falls, a resumed run equals an uninterrupted one), and the command line end to
end: the folder it writes loads with AutoModel and embeds as ``hf:DIR``; its one-line refusals."""

import json
import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from generative_recommenders.data.cold_items import split_cold_items
from generative_recommenders.data.sequence_format import SequenceDataset
from generative_recommenders.errors import UserError
from generative_recommenders.text.contrastive import (
    ContrastiveConfig,
    ContrastiveTrainer,
    PairDomain,
    guided_in_batch_info_nce,
    sample_negatives,
    split_pairs,
)
from generative_recommenders.text.pairs import mine_pairs, normalized_co_occurrence, training_histories

# --- pair mining -------------------------------------------------------------------------------

# Training parts u0 [0, 1, 2], u1 [0, 1, 3], u2 [2, 3, 2]; the last two items of each user
# (item 4 and an item of the training part) are validation and test targets and never count.
SEQUENCES = [[0, 1, 2, 4, 4], [0, 1, 3, 4, 0], [2, 3, 2, 4, 4]]


def _unit(degrees: float, norm: float = 1.0) -> list:
    return [norm * math.cos(math.radians(degrees)), norm * math.sin(math.radians(degrees))]


def test_training_histories_drop_the_validation_and_test_targets():
    data = SequenceDataset.from_item_sequences("hand", 5, SEQUENCES)
    assert [h.tolist() for h in training_histories(data)] == [[0, 1, 2], [0, 1, 3], [2, 3, 2]]


def test_co_occurrence_is_normalized_by_the_item_counts():
    # counts: item 0: 2, item 1: 2, item 2: 3 (u2 holds it twice), item 3: 2, item 4: 0
    histories = training_histories(SequenceDataset.from_item_sequences("hand", 5, SEQUENCES))
    matrix = normalized_co_occurrence(histories, 5).toarray()
    expected = {
        (0, 1): 2 / math.sqrt(2 * 2),  # u0 and u1
        (0, 2): 1 / math.sqrt(2 * 3),
        (1, 2): 1 / math.sqrt(2 * 3),
        (0, 3): 1 / math.sqrt(2 * 2),
        (1, 3): 1 / math.sqrt(2 * 2),
        (2, 3): 2 / math.sqrt(3 * 2),  # u2: 2 and 3 share two pairs of positions (2, 3) and (3, 2)
    }
    hand = np.zeros((5, 5))
    for (a, b), value in expected.items():
        hand[a, b] = hand[b, a] = value
    np.testing.assert_allclose(matrix, hand, atol=1e-12)  # the diagonal (an item with itself) is 0


def test_pairs_pass_both_thresholds_strictly():
    histories = training_histories(SequenceDataset.from_item_sequences("hand", 5, SEQUENCES))
    # guide directions 0, 30, 90, 60, 0 degrees (norms differ: cosine ignores them)
    guide = torch.tensor([_unit(0, 2.0), _unit(30), _unit(90, 0.5), _unit(60, 3.0), _unit(0)])
    # co-occurrence > 0.45: (0,1) 1.0, (0,3) 0.5, (1,3) 0.5, (2,3) 0.816; cosines .866, .5, .866, .866
    mined = mine_pairs(histories, guide, co_occurrence_threshold=0.45, similarity_threshold=0.6)
    assert mined.pairs.tolist() == [[0, 1], [1, 3], [2, 3]]
    np.testing.assert_allclose(mined.guide_similarity, [math.sqrt(3) / 2] * 3, atol=1e-6)
    assert mined.counts() == {"co_occurring": 6, "above_co_occurrence": 4, "above_both": 3, "kept": 3}
    # exactly at a threshold is not above it: 0.5 co-occurrence and the 0.5 cosine of (0, 3) drop
    strict = mine_pairs(histories, guide, co_occurrence_threshold=0.5, similarity_threshold=0.5)
    assert strict.pairs.tolist() == [[0, 1], [2, 3]] and strict.above_co_occurrence == 2
    subset = mine_pairs(histories, guide, 0.45, 0.6, max_pairs=2, seed=3)
    assert len(subset.pairs) == 2 and {tuple(p) for p in subset.pairs} < {(0, 1), (1, 3), (2, 3)}
    assert subset.above_both == 3


def test_cold_items_leave_the_pairs():
    data = SequenceDataset.from_item_sequences("hand", 5, SEQUENCES)
    # The trainer's split with share 0.2 and seed 1 holds out one item: item 2 (id 3 in batches).
    assert split_cold_items(data, 0.2, 1).cold_item_ids.tolist() == [3]
    histories = training_histories(data, cold_item_share=0.2, cold_item_seed=1)
    assert [h.tolist() for h in histories] == [[0, 1], [0, 1, 3], [3]]


def test_sampled_negatives_are_never_the_pair_itself():
    pairs = np.array([[0, 1], [3, 2], [4, 0]] * 50)
    drawn = sample_negatives(np.random.default_rng(0), pairs, num_items=5, per_pair=4)
    assert drawn.shape == (150, 4) and drawn.min() >= 0 and drawn.max() <= 4
    assert not ((drawn == pairs[:, :1]) | (drawn == pairs[:, 1:])).any()
    assert set(drawn[0::3].ravel()) == {2, 3, 4}  # every other item is drawn


def test_split_is_seeded_and_disjoint():
    pairs = np.arange(40).reshape(20, 2)
    train, held_out = split_pairs(pairs, 0.2, seed=1)
    assert len(train) == 16 and len(held_out) == 4
    assert sorted(map(tuple, np.concatenate([train, held_out]))) == sorted(map(tuple, pairs))
    np.testing.assert_array_equal(split_pairs(pairs, 0.2, seed=1)[1], held_out)


# --- the guided loss ---------------------------------------------------------------------------


def _directions(*degrees: float) -> torch.Tensor:
    return torch.tensor([_unit(d) for d in degrees], dtype=torch.float64)


# Model: queries at 0, 90, 45 degrees, positives at 0, 90, 180. Guide: queries 0, 90, 10,
# positives 20, 100, 200, so the pairs' guide similarities are cos 20, cos 10, cos 190.
QUERY, POSITIVE = _directions(0, 90, 45), _directions(0, 90, 180)
GUIDE_QUERY, GUIDE_POSITIVE = _directions(0, 90, 10), _directions(20, 100, 200)
T = 0.5
C45 = math.sqrt(0.5)


def _row_loss(positive: float, others: list) -> float:
    return -positive / T + math.log(sum(math.exp(s / T) for s in [positive, *others]))


def test_guided_loss_matches_hand_computation():
    # Row 0 (guide pair cos 20 = .940): the guide puts q2 (10 degrees) above it: q-q (0, 2) masked.
    #   candidates: q-p 0, -1; q-q q1 0; p-p p1 0, p2 -1.
    # Row 1 (guide cos 10 = .985): nothing above it. q-p 0, 0; q-q 0, .707; p-p 0, 0.
    # Row 2 (guide cos 190 = -.985): everything but p-p (2, 0) (guide cos 180 = -1) is above it.
    #   candidates: p-p p0 -1; the positive cos(45, 180) = -.707.
    expected = (_row_loss(1, [0, -1, 0, 0, -1]) + _row_loss(1, [0, 0, 0, C45, 0, 0]) + _row_loss(-C45, [-1])) / 3
    loss = guided_in_batch_info_nce(QUERY, POSITIVE, GUIDE_QUERY, GUIDE_POSITIVE, T)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


def test_sampled_negatives_are_scored_against_the_query():
    # One negative per pair; those of rows 0 and 1 share their query's guide direction (masked),
    # that of row 2 sits at 190 degrees in the guide (cos -1, kept) and at 90 in the model:
    # cos(query 45, 90) = .707 (against the positive at 180 it would be 0).
    negatives = _directions(0, 0, 90).unsqueeze(1)
    guide_negatives = _directions(0, 90, 190).unsqueeze(1)
    expected = (_row_loss(1, [0, -1, 0, 0, -1]) + _row_loss(1, [0, 0, 0, C45, 0, 0]) + _row_loss(-C45, [-1, C45])) / 3
    loss = guided_in_batch_info_nce(QUERY, POSITIVE, GUIDE_QUERY, GUIDE_POSITIVE, T, negatives, guide_negatives)
    assert loss.item() == pytest.approx(expected, rel=1e-9)


# --- a tiny random BERT ------------------------------------------------------------------------

WORDS = [f"w{k}" for k in range(24)]


def _texts(num_items: int) -> list:
    """Item k's text: its topic word (k % 6) and two noise words; pairs share the topic."""
    rng = np.random.default_rng(0)
    return [f"w{k % 6} " + " ".join(f"w{6 + int(i)}" for i in rng.integers(18, size=2)) for k in range(num_items)]


def _domain(num_items: int = 36) -> PairDomain:
    pairs = np.array([(a, b) for a in range(num_items) for b in range(a + 1, num_items) if a % 6 == b % 6])
    guide = torch.nn.functional.one_hot(torch.arange(num_items) % 6, 6).float() + 0.1 * torch.randn(num_items, 6)
    train, held_out = split_pairs(pairs, 0.2, seed=0)
    return PairDomain("topics", _texts(num_items), guide, train, held_out)


CONFIG = ContrastiveConfig(pooling="mean", max_length=16, batch_size=16, learning_rate=1e-3, temperature=0.05,
                           negatives_per_pair=2, epochs=3, patience=5, seed=7, checkpoint_every=1)


def test_a_tiny_bert_learns_the_pairs(tmp_path, tiny_bert):
    model, tokenizer = tiny_bert(tmp_path / "bert", WORDS)
    trainer = ContrastiveTrainer(model, tokenizer, [_domain()], CONFIG)
    history = trainer.train()
    assert history.steps == 3 * trainer.steps_per_epoch() == 3 * 5  # 72 training pairs, batches of 16
    assert history.held_out_loss[-1] < history.held_out_loss_before - 0.1
    assert history.best_epoch == int(np.argmin(history.held_out_loss))


class _Killed(Exception):
    pass


def test_a_resumed_run_equals_an_uninterrupted_one(tmp_path, tiny_bert):
    model, tokenizer = tiny_bert(tmp_path / "bert", WORDS)
    domain = _domain()
    torch.manual_seed(1)  # dropout draws from here: the checkpoint must carry it
    uninterrupted = ContrastiveTrainer(model, tokenizer, [domain], CONFIG).train()
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    def kill_at(step: int):
        def after_step(done: int) -> None:
            if done == step:
                raise _Killed
        return after_step

    checkpoint = tmp_path / "run" / "checkpoint.pt"
    signature = {"run": 1}
    model, tokenizer = tiny_bert(tmp_path / "bert", WORDS)
    torch.manual_seed(1)
    with pytest.raises(_Killed):  # mid-epoch 2 (5 steps per epoch), after its checkpoint
        ContrastiveTrainer(model, tokenizer, [domain], CONFIG).train(checkpoint, run_signature=signature, after_step=kill_at(7))
    torch.manual_seed(123)  # a new process: another generator state, another fresh model
    model, tokenizer = tiny_bert(tmp_path / "bert", WORDS)
    resumed = ContrastiveTrainer(model, tokenizer, [domain], CONFIG).train(checkpoint, resume=True, run_signature=signature)
    assert resumed.steps == uninterrupted.steps
    np.testing.assert_allclose(resumed.held_out_loss, uninterrupted.held_out_loss, rtol=1e-5)
    np.testing.assert_allclose(resumed.train_loss, uninterrupted.train_loss, rtol=1e-5)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(UserError, match="written by another run"):
        ContrastiveTrainer(model, tokenizer, [domain], CONFIG).train(checkpoint, resume=True, run_signature={"run": 2})


# --- the command line --------------------------------------------------------------------------


@pytest.fixture
def prepared(tmp_path, tiny_bert):
    """A prepared dataset 'topics': 60 users each walking one topic's items (item k's topic: k % 6)."""
    from generative_recommenders import prepare as prep

    from generative_recommenders.data.local import load_local_dataset

    folder = tmp_path / "topics"
    folder.mkdir()
    rng = np.random.default_rng(0)
    lines = ["user_id,item_id"]
    for user in range(60):
        topic = user % 6
        lines += [f"u{user},i{topic + 6 * int(step)}" for step in rng.permutation(6)]
    (folder / "interactions.csv").write_text("\n".join(lines) + "\n")
    items = [{"item_id": f"i{k}", "title": text} for k, text in enumerate(_texts(36))]
    (folder / "items.jsonl").write_text("\n".join(json.dumps(item) for item in items) + "\n")
    prep.prepare_dataset("topics", partial(load_local_dataset, folder), tmp_path / "data", False, "local", "prepare",
                         to_embed=False)
    tiny_bert(tmp_path / "bert", WORDS)
    return tmp_path


def _argv(root: Path, *extra: str) -> list:
    return ["--dataset", "topics", "--data_root", str(root / "data"), "--base", f"hf:{root / 'bert'}",
            "--guide", f"hf:{root / 'bert'}", "--output", str(root / "gre"), "--epochs", "2", "--batch_size", "8",
            "--learning_rate", "1e-3", "--similarity_threshold", "-1", "--max_length", "16", *extra]


def test_the_command_writes_a_model_folder_that_embeds(prepared):
    from transformers import AutoModel, AutoTokenizer

    from generative_recommenders.gre_train import main
    from generative_recommenders.text.encoders import get_text_encoder

    assert main(_argv(prepared)) == 0
    output = prepared / "gre"
    record = json.loads((output / "gre_training.json").read_text())
    assert record["pooling"] == "cls"  # the base folder records none: GRE's CLS
    counts = record["datasets"][0]
    assert counts["train_pairs"] + counts["held_out_pairs"] == counts["kept"] > 0 and counts["training_interactions"] == 240
    assert len(record["history"]["held_out_loss"]) == 2 and record["history"]["steps"] > 0
    card = (output / "README.md").read_text()
    assert "**cls pooling**" in card and "| topics | 60 | 36 | 240 |" in card and "| 2 |" in card
    assert not (prepared / "gre.training").exists()

    texts = ["w1 w7 w8", "w2"]
    model, tokenizer = AutoModel.from_pretrained(output).eval(), AutoTokenizer.from_pretrained(output)
    with torch.no_grad():
        inputs = tokenizer(texts, padding=True, return_tensors="pt")
        expected = torch.nn.functional.normalize(model(**inputs).last_hidden_state[:, 0], dim=-1)
    encoder = get_text_encoder(f"hf:{output}", device="cpu")  # the recorded CLS pooling and normalization
    assert (encoder.pooling, encoder.normalize, encoder.max_length) == ("cls", True, 16)
    torch.testing.assert_close(encoder.encode(texts), expected, rtol=1e-4, atol=1e-5)
    assert get_text_encoder(f"hf:{output}", pooling="mean", device="cpu").pooling == "mean"  # told otherwise

    with pytest.raises(UserError, match="exists; choose a new folder"):
        main(_argv(prepared))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "nowhere"], r"--dataset nowhere: no prepared dataset .* \(prepared there: topics\)"),
        (["--similarity_threshold", "0.9999"],
         r"too few item pairs: \d+ where at least 10 are needed \(topics: [\d,]+ co-occurring, [\d,]+ above "
         r"--co_occurrence_threshold 0.1, \d+ also above --similarity_threshold 0.9999\)"),
        (["--base", "hf:/no/such/model"], r"--base hf:/no/such/model: cannot load '/no/such/model'"),
        (["--base", "bert"], r"--base 'bert': choose minilm or hf:"),
    ],
)
def test_bad_settings_are_one_line_errors(prepared, extra, message):
    from generative_recommenders.gre_train import main

    with pytest.raises(UserError, match=message) as error:
        main(_argv(prepared, *extra))
    assert "\n" not in str(error.value)
    assert not (prepared / "gre").exists()


def test_a_cut_short_run_needs_resume(prepared):
    from generative_recommenders.gre_train import main

    (prepared / "gre.training").mkdir()
    (prepared / "gre.training" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(UserError, match="a run was cut short there; add --resume"):
        main(_argv(prepared))
