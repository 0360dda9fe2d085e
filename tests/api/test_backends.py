"""The API on the other databases (MariaDB, DynamoDB on moto) and the other model providers
(langchain, offline): a token from the CLI, a conversation started, continued with its
history, listed, read and deleted. SQLite and PostgreSQL run every other API test."""

from __future__ import annotations

import uuid

import pytest

from tests.api.conftest import ApiApp, launch
from tests.datalayers.test_dynamodb_contract import atomic_moto_dynamodb, dynamodb_url  # noqa: F401  (fixture)


async def conversation_round_trip(app: ApiApp, *, model_sees_history: bool = True) -> None:
    async with app.client("alice") as http:
        first = await http.post("/chat", json={"query": "the colour is teal", "stream": False})
        assert first.status_code == 200, first.text
        cid = first.json()["conversation_id"]
        async with http.stream("POST", "/chat", json={"query": "which colour?", "conversation_id": cid}) as response:
            assert response.status_code == 200
            body = "".join([line async for line in response.aiter_lines()])
        assert "event: done" in body, body
        if model_sees_history:
            sent = app.llm.chat_requests(stream=True)[-1]["messages"]  # not the title, made meanwhile
            assert [m["content"] for m in sent[1:]] == ["the colour is teal", first.json()["text"], "which colour?"]
        messages = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
        assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
        assert [c["id"] for c in (await http.get("/conversations")).json()["data"]][0] == cid
    async with app.client("bob") as bob:
        assert (await bob.get(f"/conversations/{cid}")).status_code == 404
    async with app.client("alice") as http:
        assert (await http.delete(f"/conversations/{cid}")).status_code == 204
        assert (await http.get(f"/conversations/{cid}")).status_code == 404


@pytest.fixture
def app_on(request, tmp_path):
    started: list[ApiApp] = []

    def start(backend: str, **env: str) -> ApiApp:
        if backend == "mariadb":
            url = request.getfixturevalue("mysql_databases").create()
        elif backend == "dynamodb":
            endpoint = request.getfixturevalue("moto_endpoint")
            request.getfixturevalue("atomic_moto_dynamodb")
            url = dynamodb_url(endpoint, f"api-{uuid.uuid4().hex[:8]}")
        else:
            url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'chainlit.db'}"
        app = launch(request, tmp_path, backend, url, **env)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


@pytest.mark.parametrize("backend", ["mariadb", "dynamodb"])
async def test_api_on_every_database(app_on, backend):
    await conversation_round_trip(app_on(backend))


async def test_api_with_the_langchain_provider(app_on):
    await conversation_round_trip(app_on("sqlite", LLM_PROVIDER="langchain"))


async def test_api_with_the_offline_provider(app_on):
    app = app_on("sqlite", LLM_PROVIDER="offline", OPENAI_BASE_URL="", OPENAI_API_KEY="")
    await conversation_round_trip(app, model_sees_history=False)
    assert app.llm.chat_requests() == []  # offline: the test model server was never called


async def test_api_conversation_gets_the_models_title(app_on):
    import asyncio

    from tests.servers.openai_compat import Reply

    app = app_on("sqlite", LLM_GENERATE_TITLES="true")
    app.llm.script(Reply("Dogs are loyal."), Reply("Loyal dogs"))
    async with app.client("alice") as http:
        answer = await http.post("/chat", json={"query": "tell me about dogs", "stream": False})
        cid = answer.json()["conversation_id"]
        for _ in range(100):  # the title is made in the background, after the answer
            name = (await http.get(f"/conversations/{cid}")).json()["name"]
            if name != "tell me about dogs":
                break
            await asyncio.sleep(0.1)
        assert name == "Loyal dogs"
