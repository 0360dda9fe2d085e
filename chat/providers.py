"""LLM providers behind one small async interface.

- `OpenAIProvider`: the `openai` async SDK against any OpenAI-compatible endpoint.
- `LangChainProvider`: a langchain chat model (`langchain_openai.ChatOpenAI` pointed at the
  same endpoint), for operators who build on langchain.
- `OfflineProvider`: no network; a labelled local reply, so the app works out of the box.

SDKs are imported when a provider is built, never at module import. Every SDK error is
translated once, here, into `LLMError`, whose `kind` and `user_message` the chat shows.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import SecretStr

from .config import ChatConfig
from .history import estimate_tokens


@dataclass
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    estimated: bool = False  # True when counted locally rather than reported by the provider


@dataclass
class ChatRequest:
    messages: list[dict[str, str]]
    model: str
    temperature: float
    max_tokens: int | None = None  # None: no limit


@dataclass
class Chunk:
    """One piece of a streamed answer: text, and/or the usage/model reported at the end."""

    text: str = ""
    usage: Usage | None = None
    model: str | None = None
    finish_reason: str | None = None


@dataclass
class Completion:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)


class LLMError(Exception):
    """A failed model call, classified so the UI can say what happened."""

    KINDS = ("timeout", "rate_limit", "server", "auth", "not_found", "connection", "bad_request", "unknown")

    def __init__(self, kind: str, detail: str, *, status: int | None = None, provider: str = ""):
        assert kind in self.KINDS, kind
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status
        self.provider = provider

    @property
    def user_message(self) -> str:
        status = f" (HTTP {self.status})" if self.status else ""
        return {
            "timeout": "The model did not answer in time. Please try again.",
            "rate_limit": f"The model provider is rate-limiting requests{status}. Wait a moment and try again.",
            "server": f"The model provider had an internal error{status}. Please try again later.",
            "auth": f"The model provider rejected the credentials{status}. Ask the operator to check OPENAI_API_KEY.",
            "not_found": f"The model provider does not know this model{status}. Pick another model in the settings.",
            "connection": "Could not reach the model provider. Ask the operator to check OPENAI_BASE_URL.",
            "bad_request": f"The model provider refused the request{status}: {self.detail}",
            "unknown": f"The model call failed: {self.detail}",
        }[self.kind]


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    return getattr(exc, "message", None) or str(exc) or type(exc).__name__


def translate_error(exc: BaseException, provider: str) -> LLMError:
    """Map an `openai` SDK (or asyncio) exception onto an `LLMError`."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return LLMError("timeout", "timed out", provider=provider)
    try:
        import openai
    except ImportError:  # pragma: no cover - the offline provider never raises SDK errors
        openai = None  # type: ignore[assignment]
    if openai is not None:
        if isinstance(exc, openai.APITimeoutError):
            return LLMError("timeout", "request timed out", provider=provider)
        if isinstance(exc, openai.APIConnectionError):
            return LLMError("connection", str(exc) or "connection error", provider=provider)
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            detail = _status_message(exc)
            if status == 429:
                kind = "rate_limit"
            elif status in (401, 403):
                kind = "auth"
            elif status == 404:
                kind = "not_found"
            elif status >= 500:
                kind = "server"
            elif 400 <= status < 500:
                kind = "bad_request"
            else:
                kind = "unknown"
            return LLMError(kind, detail, status=status, provider=provider)
        if isinstance(exc, openai.OpenAIError):
            return LLMError("unknown", str(exc), provider=provider)
    return LLMError("unknown", f"{type(exc).__name__}: {exc}", provider=provider)


class Provider(ABC):
    """An LLM backend. `stream` yields text chunks, then (usually) one chunk with usage."""

    name: str = "provider"
    offline: bool = False

    def __init__(self, config: ChatConfig):
        self.config = config

    @property
    def label(self) -> str:
        """How the UI names this provider."""
        return self.name

    @abstractmethod
    def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Stream the answer. Raises `LLMError` on failure (possibly after some chunks)."""

    async def complete(self, request: ChatRequest) -> Completion:
        """A whole answer (used for titles). The default collects `stream`."""
        parts: list[str] = []
        usage = Usage()
        model = request.model
        async for chunk in self.stream(request):
            parts.append(chunk.text)
            usage = chunk.usage or usage
            model = chunk.model or model
        return Completion(text="".join(parts), model=model, usage=usage)

    async def aclose(self) -> None:  # noqa: B027  (a default: providers without resources keep it)
        """Release network resources."""


class OpenAIProvider(Provider):
    name = "openai"

    def __init__(self, config: ChatConfig):
        super().__init__(config)
        from openai import AsyncOpenAI

        self.client = AsyncOpenAI(
            # OpenAI-compatible local servers (Ollama, vLLM) ignore the key but the SDK
            # requires one; a placeholder is sent only when a base URL is configured.
            api_key=config.api_key or ("not-needed" if config.base_url else None),
            base_url=config.base_url,
            timeout=config.timeout_seconds,
            max_retries=config.max_retries,
        )

    @property
    def label(self) -> str:
        return f"openai ({self.config.base_url or 'api.openai.com'})"

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model,
            "messages": request.messages,
            "temperature": request.temperature,
        }
        if request.max_tokens:
            params["max_tokens"] = request.max_tokens
        return params

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        try:
            response = await self.client.chat.completions.create(
                **self._params(request), stream=True, stream_options={"include_usage": True}
            )
            async with response:
                async for event in response:
                    usage = None
                    if event.usage is not None:
                        usage = Usage(
                            prompt_tokens=event.usage.prompt_tokens,
                            completion_tokens=event.usage.completion_tokens,
                            total_tokens=event.usage.total_tokens,
                        )
                    text = ""
                    finish = None
                    if event.choices:
                        choice = event.choices[0]
                        text = (choice.delta.content or "") if choice.delta else ""
                        finish = choice.finish_reason
                    if text or usage or finish:
                        yield Chunk(text=text, usage=usage, model=event.model or None, finish_reason=finish)
        except LLMError:
            raise
        except Exception as exc:  # translated once, at the SDK boundary
            raise translate_error(exc, self.name) from exc

    async def complete(self, request: ChatRequest) -> Completion:
        try:
            response = await self.client.chat.completions.create(**self._params(request))
        except Exception as exc:
            raise translate_error(exc, self.name) from exc
        text = (response.choices[0].message.content or "") if response.choices else ""
        usage = Usage()
        if response.usage is not None:
            usage = Usage(
                prompt_tokens=response.usage.prompt_tokens,
                completion_tokens=response.usage.completion_tokens,
                total_tokens=response.usage.total_tokens,
            )
        return Completion(text=text, model=response.model or request.model, usage=usage)

    async def aclose(self) -> None:
        await self.client.close()


class LangChainProvider(Provider):
    """A langchain chat model; `ChatOpenAI` on the configured endpoint unless one is given."""

    name = "langchain"

    def __init__(self, config: ChatConfig, chat_model_factory=None):
        super().__init__(config)
        from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

        self._message_types = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
        self._factory = chat_model_factory or self._chat_openai

    def _chat_openai(self, request: ChatRequest):
        from langchain_openai import ChatOpenAI

        key = self.config.api_key or ("not-needed" if self.config.base_url else None)
        # `max_tokens` is a field alias that the type stubs do not see.
        return ChatOpenAI(  # type: ignore[call-arg,unused-ignore]
            model=request.model,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            api_key=SecretStr(key) if key is not None else None,
            base_url=self.config.base_url,
            timeout=self.config.timeout_seconds,
            max_retries=self.config.max_retries,
            stream_usage=True,
        )

    @property
    def label(self) -> str:
        return f"langchain ({self.config.base_url or 'api.openai.com'})"

    def _messages(self, request: ChatRequest) -> list:
        return [self._message_types[m["role"]](content=m["content"]) for m in request.messages]

    @staticmethod
    def _usage(metadata: Any) -> Usage | None:
        if not metadata:
            return None
        return Usage(
            prompt_tokens=metadata.get("input_tokens"),
            completion_tokens=metadata.get("output_tokens"),
            total_tokens=metadata.get("total_tokens"),
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        model = self._factory(request)
        try:
            async for piece in model.astream(self._messages(request)):
                text = piece.content if isinstance(piece.content, str) else "".join(
                    part.get("text", "") for part in piece.content if isinstance(part, dict)
                )
                meta = getattr(piece, "response_metadata", None) or {}
                usage = self._usage(getattr(piece, "usage_metadata", None))
                finish = meta.get("finish_reason")
                if text or usage or finish:
                    yield Chunk(text=text, usage=usage, model=meta.get("model_name"), finish_reason=finish)
        except LLMError:
            raise
        except Exception as exc:
            raise translate_error(exc, self.name) from exc

    async def complete(self, request: ChatRequest) -> Completion:
        model = self._factory(request)
        try:
            message = await model.ainvoke(self._messages(request))
        except Exception as exc:
            raise translate_error(exc, self.name) from exc
        meta = getattr(message, "response_metadata", None) or {}
        return Completion(
            text=message.content if isinstance(message.content, str) else str(message.content),
            model=meta.get("model_name") or request.model,
            usage=self._usage(getattr(message, "usage_metadata", None)) or Usage(),
        )


class OfflineProvider(Provider):
    """Answers locally, without a model, and says so. Used when no endpoint is configured."""

    name = "offline"
    offline = True

    def __init__(self, config: ChatConfig, delay_seconds: float = 0.02):
        super().__init__(config)
        self.delay_seconds = delay_seconds

    @property
    def label(self) -> str:
        return "offline (no LLM configured)"

    def reply_for(self, request: ChatRequest) -> str:
        users = [m["content"] for m in request.messages if m["role"] == "user"]
        last = users[-1] if users else ""
        quoted = "\n".join(f"> {line}" for line in last[:500].splitlines()) or "> (empty message)"
        earlier = len([m for m in request.messages if m["role"] != "system"]) - 1
        return (
            "**Offline mode** - no language model is configured, so this answer is produced "
            "locally. Set `OPENAI_API_KEY` (and `OPENAI_BASE_URL` for a compatible server) "
            "to chat with a real model.\n\n"
            f"You wrote:\n{quoted}\n\n"
            f"Earlier messages I was given from this conversation: {max(earlier, 0)}."
        )

    async def stream(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        text = self.reply_for(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            await asyncio.sleep(self.delay_seconds)
            yield Chunk(text=word if i == 0 else " " + word)
        prompt_tokens = sum(estimate_tokens(m["content"]) for m in request.messages)
        completion_tokens = estimate_tokens(text)
        yield Chunk(
            usage=Usage(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens, estimated=True),
            model=request.model,
            finish_reason="stop",
        )


def build_provider(config: ChatConfig) -> Provider:
    if config.provider == "openai":
        return OpenAIProvider(config)
    if config.provider == "langchain":
        return LangChainProvider(config)
    return OfflineProvider(config)


class Stopwatch:
    """Latency and time-to-first-token of one call, in seconds."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.first_token: float | None = None

    def mark_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter() - self.started

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started
