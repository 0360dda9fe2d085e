"""The REST resources against the real app: conversations, messages, files, ratings, the
error shapes — and isolation: bob's token sees and changes nothing of alice's."""

from __future__ import annotations

import uuid

from tests.storage.switchable import WRITE_SWITCH

PROBLEM = "application/problem+json"
#: Its writes can be switched off from here (a store that is down).
APP_ENV = {"STORAGE_CLASS": "tests.storage.switchable:SwitchableLocalStorage"}


async def chat(http, query: str, **fields) -> dict:
    response = await http.post("/chat", json={"query": query, "stream": False, **fields})
    assert response.status_code == 200, response.text
    return response.json()


async def test_conversation_lifecycle(api_app, llm):
    async with api_app.client("alice") as http:
        created = await http.post("/conversations", json={"name": "Planning", "settings": {"temperature": 0.3}})
        assert created.status_code == 201, created.text
        conversation = created.json()
        assert conversation["name"] == "Planning"
        assert conversation["settings"]["temperature"] == 0.3
        assert created.headers["location"].endswith(conversation["id"])
        cid = conversation["id"]

        got = (await http.get(f"/conversations/{cid}")).json()
        assert got["id"] == cid and got["settings"]["temperature"] == 0.3

        changed = await http.patch(f"/conversations/{cid}", json={"name": "Plans", "settings": {"model": "test-model-2"}})
        assert changed.status_code == 200, changed.text
        assert changed.json()["name"] == "Plans"
        assert changed.json()["settings"] == {**got["settings"], "model": "test-model-2"}

        answer = await chat(http, "first question", conversation_id=cid)
        assert llm.chat_requests()[-1]["model"] == "test-model-2"  # the stored setting is used
        assert llm.chat_requests()[-1]["temperature"] == 0.3
        messages = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
        assert [(m["role"], m["text"]) for m in messages] == [("user", "first question"), ("assistant", answer["text"])]
        assert messages[1]["id"] == answer["message_id"]
        assert messages[1]["model"] == "test-model-2" and messages[1]["status"] == "success"
        assert messages[1]["usage"]["completion_tokens"] == answer["usage"]["completion_tokens"] > 0

        listed = (await http.get("/conversations", params={"limit": 50})).json()["data"]
        assert cid in [c["id"] for c in listed]

        deleted = await http.delete(f"/conversations/{cid}")
        assert deleted.status_code == 204
        gone = await http.get(f"/conversations/{cid}")
        assert gone.status_code == 404 and gone.headers["content-type"].startswith(PROBLEM)
        assert (await http.get(f"/conversations/{cid}/messages")).status_code == 404


async def test_keyset_pages_search_and_feedback_filter(api_app, llm):
    marker = uuid.uuid4().hex[:8]
    async with api_app.client("alice") as http:
        ids = []
        for i in range(5):
            ids.append((await chat(http, f"topic {marker} number {i}"))["conversation_id"])
        seen, cursor = [], None
        while True:
            params = {"limit": 2, "search": marker, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/conversations", params=params)).json()
            assert len(page["data"]) <= 2
            seen += [c["id"] for c in page["data"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert seen == list(reversed(ids))  # most recently active first, each once
        # Rate the reply of the second conversation; feedback=1 finds only it.
        messages = (await http.get(f"/conversations/{ids[1]}/messages")).json()["data"]
        rated = await http.put(f"/messages/{messages[1]['id']}/feedback", json={"value": 1, "comment": "good"})
        assert rated.status_code == 200, rated.text
        await api_app.settled()
        up = (await http.get("/conversations", params={"search": marker, "feedback": 1})).json()["data"]
        assert [c["id"] for c in up] == [ids[1]]
        messages = (await http.get(f"/conversations/{ids[1]}/messages")).json()["data"]
        assert messages[1]["feedback"] == {"value": 1, "comment": "good"}
        assert (await http.delete(f"/messages/{messages[1]['id']}/feedback")).status_code == 204
        assert (await http.delete(f"/messages/{messages[1]['id']}/feedback")).status_code == 404
        messages = (await http.get(f"/conversations/{ids[1]}/messages")).json()["data"]
        assert messages[1]["feedback"] is None
        # A forged cursor is a 400, not a 500.
        forged = await http.get("/conversations", params={"cursor": "abc.def"})
        assert forged.status_code == 400 and forged.headers["content-type"].startswith(PROBLEM)


async def test_message_pages(api_app, llm):
    async with api_app.client("alice") as http:
        cid = (await chat(http, "one"))["conversation_id"]
        for text in ("two", "three"):
            await chat(http, text, conversation_id=cid)
        texts, cursor = [], None
        while True:
            page = (await http.get(f"/conversations/{cid}/messages",
                                   params={"limit": 4, **({"cursor": cursor} if cursor else {})})).json()
            texts += [m["text"] for m in page["data"] if m["role"] == "user"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert texts == ["one", "two", "three"]
    # Bob cannot use alice's cursor, even on his own conversation.
    async with api_app.client("alice") as http:
        first = (await http.get(f"/conversations/{cid}/messages", params={"limit": 1})).json()
    async with api_app.client("bob") as http:
        own = (await chat(http, "bob's"))["conversation_id"]
        refused = await http.get(f"/conversations/{own}/messages", params={"cursor": first["next_cursor"]})
        assert refused.status_code == 400


async def test_files_reach_the_model_and_are_stored(api_app, llm):
    async with api_app.client("alice") as http:
        cid = (await chat(http, "hello"))["conversation_id"]
        upload = await http.post(f"/conversations/{cid}/files",
                                 files={"file": ("notes.txt", b"the secret word is marmalade", "text/plain")})
        assert upload.status_code == 201, upload.text
        file_id = upload.json()["id"]
        assert upload.json()["size"] == len(b"the secret word is marmalade")
        await chat(http, "what is the secret word?", conversation_id=cid, file_ids=[file_id])
        sent = llm.chat_requests()[-1]["messages"][-1]["content"]
        assert "marmalade" in sent and "notes.txt" in sent
        messages = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
        attachment = messages[2]["attachments"][0]
        assert attachment["name"] == "notes.txt" and attachment["url"]
        # The link works (signed, served by the app's storage route) ...
        async with api_app.client(None) as anonymous:
            url = attachment["url"] if attachment["url"].startswith("http") else f"{api_app.url}{attachment['url']}"
            blob = await anonymous.get(url)
            assert blob.status_code == 200 and blob.content == b"the secret word is marmalade"
        # ... and a used file id cannot be used again.
        again = await http.post("/chat", json={"query": "again", "conversation_id": cid, "file_ids": [file_id],
                                               "stream": False})
        assert again.status_code == 404
    async with api_app.client("bob") as http:
        other = (await chat(http, "bob here"))["conversation_id"]
        refused = await http.post(f"/conversations/{cid}/files", files={"file": ("x.txt", b"x", "text/plain")})
        assert refused.status_code == 404
        assert (await http.post(f"/conversations/{other}/files", files={"file": ("y.txt", b"y")})).status_code == 201


async def test_a_file_the_store_cannot_take_refuses_the_whole_message_and_a_retry_works(api_app, llm):
    """Nothing half-stored: not the message without its file, not the other file; the files
    stay uploaded and the same call succeeds once the store is back. In a conversation with
    messages and in one just created, still empty."""
    switch = api_app.running.tmp / "files" / WRITE_SWITCH
    mark = len(api_app.log_text())
    async with api_app.client("alice") as http:
        for existing in (True, False):
            if existing:
                cid = (await chat(http, "before"))["conversation_id"]
            else:
                cid = (await http.post("/conversations", json={})).json()["id"]
            ids = []
            for name in ("a.txt", "b.txt"):
                upload = await http.post(f"/conversations/{cid}/files", files={"file": (name, name.encode(), "text/plain")})
                assert upload.status_code == 201, upload.text
                ids.append(upload.json()["id"])
            calls = llm.chat_requests()
            switch.touch()
            try:
                for stream in (False, True):
                    refused = await http.post("/chat", json={"query": "with files", "conversation_id": cid,
                                                             "file_ids": ids, "stream": stream})
                    if stream:
                        assert refused.status_code == 200 and "event: error" in refused.text
                        assert '"status": 503' in refused.text and "nothing of this message was saved" in refused.text
                    else:
                        assert refused.status_code == 503, refused.text
                        assert refused.headers["content-type"].startswith(PROBLEM)
                        assert "'a.txt' could not be stored" in refused.json()["detail"]
                        assert int(refused.headers["retry-after"]) > 0
            finally:
                switch.unlink()
            assert llm.chat_requests() == calls  # the model was not asked
            await api_app.settled()
            stored = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
            assert [m["text"] for m in stored] == (["before", stored[-1]["text"]] if existing else [])
            answer = await chat(http, "with files", conversation_id=cid, file_ids=ids)
            assert answer["conversation_id"] == cid
            messages = (await http.get(f"/conversations/{cid}/messages")).json()["data"]
            mine = [m for m in messages if m["text"] == "with files"]
            assert len(mine) == 1 and sorted(a["name"] for a in mine[0]["attachments"]) == ["a.txt", "b.txt"]
    log = api_app.log_text()[mark:]
    assert "attachment 'a.txt'" in log and "was not saved" in log and "Traceback" not in log


async def test_another_users_token_sees_and_changes_nothing(api_app, llm):
    async with api_app.client("alice") as alice:
        answer = await chat(alice, "alice's private plan")
        cid, mid = answer["conversation_id"], answer["message_id"]
    async with api_app.client("bob") as bob:
        listed = (await bob.get("/conversations", params={"search": "private plan"})).json()["data"]
        assert listed == []
        missing = f"/conversations/{uuid.uuid4()}"
        for method, path, body in [
            ("GET", f"/conversations/{cid}", None), ("PATCH", f"/conversations/{cid}", {"name": "pwned"}),
            ("DELETE", f"/conversations/{cid}", None), ("GET", f"/conversations/{cid}/messages", None),
            ("PUT", f"/messages/{mid}/feedback", {"value": 0}), ("DELETE", f"/messages/{mid}/feedback", None),
        ]:
            response = await bob.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            # Exactly what a missing conversation gets: existence never leaks.
            twin = await bob.request(method, path.replace(f"/conversations/{cid}", missing), json=body)
            if "/conversations/" in path:
                assert twin.status_code == 404 and twin.json()["detail"] == response.json()["detail"]
        continued = await bob.post("/chat", json={"query": "continue it", "conversation_id": cid, "stream": False})
        assert continued.status_code == 404
    await api_app.settled()
    async with api_app.client("alice") as alice:
        conversation = (await alice.get(f"/conversations/{cid}")).json()
        assert conversation["name"] == "alice's private plan"
        messages = (await alice.get(f"/conversations/{cid}/messages")).json()["data"]
        assert [m["text"] for m in messages if m["role"] == "user"] == ["alice's private plan"]
        assert messages[1]["feedback"] is None


async def test_errors_are_problems_with_the_right_status(api_app, llm):
    async with api_app.client(None) as anonymous:
        response = await anonymous.get("/conversations")
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["content-type"].startswith(PROBLEM)
    async with api_app.client(None, token="clp_" + "0" * 32 + "_forged") as forged:
        assert (await forged.get("/conversations")).status_code == 401
    async with api_app.client("alice") as http:
        bad = await http.post("/chat", json={"query": "", "temperature": 7, "unknown": 1})
        assert bad.status_code == 422
        fields = {tuple(e["loc"][-1:]) for e in bad.json()["errors"]}
        assert {("query",), ("temperature",), ("unknown",)} <= fields
        unknown_model = await http.post("/chat", json={"query": "hi", "model_name": "gpt-nope", "stream": False})
        assert unknown_model.status_code == 422 and "test-model" in unknown_model.json()["detail"]
        unknown_prompt = await http.patch("/conversations/x", json={"settings": {"prompt": "nope"}})
        assert unknown_prompt.status_code == 404  # the conversation is checked first
        huge = await http.post("/chat", content=b'{"query": "' + b"x" * (3 * 1024 * 1024) + b'"}',
                               headers={"Content-Type": "application/json"})
        assert huge.status_code == 413 and huge.headers["content-type"].startswith(PROBLEM)
        # The browser's limit on one message (APP_MAX_MESSAGE_BYTES, 1 MiB) holds here too.
        too_long = await http.post("/chat", json={"query": "y" * (1024 * 1024 + 1), "stream": False})
        assert too_long.status_code == 413 and "1048576" in too_long.json()["detail"]
        nul = await http.get("/conversations/%00")
        assert nul.status_code == 404
    assert "Traceback" not in api_app.log_text()
