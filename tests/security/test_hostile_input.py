"""Hostile input against every route and socket event of the real app (browser protocol, alice
and bob, SQLite and PostgreSQL): NUL bytes, over-long ids, huge messages, malformed cursors
and payloads.

What must hold: no route answers 5xx and no socket event ends in a traceback; a request
that is wrong gets a 4xx with a message saying why (a socket event: a toast and a WARNING);
text with NUL is stored and found exactly, on every backend; and nothing that was stored
before is lost or changed by any of it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import socketio

from datalayers.paging import MAX_SEARCH_LENGTH
from datalayers.writes import MAX_ID_LENGTH
from tests.faults.chainlit_client import ChainlitClient
from tests.security.conftest import settled

NUL_TEXT = "nul \x00 inside, and \ufdd0 too \\u0000"
LONG_ID = "x" * (MAX_ID_LENGTH + 1)


async def snapshot(app, client: ChainlitClient) -> dict:
    """Everything the user has stored: each thread as the app returns it."""
    async with app.http(client) as http:
        listed = await http.post("/project/threads", json={"pagination": {"first": 200}, "filter": {}})
        assert listed.status_code == 200, listed.text
        threads = {}
        for thread in listed.json()["data"]:
            response = await http.get(f"/project/thread/{thread['id']}")
            assert response.status_code == 200, response.text
            threads[thread["id"]] = response.json()
        return threads


async def search(app, client: ChainlitClient, term: str) -> list[str]:
    async with app.http(client) as http:
        response = await http.post("/project/threads", json={"pagination": {"first": 50}, "filter": {"search": term}})
        assert response.status_code == 200, response.text
        return [t["id"] for t in response.json()["data"]]


def no_tracebacks(app, start: int) -> None:
    log = app.log_text()[start:]
    assert "Traceback" not in log and "Task exception was never retrieved" not in log, log[-4000:]
    assert "refused by the database" not in log, log[-4000:]


async def test_every_route_answers_hostile_input_with_a_4xx_and_loses_nothing(security_app, alice, bob):
    start = len(security_app.log_text())
    await alice.connect()
    turn = await alice.send("a message that must survive")
    thread_id = alice.thread_id
    await bob.connect()
    await bob.send("bob's own")
    async with security_app.http(alice) as http:
        rated = await http.put("/feedback", json={"feedback": {"forId": turn.reply_id, "value": 1},
                                                  "sessionId": alice.session_id})
        assert rated.status_code == 200, rated.text
        first_page = await http.post("/project/threads", json={"pagination": {"first": 1}, "filter": {}})
        alices_cursor = first_page.json()["pageInfo"]["endCursor"]
    await settled(security_app)
    before = await snapshot(security_app, alice)
    bobs_before = await snapshot(security_app, bob)

    page = {"first": 5}
    cases = [
        # (who, method, path, json body, expected status)
        ("alice", "PUT", "/feedback", {"feedback": {"forId": "a\x00b", "value": 1}, "sessionId": "s"}, 400),
        ("alice", "PUT", "/feedback", {"feedback": {"forId": LONG_ID, "value": 1}, "sessionId": "s"}, 400),
        ("alice", "PUT", "/feedback", {"feedback": {"forId": str(uuid.uuid4()), "value": 1}, "sessionId": "s"}, 404),
        ("alice", "PUT", "/feedback", {"feedback": {"forId": turn.reply_id, "value": 1, "id": "a\x00b"},
                                       "sessionId": "s"}, 400),
        ("alice", "PUT", "/feedback", {"feedback": {"forId": turn.reply_id, "value": 7}, "sessionId": "s"}, 422),
        ("alice", "PUT", "/feedback", {"feedback": {"forId": turn.reply_id}, "sessionId": "s"}, 422),
        ("alice", "DELETE", "/feedback", {"feedbackId": "a\x00b"}, 404),
        ("alice", "DELETE", "/feedback", {"feedbackId": LONG_ID}, 404),
        ("alice", "DELETE", "/feedback", {"feedbackId": ""}, 404),
        ("alice", "DELETE", "/feedback", {"feedbackId": str(uuid.uuid4())}, 404),
        ("bob", "DELETE", "/feedback", {"feedbackId": rated.json()["feedbackId"]}, 404),
        ("alice", "POST", "/project/threads", {"pagination": {"first": 0}, "filter": {}}, 400),
        ("alice", "POST", "/project/threads", {"pagination": {"first": -3}, "filter": {}}, 400),
        ("alice", "POST", "/project/threads", {"pagination": {"first": "many"}, "filter": {}}, 422),
        ("alice", "POST", "/project/threads", {"pagination": {**page, "cursor": "garbage"}, "filter": {}}, 400),
        ("alice", "POST", "/project/threads", {"pagination": {**page, "cursor": "é.é\x00"}, "filter": {}}, 400),
        ("alice", "POST", "/project/threads", {"pagination": {**page, "cursor": "A" * 200_000}, "filter": {}}, 400),
        ("alice", "POST", "/project/threads", {"pagination": {**page, "cursor": alices_cursor[:-3] + "abc"},
                                               "filter": {}}, 400),
        ("bob", "POST", "/project/threads", {"pagination": {**page, "cursor": alices_cursor}, "filter": {}}, 400),
        ("alice", "POST", "/project/threads", {"pagination": page,
                                               "filter": {"search": "s" * (MAX_SEARCH_LENGTH + 1)}}, 400),
        ("alice", "POST", "/project/threads", {"pagination": page, "filter": {"feedback": 3}}, 422),
        ("alice", "GET", "/project/thread/a%00b", None, 404),
        ("alice", "GET", f"/project/thread/{LONG_ID}", None, 404),
        ("alice", "GET", "/project/share/a%00b", None, 404),
        ("alice", "GET", f"/project/share/{LONG_ID}", None, 404),
        ("alice", "GET", f"/project/thread/{thread_id}/element/a%00b", None, None),
        ("alice", "GET", f"/project/thread/a%00b/element/{LONG_ID}", None, 404),
        ("alice", "PUT", "/project/thread", {"threadId": "a\x00b", "name": "x"}, 404),
        ("alice", "PUT", "/project/thread", {"threadId": LONG_ID, "name": "x"}, 404),
        ("alice", "PUT", "/project/thread/share", {"threadId": "a\x00b", "isShared": True}, 404),
        ("alice", "DELETE", "/project/thread", {"threadId": "a\x00b"}, 404),
        ("alice", "DELETE", "/project/thread", {"threadId": LONG_ID}, 404),
        ("bob", "DELETE", "/project/thread", {"threadId": thread_id}, None),  # Chainlit: 401, not the author
        ("alice", "PUT", "/project/element", {"sessionId": "a\x00b", "element": {"id": "a\x00b", "type": "custom"}},
         None),
        ("alice", "DELETE", "/project/element", {"sessionId": alice.session_id,
                                                 "element": {"id": LONG_ID, "type": "custom", "name": "n",
                                                             "display": "inline"}}, None),
        ("alice", "POST", "/project/action", {"sessionId": "a\x00b", "action": {"name": "\x00"}}, None),
        ("alice", "GET", "/project/file/a%00b?session_id=a%00b", None, None),
        ("alice", "GET", "/avatars/a%00b", None, None),
        ("alice", "GET", "/blobs/a%00b", None, None),
        ("alice", "GET", "/project/translations?language=%00", None, None),
        ("alice", "GET", "/project/settings?language=a%00b", None, None),
    ]
    clients = {"alice": alice, "bob": bob}
    failures = []
    for who, method, path, body, expected in cases:
        async with security_app.http(clients[who]) as http:
            response = await http.request(method, path, json=body) if body is not None else await http.request(
                method, path)
        status = response.status_code
        if status >= 500 or (expected is not None and status != expected):
            failures.append((who, method, path[:60], repr(body)[:80], expected, status, response.text[:200]))
        elif 400 <= status < 500 and response.headers.get("content-type", "").startswith("application/json"):
            detail = response.json().get("detail")
            if not detail:
                failures.append((who, method, path[:60], "a 4xx without a message", status, response.text[:200]))
    async with security_app.http() as anonymous:
        login = await anonymous.post("/login", data={"username": "a\x00" + "b" * 5000, "password": "\x00"})
        if login.status_code != 401:
            failures.append(("anonymous", "POST", "/login", "NUL and a long name", 401, login.status_code, login.text))
    assert not failures, "\n".join(map(str, failures))

    await settled(security_app)
    assert await snapshot(security_app, alice) == before
    assert await snapshot(security_app, bob) == bobs_before
    no_tracebacks(security_app, start)


async def test_nul_bytes_are_stored_renamed_and_searched_exactly(security_app, alice):
    start = len(security_app.log_text())
    await alice.connect()
    turn = await alice.send(NUL_TEXT)
    with_nul = alice.thread_id
    await alice.close()
    plain = ChainlitClient(alice.base_url, alice.cookies, alice.identifier)
    await plain.connect()
    await plain.send("nothing special here")
    async with security_app.http(alice) as http:
        renamed = await http.put("/project/thread", json={"threadId": plain.thread_id, "name": "name \x00 with NUL"})
        assert renamed.status_code == 200, renamed.text
        rating = await http.put("/feedback", json={"feedback": {"forId": turn.reply_id, "value": 0,
                                                                "comment": "why \x00?"}, "sessionId": "s"})
        assert rating.status_code == 200, rating.text
    await plain.close()
    await settled(security_app)

    threads = await snapshot(security_app, alice)
    stored = threads[with_nul]
    assert [s["output"] for s in stored["steps"] if s["type"] == "user_message"] == [NUL_TEXT]
    reply = next(s for s in stored["steps"] if s["id"] == turn.reply_id)
    assert NUL_TEXT in reply["output"] and reply["feedback"]["comment"] == "why \x00?"
    assert threads[plain.thread_id]["name"] == "name \x00 with NUL"

    assert sorted(await search(security_app, alice, "\x00")) == sorted([with_nul, plain.thread_id])
    assert await search(security_app, alice, "NUL \x00 INSIDE") == [with_nul]
    assert await search(security_app, alice, "e \x00 w") == [plain.thread_id]
    assert await search(security_app, alice, "\x00\x00") == []
    assert await search(security_app, alice, "\ufdd0 too") == [with_nul]
    no_tracebacks(security_app, start)


async def test_a_huge_message_with_nul_bytes_is_stored_whole(security_app, alice):
    # Well under the message size limit (a setting, 1 MiB by default), well over any page.
    text = ("line with a NUL \x00 and words " * 24_000)[:600_000]
    await alice.connect()
    turn = await alice.send(text, timeout=120)
    assert turn.reply_text
    await settled(security_app)
    stored = (await snapshot(security_app, alice))[alice.thread_id]
    assert [s["output"] for s in stored["steps"] if s["id"] == turn.user_id] == [text]


async def emit_and_wait(client: ChainlitClient, event: str, *data) -> None:
    """Emit a raw event; wait until the server has answered whatever it answers (a toast,
    a task), or a moment when it answers nothing."""
    assert client._sio is not None
    mark = len(client.events)
    await client._sio.emit(event, *data)
    try:
        await client.wait_for(lambda: any(e.name in ("toast", "task_end") for e in client.events[mark:]), 3, event)
    except AssertionError:
        pass  # an event Chainlit answers with nothing (when a feature is off)


async def test_socket_events_with_hostile_payloads_are_refused_and_the_chat_goes_on(security_app, alice):
    start = len(security_app.log_text())
    await alice.connect()
    first = await alice.send("before the attack")
    thread_id = alice.thread_id
    await settled(security_app)
    before = await snapshot(security_app, alice)

    def message(**fields):
        return {"message": {"id": str(uuid.uuid4()), "output": "x", "type": "user_message", "name": "alice",
                            "createdAt": datetime.now(UTC).isoformat(), "metadata": {}, **fields},
                "fileReferences": []}

    malformed = [
        ("client_message", {}), ("client_message", "text"), ("client_message", {"message": "text"}),
        ("client_message", message(id="not-a-uuid")), ("client_message", message(id="a\x00b")),
        ("client_message", message(id=LONG_ID)), ("client_message", message(output=None)),
        ("client_message", message(output={"an": "object"})), ("client_message", message(type="t" * 300)),
        ("client_message", message(language=["list"])), ("client_message", {**message(), "fileReferences": "x"}),
        ("edit_message", {}), ("edit_message", {"message": {"id": first.user_id}}),
        ("edit_message", {"message": {"id": 5, "output": "x"}}),
        ("message_favorite", {}), ("message_favorite", {"message": {"id": "a\x00b"}}),
        ("message_favorite", {"message": {"id": first.reply_id, "metadata": "favorite"}}),
        ("chat_settings_change", "garbage"), ("chat_settings_change", ["list"]), ("chat_settings_edit", 5),
    ]
    toasts_before = len(alice.by_name.get("toast", []))
    for event, payload in malformed:
        await emit_and_wait(alice, event, payload)
        assert alice.connected, f"the socket closed after a malformed {event}"
    toasts = alice.by_name.get("toast", [])[toasts_before:]
    assert len(toasts) == len(malformed) and all(t["type"] == "error" for t in toasts), toasts

    # Payloads that are well formed but odd are accepted as what they are.
    for event, args in [("window_message", ("a\x00b",)), ("chat_settings_change", ({"key\x00": "value\x00"},)),
                        ("fetch_favorites", ()), ("stop", ())]:
        await emit_and_wait(alice, event, *args)
        assert alice.connected
    after = await alice.send("after the attack")
    assert after.reply_text and alice.thread_id == thread_id
    await settled(security_app)
    stored = (await snapshot(security_app, alice))[thread_id]
    kept = {s["id"]: s for s in stored["steps"]}
    for step in before[thread_id]["steps"]:
        assert kept[step["id"]] == step  # nothing stored before was lost or changed
    assert kept[after.user_id]["output"] == "after the attack"
    log = security_app.log_text()[start:]
    assert log.count("refused a malformed") == len(malformed)
    no_tracebacks(security_app, start)


async def test_malformed_connection_data_is_refused_with_the_reason(security_app, alice):
    start = len(security_app.log_text())
    cookie = "; ".join(f"{name}={value}" for name, value in alice.cookies.items())
    for auth in ({"clientType": "webapp"}, {"sessionId": "s", "clientType": "webapp", "userEnv": "{not json"},
                 {"sessionId": "s", "clientType": "webapp", "threadId": 5}, "text"):
        client = socketio.AsyncClient(reconnection=False)
        reasons: list = []
        client.on("connect_error", reasons.append)
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(alice.base_url, headers={"Cookie": cookie}, auth=auth,
                                 socketio_path="/ws/socket.io", wait_timeout=10)
        await client.disconnect()
        assert len(reasons) == 1 and "malformed connection data" in str(reasons[0]), reasons
    no_tracebacks(security_app, start)


@pytest.mark.parametrize("asked", [LONG_ID, "a\x00b"], ids=["over-long", "nul"])
async def test_a_socket_asking_for_an_unstorable_thread_id_chats_in_a_new_saved_thread(security_app, alice, asked):
    start = len(security_app.log_text())
    await alice.connect(thread_id=asked)
    assert alice.by_name.get("resume_thread_error") == ["Thread not found."]
    told = next(i for i, e in enumerate(alice.events) if e.name == "resume_thread_error")
    await alice.wait_for(lambda: alice._task_done(told + 1), 30, "on_chat_start")
    mark = len(alice.events)
    turn = await alice.send("is this saved?")
    assert turn.reply_text
    started = [e.data for e in alice.events[mark:] if e.name == "first_interaction"]
    new_thread = started[0]["thread_id"]
    assert new_thread != asked
    await settled(security_app)
    stored = (await snapshot(security_app, alice))[new_thread]
    assert [s["output"] for s in stored["steps"] if s["id"] == turn.user_id] == ["is this saved?"]
    log = security_app.log_text()[start:]
    assert "chatting in new thread" in log and "'alice'" in log
    no_tracebacks(security_app, start)
