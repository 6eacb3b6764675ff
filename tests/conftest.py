import logging
from pathlib import Path

import pytest
import torch

from generative_recommenders.logs import configure_logging
from generative_recommenders.ops import jagged

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(params=["torch", "fbgemm"])
def jagged_backend(request) -> str:
    """Runs a test once per jagged backend (the test passes it on); fbgemm is skipped when it does not import."""
    if request.param == "fbgemm" and not jagged.fbgemm_available():
        pytest.skip("fbgemm_gpu does not import")
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _project_logs_reach_caplog():
    """A training run in an earlier test sets up the project's stdout channel, which stops
    propagation to the root logger; each test starts with propagation on, so caplog sees its records."""
    configure_logging()  # the project's lines on stdout (capsys), whichever test ran first
    logging.getLogger("generative_recommenders").propagate = True


@pytest.fixture
def tiny_bert():
    """Saves a 2-layer random BERT and a word-level tokenizer over ``words`` to a folder (no download);
    returns the model and the tokenizer."""

    def save(folder: Path, words):
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
        vocab = {token: i for i, token in enumerate([*specials, *words])}
        backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
        )
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, cls_token="[CLS]", sep_token="[SEP]",
                                            pad_token="[PAD]", unk_token="[UNK]")
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=32)
        model = BertModel(config)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return model, tokenizer

    return save
