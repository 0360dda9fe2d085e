"""The providers against a real HTTP server speaking the OpenAI API, through the real SDKs."""

from __future__ import annotations

import time

import pytest

from chat.config import load_chat_config
from chat.providers import (
    ChatRequest,
    LangChainProvider,
    LLMError,
    OfflineProvider,
    OpenAIProvider,
    build_provider,
)
from tests.servers.openai_compat import Fail, Reply, Stall, count_tokens

MESSAGES = [
    {"role": "system", "content": "You are a test."},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "second question"},
]

SDK_PROVIDERS = [OpenAIProvider, LangChainProvider]


def request(**overrides) -> ChatRequest:
    values = {"messages": MESSAGES, "model": "test-model", "temperature": 0.3, "max_tokens": None}
    values.update(overrides)
    return ChatRequest(**values)


async def collect(provider, req):
    chunks = []
    async for chunk in provider.stream(req):
        chunks.append(chunk)
    return chunks


@pytest.mark.parametrize("provider_cls", SDK_PROVIDERS)
async def test_streams_token_by_token_with_usage(provider_cls, llm_server, make_config):
    llm_server.script(Reply("Hello there, streaming world", chunks=["Hel", "lo there,", " streaming", " world"]))
    provider = provider_cls(make_config())
    chunks = await collect(provider, request())
    texts = [c.text for c in chunks if c.text]
    assert texts == ["Hel", "lo there,", " streaming", " world"]
    usage = [c.usage for c in chunks if c.usage]
    assert len(usage) == 1
    prompt_tokens = sum(count_tokens(m["content"]) for m in MESSAGES)
    assert (usage[0].prompt_tokens, usage[0].completion_tokens) == (prompt_tokens, 4)
    assert usage[0].total_tokens == prompt_tokens + 4
    assert not usage[0].estimated

    sent = llm_server.chat_requests()[-1]
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["model"] == "test-model"
    assert sent["temperature"] == pytest.approx(0.3)
    assert [m["content"] for m in sent["messages"]] == [m["content"] for m in MESSAGES]
    assert "max_tokens" not in sent and "max_completion_tokens" not in sent  # no limit: not sent
    assert llm_server.headers[-1]["authorization"] == "Bearer sk-test-key"


@pytest.mark.parametrize("provider_cls", SDK_PROVIDERS)
async def test_max_tokens_is_sent_when_positive(provider_cls, llm_server, make_config):
    await collect(provider_cls(make_config()), request(max_tokens=42))
    sent = llm_server.chat_requests()[-1]
    # The openai path sends the widely supported `max_tokens`; langchain-openai sends
    # the newer `max_completion_tokens`. Both mean the same to OpenAI-compatible servers.
    key = "max_tokens" if provider_cls is OpenAIProvider else "max_completion_tokens"
    assert sent[key] == 42


@pytest.mark.parametrize("provider_cls", SDK_PROVIDERS)
async def test_whole_completion(provider_cls, llm_server, make_config):
    llm_server.script(Reply("A short title", model="served-model"))
    completion = await provider_cls(make_config()).complete(request())
    assert completion.text == "A short title"
    assert completion.model == "served-model"
    assert completion.usage.completion_tokens == 3
    assert not llm_server.chat_requests()[-1].get("stream")


@pytest.mark.parametrize("provider_cls", SDK_PROVIDERS)
@pytest.mark.parametrize(
    "status,kind,words",
    [
        (429, "rate_limit", "rate-limiting"),
        (500, "server", "internal error"),
        (503, "server", "internal error"),
        (401, "auth", "OPENAI_API_KEY"),
        (404, "not_found", "model"),
        (400, "bad_request", "context too long"),
    ],
)
async def test_http_errors_are_classified(provider_cls, status, kind, words, llm_server, make_config):
    llm_server.script(Fail(status, message="context too long" if status == 400 else "nope"))
    with pytest.raises(LLMError) as info:
        await collect(provider_cls(make_config()), request())
    err = info.value
    assert err.kind == kind
    assert err.status == status
    assert words in err.user_message
    assert f"HTTP {status}" in err.user_message or status == 400


@pytest.mark.parametrize("provider_cls", SDK_PROVIDERS)
async def test_timeout_before_first_byte(provider_cls, llm_server, make_config):
    llm_server.script(Stall(seconds=3))
    started = time.monotonic()
    with pytest.raises(LLMError) as info:
        await collect(provider_cls(make_config(LLM_TIMEOUT_SECONDS="0.5")), request())
    assert info.value.kind == "timeout"
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("provider_cls", SDK_PROVIDERS)
async def test_timeout_mid_stream_after_partial_answer(provider_cls, llm_server, make_config):
    llm_server.script(Stall(seconds=3, after_chunks=2, text="one two three four"))
    received = []
    with pytest.raises(LLMError) as info:
        async for chunk in provider_cls(make_config(LLM_TIMEOUT_SECONDS="0.5")).stream(request()):
            received.append(chunk.text)
    assert info.value.kind == "timeout"
    assert "".join(received) == "one two"


@pytest.mark.parametrize("provider_cls", SDK_PROVIDERS)
async def test_retries_a_server_error_when_configured(provider_cls, llm_server, make_config):
    llm_server.script(Fail(500, headers={"retry-after-ms": "10"}), Reply("recovered"))
    chunks = await collect(provider_cls(make_config(LLM_MAX_RETRIES="1")), request())
    assert "".join(c.text for c in chunks) == "recovered"
    assert len(llm_server.chat_requests()) == 2


async def test_connection_refused_is_a_connection_error(llm_server, make_config):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAIProvider(make_config(OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1"))
    with pytest.raises(LLMError) as info:
        await collect(provider, request())
    assert info.value.kind == "connection"
    assert "OPENAI_BASE_URL" in info.value.user_message


async def test_offline_provider_is_labelled_and_estimates_usage():
    config = load_chat_config({})
    provider = build_provider(config)
    assert isinstance(provider, OfflineProvider) and provider.offline
    assert "offline" in provider.label
    provider.delay_seconds = 0
    chunks = await collect(provider, request(model=config.model))
    text = "".join(c.text for c in chunks)
    assert text.startswith("**Offline mode**")
    assert "> second question" in text
    assert "Earlier messages I was given from this conversation: 2." in text
    usage = chunks[-1].usage
    assert usage.estimated and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_provider_choice_from_environment(llm_server):
    assert load_chat_config({}).provider == "offline"
    assert load_chat_config({"OPENAI_API_KEY": "k"}).provider == "openai"
    assert load_chat_config({"OPENAI_BASE_URL": llm_server.base_url}).provider == "openai"
    config = load_chat_config({"LLM_PROVIDER": "langchain", "OPENAI_BASE_URL": llm_server.base_url})
    assert isinstance(build_provider(config), LangChainProvider)
