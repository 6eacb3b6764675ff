"""Text encoders: bundled MiniLM offline, the transformers code path on a tiny local RoBERTa, and
the OpenAI encoder against a local fake embeddings server."""

import hashlib
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import tiktoken
import torch

from generative_recommenders.text.encoders import (
    OpenAIEncoder,
    TextEncoderUnavailable,
    TextEncodingError,
    check_text_encoder_name,
    get_text_encoder,
)


@pytest.fixture
def hub_offline(monkeypatch):
    """Makes Hub look-ups fail at once; huggingface_hub reads the variable only at import."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- MiniLM ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return get_text_encoder("minilm", device="cpu")


def test_minilm_loads_offline_and_ranks_similar_titles_closer(minilm):
    hp, ti, guitar = minilm.encode(
        [
            "HP 12C Financial Calculator",
            "Texas Instruments TI-84 Plus Graphing Calculator",
            "Fender Stratocaster Electric Guitar",
        ]
    )
    assert minilm.dim == 384 and minilm.metadata["pooling"] == "mean"
    cos = torch.nn.functional.cosine_similarity
    assert cos(hp, ti, dim=0) > cos(hp, guitar, dim=0)
    assert cos(hp, ti, dim=0) > cos(ti, guitar, dim=0)
    # all-MiniLM-L6-v2 ships a Normalize module; the metadata must say so.
    assert minilm.metadata["normalized"] is True
    assert minilm.cache_key == "minilm|mean|max256|norm1"
    torch.testing.assert_close(torch.stack([hp, ti]).norm(dim=1), torch.ones(2))


def test_minilm_keeps_input_order(minilm):
    short, long = "Guitar", "A much longer product title about a graphing calculator with a case"
    forward = minilm.encode([short, long])
    backward = minilm.encode([long, short])
    assert forward.shape == (2, 384) and forward.dtype == torch.float32
    torch.testing.assert_close(forward, backward.flip(0), atol=1e-5, rtol=1e-5)
    assert minilm.encode([]).shape == (0, 384)


@pytest.fixture(scope="module")
def minilm_static():
    return get_text_encoder("minilm-static", device="cpu")


def test_minilm_static_is_the_normalized_mean_of_the_word_piece_rows(minilm_static):
    text = "Texas Instruments TI-84 Plus"
    word_pieces = minilm_static.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(word_pieces) > 4  # "ti-84" splits into several pieces
    rows = minilm_static.table.weight[torch.tensor(word_pieces)]
    expected = torch.nn.functional.normalize(rows.mean(0), dim=0)
    (embedding,) = minilm_static.encode([text])
    torch.testing.assert_close(embedding, expected)
    assert minilm_static.dim == 384 and minilm_static.cache_key == "minilm-static|mean-wordpiece|max256|norm1"


def test_minilm_static_ignores_word_order_where_minilm_does_not(minilm, minilm_static):
    texts = ["electric guitar case", "case guitar electric"]
    static = minilm_static.encode(texts)
    torch.testing.assert_close(static[0], static[1])
    contextual = minilm.encode(texts)
    assert not torch.allclose(contextual[0], contextual[1], atol=1e-3)


def test_minilm_static_ranks_similar_titles_closer_and_embeds_empty_text_as_zeros(minilm_static):
    hp, ti, guitar, empty = minilm_static.encode(
        ["HP 12C Financial Calculator", "Texas Instruments TI-84 Plus Graphing Calculator",
         "Fender Stratocaster Electric Guitar", ""]
    )
    cos = torch.nn.functional.cosine_similarity
    assert cos(hp, ti, dim=0) > cos(hp, guitar, dim=0)
    torch.testing.assert_close(empty, torch.zeros(384))
    with pytest.raises(ValueError, match="always L2-normalizes"):
        get_text_encoder("minilm-static", normalize=False)


# --- transformers code path on a tiny local RoBERTa --------------------------------------------

WORDS = "the a red blue calculator guitar graphing financial electric plus case".split()


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory) -> Path:
    """A random 2-layer RoBERTa and a word-level tokenizer, saved like a hub checkpoint."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {token: i for i, token in enumerate(specials + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    folder = tmp_path_factory.mktemp("tiny-roberta")
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        cls_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    ).save_pretrained(folder)
    config = RobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    RobertaModel(config).save_pretrained(folder)
    return folder


def test_cls_pooling_matches_last_hidden_state(tiny_roberta):
    from transformers import AutoModel, AutoTokenizer

    encoder = get_text_encoder(f"hf:{tiny_roberta}", pooling="cls", device="cpu")
    texts = ["the red calculator", "blue guitar case", "a"]
    embeddings = encoder.encode(texts)
    assert embeddings.shape == (3, 32) and encoder.dim == 32
    weights = hashlib.sha256(b"model.safetensors\0" + (tiny_roberta / "model.safetensors").read_bytes()).hexdigest()
    assert encoder.cache_key == f"hf:{tiny_roberta}|cls|max512|norm0|weights{weights[:16]}"
    assert encoder.metadata["normalized"] is False and encoder.metadata["weights_sha256"] == weights

    model = AutoModel.from_pretrained(tiny_roberta).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_roberta)
    with torch.no_grad():
        for text, embedding in zip(texts, embeddings):
            expected = model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0, 0]
            torch.testing.assert_close(embedding, expected, atol=1e-5, rtol=1e-5)


def test_embeddings_of_a_folder_trained_again_are_not_taken_for_the_old_ones(tiny_roberta, tmp_path):
    import shutil

    from transformers import RobertaModel

    from generative_recommenders.text.embedding_store import (
        EmbeddingFileError,
        compute_item_text_embeddings,
        load_item_text_embeddings,
        texts_hash,
    )

    folder = Path(shutil.copytree(tiny_roberta, tmp_path / "model"))
    texts = ["the red calculator", "blue guitar case"]
    first = get_text_encoder(f"hf:{folder}", device="cpu")
    compute_item_text_embeddings(texts, first, tmp_path / "data", tmp_path / "cache")
    old = load_item_text_embeddings(tmp_path / "data", f"hf:{folder}", 2, texts_hash(texts))
    torch.manual_seed(1)  # the same path, other weights
    RobertaModel(RobertaModel.config_class.from_pretrained(folder)).save_pretrained(folder)
    with pytest.raises(EmbeddingFileError, match="the weights in .* changed since the embeddings were computed"):
        load_item_text_embeddings(tmp_path / "data", f"hf:{folder}", 2, texts_hash(texts))
    second = get_text_encoder(f"hf:{folder}", device="cpu")
    assert second.cache_key != first.cache_key  # the cache does not hand back the old weights' vectors
    compute_item_text_embeddings(texts, second, tmp_path / "data", tmp_path / "cache")
    new = load_item_text_embeddings(tmp_path / "data", f"hf:{folder}", 2, texts_hash(texts))
    assert not torch.allclose(new, old)
    torch.testing.assert_close(new[1:], second.encode(texts))


def test_truncates_at_max_length(tiny_roberta):
    encoder = get_text_encoder(f"hf:{tiny_roberta}", pooling="cls", max_length=6, device="cpu")
    long_text = " ".join(WORDS)
    prefix = " ".join(WORDS[:4])  # <s> + 4 words + </s> = 6 tokens
    assert len(encoder.tokenizer(long_text, truncation=True, max_length=6)["input_ids"]) == 6
    long_embedding, prefix_embedding = encoder.encode([long_text, prefix])
    torch.testing.assert_close(long_embedding, prefix_embedding, atol=1e-5, rtol=1e-5)


def test_mean_pooling_ignores_padding(tiny_roberta):
    encoder = get_text_encoder(f"hf:{tiny_roberta}", device="cpu")
    assert encoder.metadata["pooling"] == "mean"
    alone = encoder.encode(["blue guitar"])
    padded = encoder.encode(["the red graphing calculator with a case plus", "blue guitar"])
    torch.testing.assert_close(alone[0], padded[1], atol=1e-5, rtol=1e-5)


def test_normalize_gives_unit_norm(tiny_roberta):
    encoder = get_text_encoder(f"hf:{tiny_roberta}", pooling="cls", normalize=True, device="cpu")
    norms = encoder.encode(["the red calculator", "blue"]).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(2))
    assert encoder.metadata["normalized"] is True and "|norm1|" in encoder.cache_key


def test_blair_without_hub_names_the_offline_choice(hub_offline):
    with pytest.raises(TextEncoderUnavailable, match="minilm") as info:
        get_text_encoder("blair")
    assert "hyp1231/blair-roberta-base" in str(info.value)
    assert "Hugging Face Hub" in str(info.value)


@pytest.mark.parametrize("size", ["small", "base", "large"])
def test_gre_is_selectable_by_name_and_without_hub_names_the_offline_choice(hub_offline, size):
    with pytest.raises(TextEncoderUnavailable, match="minilm") as info:
        get_text_encoder(f"gre-{size}")
    assert f"pepsiness/gre-{size}" in str(info.value)


def test_unknown_encoder_name():
    with pytest.raises(ValueError, match="Unknown text encoder.*gre-small"):
        get_text_encoder("word2vec")


# --- OpenAI against a local fake server --------------------------------------------------------

API_KEY = "sk-test-SECRET123"
# One token per byte, so the fake server can count tokens without cl100k_base.
BYTES_ENCODING = tiktoken.Encoding(
    name="bytes",
    pat_str=r"[\s\S]",
    mergeable_ranks={bytes([i]): i for i in range(256)},
    special_tokens={},
)


def fake_embedding(text: str) -> List[float]:
    """768 floats that identify the text: its length and its first character."""
    return [float(len(text)), float(ord(text[0]))] + [0.5] * 766


class FakeEmbeddingsServer:
    """Answers POST /v1/embeddings; ``statuses`` scripts the next responses' status codes."""

    def __init__(self) -> None:
        self.requests: List[Dict] = []
        self.statuses: List[int] = []
        self.drop_one_embedding = False
        self.raw_answer: Optional[Tuple[str, bytes]] = None  # (content type, body) instead of embeddings
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                status = server.statuses.pop(0) if server.statuses else 200
                if server.raw_answer is not None:
                    content_type, encoded = server.raw_answer
                    self.send_response(status)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(encoded)))
                    self.end_headers()
                    self.wfile.write(encoded)
                    return
                if status == 200:
                    data = [
                        {"object": "embedding", "index": i, "embedding": fake_embedding(text)}
                        for i, text in enumerate(body["input"])
                    ]
                    if server.drop_one_embedding:
                        data.pop()
                    # Out of order on purpose: clients must place rows by "index".
                    payload = {
                        "object": "list",
                        "data": data[::-1],
                        "model": body["model"],
                        "usage": {"prompt_tokens": 0, "total_tokens": 0},
                    }
                else:
                    # Real error messages can quote the key; the client must not pass it on.
                    auth = self.headers.get("Authorization", "")
                    payload = {"error": {"message": f"failure for {auth}", "type": "server_error"}}
                encoded = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(encoded)))
                self.end_headers()
                self.wfile.write(encoded)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FakeEmbeddingsServer]:
    fake = FakeEmbeddingsServer()
    yield fake
    fake.close()


@pytest.fixture
def sleeps(monkeypatch) -> List[float]:
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    return []


def make_encoder(base_url: str, sleeps: List[float], **kwargs) -> OpenAIEncoder:
    return OpenAIEncoder(base_url=base_url, encoding=BYTES_ENCODING, sleep=sleeps.append, **kwargs)


def test_packs_requests_under_the_token_limit(server, sleeps):
    texts = [chr(ord("a") + i) * 3000 for i in range(5)] + ["z" * 10000, "short"]
    embeddings = make_encoder(server.base_url, sleeps).encode(texts)

    sent = [text for request in server.requests for text in request["input"]]
    expected = texts[:5] + ["z" * 8192, "short"]
    assert sent == expected  # each text once, in order, the long one truncated
    assert all(sum(len(t) for t in request["input"]) <= 8192 for request in server.requests)
    assert [len(request["input"]) for request in server.requests] == [2, 2, 1, 1, 1]
    assert all(request["model"] == "text-embedding-3-large" for request in server.requests)
    assert all(request["dimensions"] == 768 for request in server.requests)
    assert torch.equal(embeddings, torch.tensor([fake_embedding(t) for t in expected]))
    assert sleeps == []


def test_packs_at_most_max_inputs_per_request(server, sleeps):
    texts = [f"item {i}" for i in range(7)]
    embeddings = make_encoder(server.base_url, sleeps, max_inputs_per_request=3).encode(texts)
    assert [request["input"] for request in server.requests] == [texts[:3], texts[3:6], texts[6:]]
    assert embeddings.shape == (7, 768)


def test_truncation_never_grows_past_the_limit_on_a_split_character(server, sleeps):
    encoder = make_encoder(server.base_url, sleeps)
    # Cutting at 8192 bytes splits "é"; the U+FFFD it decodes to is 3 bytes, so drop it.
    assert encoder._truncate("a" * 8191 + "é") == ("a" * 8191, 8191)


def test_retries_a_rate_limit(server, sleeps):
    server.statuses = [429]
    embeddings = make_encoder(server.base_url, sleeps).encode(["hello", "world!"])
    assert len(server.requests) == 2 and sleeps == [1.0]
    expected = torch.tensor([fake_embedding("hello"), fake_embedding("world!")])
    assert torch.equal(embeddings, expected)


def test_persistent_server_error_fails_loudly_without_leaking_the_key(
    server, sleeps, capsys, caplog
):
    caplog.set_level(logging.DEBUG)
    server.statuses = [200] + [500] * 6
    encoder = make_encoder(server.base_url, sleeps, max_inputs_per_request=1)
    with pytest.raises(TextEncodingError, match="500") as info:
        encoder.encode(["first", "second", "third"])
    message = str(info.value)
    assert "1 of 3 texts" in message
    assert sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert len(server.requests) == 7  # the third text is never sent
    captured = capsys.readouterr()
    for text in (message, captured.out, captured.err, caplog.text, repr(encoder.metadata)):
        assert "SECRET123" not in text


def test_response_missing_an_embedding_is_an_error(server, sleeps):
    server.drop_one_embedding = True
    with pytest.raises(TextEncodingError, match="one 768-d embedding per input.*0 of 2 texts"):
        make_encoder(server.base_url, sleeps).encode(["hello", "world"])


@pytest.mark.parametrize(
    "content_type, body, problem",
    [
        ("text/html", b"<html>\n<body>Sign in</body></html>", "(text/html) with a body that is not JSON: '<html> <body>Sign in</body></html>'"),
        ("application/json", b"{not json", "(application/json) with a body that is not JSON: '{not json'"),
        ("application/json", b'{"object": "list", "model": "m"}', "(application/json) with JSON that holds no 'data' list (it holds: object, model)"),
        ("application/json", b"[1, 2]", "with JSON that holds no 'data' list (it holds: list)"),
    ],
)
def test_an_endpoint_answering_something_else_is_one_line_naming_it(server, sleeps, content_type, body, problem):
    server.raw_answer = (content_type, body)
    with pytest.raises(TextEncodingError) as info:
        make_encoder(server.base_url, sleeps).encode(["hello"])
    message = str(info.value)
    assert message.startswith(f"{server.base_url}/embeddings answered status 200 ")
    assert problem in message and message.endswith("0 of 1 texts had been embedded before it.")
    assert "\n" not in message and sleeps == []


def test_an_html_error_page_names_the_endpoint_and_status(server, sleeps):
    server.raw_answer = ("text/html", b"<html>Bad gateway</html>")
    server.statuses = [502] * 6
    with pytest.raises(TextEncodingError) as info:
        make_encoder(server.base_url, sleeps).encode(["hello"])
    assert f"request to {server.base_url}/embeddings failed 6 times (last: 502" in str(info.value)


def test_unknown_encoder_names_are_refused_without_loading_anything():
    for name in ("minilm", "openai", "blair", "blair-large", "gre-small", "gre-large", "hf:/models/gre"):
        check_text_encoder_name(name)
    choices = "minilm, minilm-static, blair, blair-large, gre-small, gre-base, gre-large, openai, hf:<name-or-path>"
    for name in ("minilml", "hf:", "BLaIR"):
        with pytest.raises(TextEncodingError, match=f"Unknown text encoder '{name}'; choose {choices}"):
            check_text_encoder_name(name)


def test_connection_errors_are_retried_then_reported(sleeps):
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    encoder = make_encoder(f"http://127.0.0.1:{port}/v1", sleeps, max_attempts=3)
    with pytest.raises(TextEncodingError, match="APIConnectionError.*0 of 1 texts"):
        encoder.encode(["hello"])
    assert sleeps == [1.0, 2.0]


def test_factory_builds_openai_encoder(server, sleeps, monkeypatch):
    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda model: BYTES_ENCODING)
    encoder = get_text_encoder("openai", openai_base_url=server.base_url)
    assert encoder.dim == 768 and encoder.cache_key.startswith("openai|text-embedding-3-large")
    assert encoder.encode(["hi"]).shape == (1, 768)


def test_missing_api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TextEncodingError, match="OPENAI_API_KEY"):
        OpenAIEncoder(encoding=BYTES_ENCODING)


def test_missing_bpe_file_is_explained(sleeps, monkeypatch):
    def offline(model):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, "encoding_for_model", offline)
    with pytest.raises(TextEncodingError, match="TIKTOKEN_CACHE_DIR"):
        OpenAIEncoder()
