"""Cross-user tampering by id, against the real app over the browser protocol (HTTP and
Socket.IO), on SQLite and PostgreSQL, with two users: alice owns a shared thread, bob has
seen its ids (a shared thread shows its message and rating ids) and tries to change it.

* Ratings: bob cannot change or remove alice's rating — neither with her rating id on his own
  message, nor on her message, nor by deleting it — and every refusal is a 404, the same as
  for a rating that does not exist (never a 500, never a 200).
* Messages: a socket session writes the steps Chainlit hands it, with ids the client chose.
  Bob sending messages with the ids of alice's messages, editing them, and getting one of them
  deleted by the edit changes nothing of hers; each refused write is logged as a WARNING
  naming bob, and never stored.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import socketio

from tests.faults.chainlit_client import ChainlitClient
from tests.security.conftest import settled


async def send_with_id(client: ChainlitClient, step_id: str, text: str) -> None:
    """A user message with an id of the client's choosing (the browser chooses them), answered."""
    step = {"threadId": "", "id": step_id, "name": client.identifier, "type": "user_message", "output": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "metadata": {}}
    mark = len(client.events)
    assert client._sio is not None
    await client._sio.emit("client_message", {"message": step, "fileReferences": []})
    await client.wait_for(lambda: client._task_done(mark), 60, f"the answer to message {step_id}")


async def edit(client: ChainlitClient, step_id: str, text: str) -> None:
    """The browser's "edit message": Chainlit updates it, deletes the messages after it and
    answers again."""
    mark = len(client.events)
    assert client._sio is not None
    await client._sio.emit("edit_message", {"message": {"id": step_id, "output": text}})
    await client.wait_for(lambda: client._task_done(mark), 60, f"the answer to the edit of {step_id}")


async def alice_shares_a_rated_thread(app, alice: ChainlitClient):
    """alice chats, rates the reply and shares the thread; returns (thread id, her turn,
    rating id, the thread as bob sees it through the share link)."""
    await alice.connect()
    turn = await alice.send("my private plans")
    async with app.http(alice) as http:
        rated = await http.put("/feedback", json={"feedback": {"forId": turn.reply_id, "value": 1, "comment": "good",
                                                               "threadId": alice.thread_id},
                                                  "sessionId": alice.session_id})
        assert rated.status_code == 200, rated.text
        shared = await http.put("/project/thread/share", json={"threadId": alice.thread_id, "isShared": True})
        assert shared.status_code == 200, shared.text
    return alice.thread_id, turn, rated.json()["feedbackId"]


async def thread_of(app, client: ChainlitClient, thread_id: str) -> dict:
    async with app.http(client) as http:
        response = await http.get(f"/project/thread/{thread_id}")
        assert response.status_code == 200, response.text
        return response.json()


def new_lines(app, start: int) -> str:
    return app.log_text()[start:]


async def test_another_user_cannot_change_or_remove_a_rating_and_every_refusal_is_a_404(security_app, alice, bob):
    start = len(security_app.log_text())
    thread_id, alices, rating = await alice_shares_a_rated_thread(security_app, alice)
    async with security_app.http(bob) as http:
        seen = (await http.get(f"/project/share/{thread_id}")).json()
        assert [s["feedback"]["id"] for s in seen["steps"] if s.get("feedback")] == [rating]  # the ids are visible

    await bob.connect()
    bobs = await bob.send("my own question")
    async with security_app.http(bob) as http:
        attempts = {
            "her rating id on his message": ("PUT", {"feedback": {"id": rating, "forId": bobs.reply_id, "value": 0},
                                                    "sessionId": bob.session_id}),
            "her message": ("PUT", {"feedback": {"forId": alices.reply_id, "value": 0, "threadId": thread_id},
                                    "sessionId": bob.session_id}),
            "her message, his thread named": ("PUT", {"feedback": {"forId": alices.reply_id, "value": 0,
                                                                   "threadId": bob.thread_id},
                                                      "sessionId": bob.session_id}),
            "her rating removed": ("DELETE", {"feedbackId": rating}),
        }
        answers = {}
        for what, (method, body) in attempts.items():
            response = await http.request(method, "/feedback", json=body)
            answers[what] = (response.status_code, response.json())
        missing = await http.request("DELETE", "/feedback", json={"feedbackId": "no-such-rating"})
        unknown_id = await http.put("/feedback", json={"feedback": {"id": "no-such-rating", "forId": bobs.reply_id,
                                                                    "value": 0}, "sessionId": bob.session_id})
        # His own ratings work, and removing one twice says it is gone.
        own = await http.put("/feedback", json={"feedback": {"forId": bobs.reply_id, "value": 0},
                                                "sessionId": bob.session_id})
        removed = await http.request("DELETE", "/feedback", json={"feedbackId": own.json()["feedbackId"]})
        again = await http.request("DELETE", "/feedback", json={"feedbackId": own.json()["feedbackId"]})

    assert all(status == 404 for status, _ in answers.values()), answers
    assert answers["her rating removed"][1] == missing.json()  # another user's rating looks like a missing one
    assert missing.status_code == 404 and unknown_id.status_code == 404, (missing.text, unknown_id.text)
    assert own.status_code == 200 and removed.status_code == 200 and again.status_code == 404

    kept = [s["feedback"] for s in (await thread_of(security_app, alice, thread_id))["steps"] if s.get("feedback")]
    assert len(kept) == 1 and kept[0]["id"] == rating, kept
    assert kept[0]["forId"] == alices.reply_id and kept[0]["value"] == 1 and kept[0]["comment"] == "good"
    log = new_lines(security_app, start)
    assert "refused: user 'bob'" in log and thread_id in log
    assert "Traceback" not in log and " 500 " not in log


async def test_a_socket_session_cannot_write_or_delete_another_users_messages(security_app, alice, bob):
    start = len(security_app.log_text())
    thread_id, alices, rating = await alice_shares_a_rated_thread(security_app, alice)
    before = await thread_of(security_app, alice, thread_id)

    await bob.connect()
    # Bob's browser sends his messages with the ids of alice's question and her reply ...
    await send_with_id(bob, alices.user_id, "bob writes over alice's question")
    await send_with_id(bob, alices.reply_id, "bob writes over alice's answer")
    # ... edits the first (an update of that id), which makes Chainlit delete every message
    # after it in his session: his own replies, and the one with the id of alice's answer.
    await edit(bob, alices.user_id, "bob edits alice's question")
    await settled(security_app, rejected_allowed=True)

    after = await thread_of(security_app, alice, thread_id)
    assert after["steps"] == before["steps"]  # every message, its text, its rating
    assert after["name"] == before["name"]
    bobs_thread = await thread_of(security_app, bob, bob.thread_id)
    assert {alices.user_id, alices.reply_id}.isdisjoint(s["id"] for s in bobs_thread["steps"])
    assert any(s["type"] == "assistant_message" for s in bobs_thread["steps"])  # his own chat is saved

    # Alice's rating still finds her message; she still chats in her thread.
    async with security_app.http(alice) as http:
        again = await http.put("/feedback", json={"feedback": {"id": rating, "forId": alices.reply_id, "value": 0},
                                                  "sessionId": alice.session_id})
        assert again.status_code == 200 and again.json()["feedbackId"] == rating, again.text
    await alice.send("still mine")
    await settled(security_app, rejected_allowed=True)
    assert len((await thread_of(security_app, alice, thread_id))["steps"]) > len(before["steps"])

    log = new_lines(security_app, start)
    refusals = [line for line in log.splitlines() if "refused" in line and "'bob'" in line]
    assert len(refusals) >= 3, log[-3000:]  # his two writes over her ids, the update, the delete
    assert any(thread_id in line for line in refusals)  # the delete was aimed at her thread
    assert "Traceback" not in log and "refused by the database" not in log


async def test_a_socket_cannot_resume_another_users_thread(security_app, alice, bob):
    thread_id, _, _ = await alice_shares_a_rated_thread(security_app, alice)
    before = await thread_of(security_app, alice, thread_id)
    client = socketio.AsyncClient(reconnection=False)
    reasons: list = []
    client.on("connect_error", reasons.append)
    cookie = "; ".join(f"{name}={value}" for name, value in bob.cookies.items())
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(bob.base_url, headers={"Cookie": cookie}, socketio_path="/ws/socket.io",
                             auth={"clientType": "webapp", "sessionId": bob.session_id, "threadId": thread_id,
                                   "userEnv": "{}", "chatProfile": ""}, wait_timeout=10)
    await client.disconnect()
    assert len(reasons) == 1, reasons  # refused (Chainlit gives no reason to the client)
    assert "Authorization for the thread failed" in security_app.log_text()
    assert (await thread_of(security_app, alice, thread_id))["steps"] == before["steps"]
