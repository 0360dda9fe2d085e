"""The chat call (seed 004) against the real app: streamed and whole answers, the model
parameters it honours, one conversation across the API and the browser, errors, and a
client that goes away mid-stream."""

from __future__ import annotations

import asyncio
import json

from tests.servers.openai_compat import Fail, Reply, Stall


async def events(response) -> list[tuple[str, dict]]:
    """The server-sent events of a streamed answer, in order."""
    found, event = [], None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            found.append((event, json.loads(line[6:])))
    return found


async def stream_chat(http, **body) -> list[tuple[str, dict]]:
    async with http.stream("POST", "/chat", json={"query": "hi", **body}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return await events(response)


async def test_streamed_answer_events_and_storage(api_app, llm):
    llm.script(Reply("Hello there, streamed reply", chunks=["Hello ", "there, ", "streamed ", "reply"]))
    async with api_app.client("alice") as http:
        found = await stream_chat(http, query="stream please")
        names = [name for name, _ in found]
        assert names[0] == "start" and names[-1] == "done" and names.count("delta") == 4
        start, done = found[0][1], found[-1][1]
        deltas = [data for name, data in found if name == "delta"]
        assert "".join(d["text"] for d in deltas) == "Hello there, streamed reply" == done["text"]
        assert {d["message_id"] for d in deltas} == {done["message_id"]}
        assert {d["conversation_id"] for d in deltas} == {start["conversation_id"]} == {done["conversation_id"]}
        assert done["usage"]["total_tokens"] > 0 and done["finish_reason"] == "stop"
        cid = done["conversation_id"]
        messages = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
        assert [m["id"] for m in messages] == [start["user_message_id"], done["message_id"]]
        assert messages[1]["text"] == "Hello there, streamed reply"
        # The new conversation is in the sidebar, named after its first message, as in the UI.
        listed = (await http.get("/conversations", params={"search": "stream please"})).json()["data"]
        assert [c["id"] for c in listed] == [cid] and listed[0]["name"] == "stream please"


async def test_model_parameters_and_history(api_app, llm):
    async with api_app.client("alice") as http:
        first = await http.post("/chat", json={"query": "one", "stream": False})
        cid = first.json()["conversation_id"]
        for text in ("two", "three"):
            assert (await http.post("/chat", json={"query": text, "conversation_id": cid, "stream": False})).status_code == 200
        llm.reset()
        answer = await http.post("/chat", json={
            "query": "four", "conversation_id": cid, "stream": False, "history_len": 2, "max_tokens": 55,
            "temperature": 1.25, "model_name": "test-model-2", "prompt_name": "translator"})
        assert answer.status_code == 200, answer.text
        sent = llm.chat_requests()[-1]
        assert sent["model"] == "test-model-2" and sent["temperature"] == 1.25 and sent["max_tokens"] == 55
        roles = [m["role"] for m in sent["messages"]]
        assert roles == ["system", "user", "assistant", "user"]  # the last 2 earlier messages only
        assert sent["messages"][1]["content"] == "three"
        assert "translate" in sent["messages"][0]["content"].lower()
        assert "Translate this into English" in sent["messages"][-1]["content"]  # the template's user part
        # An explicit history replaces the stored one for this call.
        llm.reset()
        await http.post("/chat", json={"query": "five", "conversation_id": cid, "stream": False,
                                       "history": [{"role": "user", "content": "imagined"},
                                                   {"role": "assistant", "content": "ok"}]})
        contents = [m["content"] for m in llm.chat_requests()[-1]["messages"][1:]]
        assert contents == ["imagined", "ok", "five"]
        # The per-call settings were not saved as the conversation's.
        assert (await http.get(f"/conversations/{cid}")).json()["settings"]["model"] == "test-model"


async def test_api_conversation_continues_in_the_browser(api_app, llm):
    async with api_app.client("alice") as http:
        answer = (await http.post("/chat", json={"query": "my cat is called Tom", "stream": False})).json()
    await api_app.settled()
    llm.reset()
    async with await api_app.browser("alice") as browser:
        await browser.connect(thread_id=answer["conversation_id"])
        turn = await browser.send("what is my cat called?")
        assert turn.reply_text
    sent = llm.chat_requests()[-1]["messages"]
    assert [m["content"] for m in sent[1:-1]] == ["my cat is called Tom", answer["text"]]


async def test_browser_conversation_continues_over_the_api(api_app, llm):
    async with await api_app.browser("alice") as browser:
        await browser.connect()
        turn = await browser.send("remember the number 42")
        thread_id = browser.thread_id
    await api_app.settled()
    llm.reset()
    async with api_app.client("alice") as http:
        answer = await http.post("/chat", json={"query": "which number?", "conversation_id": thread_id, "stream": False})
        assert answer.status_code == 200, answer.text
        sent = llm.chat_requests()[-1]["messages"]
        assert [m["content"] for m in sent[1:-1]] == ["remember the number 42", turn.reply_text]
        messages = (await http.get(f"/conversations/{thread_id}/messages")).json()["data"]
        assert [m["text"] for m in messages if m["role"] == "user"] == ["remember the number 42", "which number?"]


async def test_model_failure_is_an_error_event_and_a_stored_error(api_app, llm):
    llm.script(Fail(500))
    async with api_app.client("alice") as http:
        found = await stream_chat(http, query="fail please")
        assert [name for name, _ in found] == ["start", "error"]
        error = found[-1][1]
        assert error["status"] == 503 and error["message_id"]
        messages = (await http.get(f"/conversations/{error['conversation_id']}/messages")).json()["data"]
        assert messages[-1]["status"] == "error" and messages[-1]["id"] == error["message_id"]
        llm.script(Fail(503))
        whole = await http.post("/chat", json={"query": "fail again", "stream": False})
        assert whole.status_code == 503 and whole.headers["retry-after"]
        assert whole.json()["message_id"]


async def test_disconnect_mid_stream_keeps_the_partial_answer_marked_stopped(api_app, llm):
    llm.script(Stall(seconds=30, after_chunks=2, text="partial words that never finish"))
    async with api_app.client("alice") as http:
        seen: list[tuple[str, dict]] = []
        async with http.stream("POST", "/chat", json={"query": "long answer please"}) as response:
            event = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    seen.append((event, json.loads(line[6:])))
                    if sum(1 for name, _ in seen if name == "delta") == 2:
                        break  # the client goes away
        cid = seen[0][1]["conversation_id"]
        partial = "".join(data["text"] for name, data in seen if name == "delta")
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            messages = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
            if len(messages) == 2 or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        assert messages[1]["text"] == partial and messages[1]["status"] == "cancelled"


async def test_an_uploaded_long_document_is_cited_in_the_stream_and_the_stored_answer(api_app, llm):
    fact = "The Halvorsen archive keeps the 1931 charter in cabinet 77."
    body = "\n\n".join(f"# Part {n}\n\n" + "Inventory of shelves, boxes and folders for the reading room. " * 40
                       + (fact if n == 8 else "") for n in range(12))
    async with api_app.client("alice") as http:
        created = await http.post("/conversations", json={"name": "Archive"})
        cid = created.json()["id"]
        upload = await http.post(f"/conversations/{cid}/files", files={"file": ("archive.md", body.encode(), "text/markdown")})
        assert upload.status_code == 201, upload.text
        seen = await stream_chat(http, query="Which cabinet holds the 1931 charter?", conversation_id=cid,
                                 file_ids=[upload.json()["id"]])
        streamed = "".join(data["text"] for kind, data in seen if kind == "delta")
        assert "Sources" in streamed and "archive.md, section Part 8" in streamed
        sent = llm.chat_requests(stream=True)[-1]["messages"]
        assert any(fact in m["content"] for m in sent if m["role"] == "system")
        messages = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
        assert "archive.md, section Part 8" in messages[-1]["text"]
    async with api_app.client("bob") as http:  # nothing of alice's document reaches bob's model
        await stream_chat(http, query="Which cabinet holds the 1931 charter? Halvorsen archive cabinet 77")
        sent = llm.chat_requests(stream=True)[-1]["messages"]
        assert not any(fact in m["content"] for m in sent)
