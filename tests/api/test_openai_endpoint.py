"""The OpenAI-compatible endpoint through the official `openai` SDK, unchanged."""

from __future__ import annotations

import openai
import pytest
from openai import AsyncOpenAI

from tests.servers.openai_compat import Fail, Reply


def sdk(api_app, user: str = "alice", **kwargs) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{api_app.url}/api/v1/openai", api_key=api_app.tokens[user], max_retries=0, **kwargs)


async def test_sdk_streams_and_the_conversation_is_stored(api_app, llm):
    llm.script(Reply("Streamed through the SDK", chunks=["Streamed ", "through ", "the SDK"]))
    client = sdk(api_app)
    raw = await client.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "sdk stream"}], stream=True,
        stream_options={"include_usage": True})
    conversation_id = raw.headers["x-conversation-id"]
    stream = raw.parse()
    pieces, usage, finish = [], None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert "".join(pieces) == "Streamed through the SDK"
    assert finish == "stop" and usage is not None and usage.total_tokens > 0
    async with api_app.client("alice") as http:
        messages = (await http.get(f"/conversations/{conversation_id}/messages")).json()["data"]
    assert [(m["role"], m["text"]) for m in messages] == [("user", "sdk stream"), ("assistant", "Streamed through the SDK")]
    await client.close()


async def test_sdk_whole_answer_continues_a_named_conversation(api_app, llm):
    client = sdk(api_app)
    first = await client.chat.completions.with_raw_response.create(
        model="test-model", messages=[{"role": "user", "content": "the password is swordfish"}])
    conversation_id = first.headers["x-conversation-id"]
    completion = first.parse()
    assert completion.choices[0].message.content.startswith("Echo: the password is swordfish")
    assert completion.usage.completion_tokens > 0
    llm.reset()
    # Only the new message, with the conversation named in a header: the stored history is used.
    second = await client.chat.completions.create(
        model="test-model-2", messages=[{"role": "user", "content": "what is the password?"}], temperature=0.2,
        max_tokens=40, extra_headers={"X-Conversation-Id": conversation_id})
    sent = llm.chat_requests()[-1]
    assert sent["model"] == "test-model-2" and sent["temperature"] == 0.2 and sent["max_tokens"] == 40
    assert [m["content"] for m in sent["messages"][1:]] == [
        "the password is swordfish", completion.choices[0].message.content, "what is the password?"]
    assert second.choices[0].message.role == "assistant"
    # The client's own history and system message (OpenAI style) take the place of the stored ones.
    llm.reset()
    await client.chat.completions.create(model="test-model", messages=[
        {"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "arr"}, {"role": "user", "content": "bye"}],
        extra_body={"conversation_id": conversation_id})
    sent = llm.chat_requests()[-1]["messages"]
    assert sent[0] == {"role": "system", "content": "You are a pirate."}
    assert [m["content"] for m in sent[1:]] == ["hi", "arr", "bye"]
    async with api_app.client("alice") as http:
        texts = [m["text"] for m in (await http.get(f"/conversations/{conversation_id}/messages")).json()["data"]
                 if m["role"] == "user"]
    assert texts == ["the password is swordfish", "what is the password?", "bye"]
    await client.close()


async def test_sdk_errors_and_models(api_app, llm):
    client = sdk(api_app)
    models = await client.models.list()
    assert [m.id for m in models.data] == ["test-model", "test-model-2"]
    with pytest.raises(openai.UnprocessableEntityError):
        await client.chat.completions.create(model="unknown-model", messages=[{"role": "user", "content": "x"}])
    llm.script(Fail(500))
    with pytest.raises(openai.APIStatusError) as info:
        await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 503
    llm.script(Fail(500))
    stream = await client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}],
                                                  stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    await client.close()
    bad = AsyncOpenAI(base_url=f"{api_app.url}/api/v1/openai", api_key="clp_nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await bad.models.list()
    await bad.close()
