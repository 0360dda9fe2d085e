"""The message size limit, through the real app (browser protocol: HTTP login, Socket.IO), on
SQLite and PostgreSQL, at the default limit of 1 MiB (`APP_MAX_MESSAGE_BYTES`).

Before: a 1 MiB message made python-engineio drop the socket (its 1 MB packet limit), the
message was lost and the user was told nothing. Now every message up to the limit, however
much JSON escaping inflates it, reaches the app and is stored whole; a larger one, or an edit
that makes one larger, is refused with a notice that gives its size and the limit, stores
nothing, and leaves the connection open.
"""

from __future__ import annotations

import asyncio
import functools
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import socketio

from settings import DEFAULT_MAX_MESSAGE_BYTES
from tests.faults import chainlit_client
from tests.faults.chainlit_client import ChainlitClient

LIMIT = DEFAULT_MAX_MESSAGE_BYTES


def text_of(size: int) -> str:
    """`size` UTF-8 bytes of mixed text: ASCII, 2-byte and 4-byte characters."""
    unit = "Lorem ipsum é😀 "  # 12 ASCII + 2 + 4 + 1 = 19 bytes
    text = unit * (size // 19)
    return text + "x" * (size - len(text.encode()))


async def stored_thread(app, client: ChainlitClient, thread_id: str, until=lambda thread: True, timeout: float = 30) -> dict:
    """The thread as the app serves it to its owner, once `until(thread)` holds (writes reach
    the database shortly after the reply)."""
    deadline = time.monotonic() + timeout
    async with app.http(client) as http:
        while True:
            response = await http.get(f"/project/thread/{thread_id}")
            assert response.status_code == 200, response.text
            thread = response.json()
            if until(thread) or time.monotonic() > deadline:
                return thread
            await asyncio.sleep(0.3)


def user_outputs(thread: dict) -> list[str]:
    return [s["output"] for s in thread["steps"] if s["type"] == "user_message"]


def assert_refused(turn, size: int, edited: bool = False) -> None:
    notice = turn.reply_text or ""
    assert ("Your edit was not saved" if edited else "Your message was not sent") in notice, notice
    assert f"{size:,} bytes" in notice and f"the limit is 1.0 MB ({LIMIT:,} bytes)" in notice, notice
    assert "Nothing of it was stored" in notice


async def test_messages_up_to_the_limit_are_stored_whole_and_larger_ones_refused(security_app, alice):
    await alice.connect()

    # A new chat whose first message is too large: refused, the socket stays, no thread.
    too_large = text_of(LIMIT + 1)
    turn = await alice.send(too_large)
    assert_refused(turn, LIMIT + 1)
    assert alice.connected
    assert "first_interaction" not in alice.by_name  # the thread was never started
    assert {"id": turn.user_id} in alice.by_name.get("delete_message", [])  # taken off the screen
    async with security_app.http(alice) as http:
        listed = await http.post("/project/threads", json={"pagination": {"first": 20}, "filter": {}})
        assert listed.status_code == 200, listed.text
        for thread in listed.json()["data"]:
            assert too_large not in user_outputs(await stored_thread(security_app, alice, thread["id"]))

    # Exactly at the limit: answered and stored whole (this was the message that was lost).
    at_limit = text_of(LIMIT)
    turn = await alice.send(at_limit)
    assert turn.reply_text and turn.reply_text.startswith("**Offline mode**"), turn.reply_text
    thread_id = turn.thread_id
    assert thread_id
    thread = await stored_thread(security_app, alice, thread_id, lambda t: at_limit in user_outputs(t))
    assert user_outputs(thread) == [at_limit]

    # Too large in an existing thread: refused, the thread unchanged, the chat goes on.
    turn = await alice.send(too_large + "more")
    assert_refused(turn, LIMIT + 5)
    turn = await alice.send("still there?")
    assert turn.reply_text and "still there?" in turn.reply_text
    thread = await stored_thread(security_app, alice, thread_id, lambda t: len(user_outputs(t)) == 2)
    assert user_outputs(thread) == [at_limit, "still there?"]
    assert f"refused a client_message of {LIMIT + 1} bytes from user 'alice'" in security_app.log_text()


async def test_heavily_escaped_text_at_the_limit_passes_the_socket(security_app, alice, monkeypatch):
    """A control character travels as `\\u00XX`: 1 MiB of them is a 6 MiB socket packet.
    Chainlit echoes the text back (the input of its `on_message` run step), and the test
    client's aiohttp, unlike a browser, refuses frames over 4 MiB unless told otherwise."""
    big_frames = functools.partial(socketio.AsyncClient, websocket_extra_options={"max_msg_size": 16 * 1024 * 1024})
    monkeypatch.setattr(chainlit_client, "socketio", SimpleNamespace(AsyncClient=big_frames, exceptions=socketio.exceptions))
    await alice.connect()
    escaped = "\x01" * (LIMIT - 20) + '"\\\t\n' * 5
    assert len(escaped.encode()) == LIMIT
    turn = await alice.send(escaped)
    assert turn.reply_text and turn.reply_text.startswith("**Offline mode**"), turn.reply_text
    thread = await stored_thread(security_app, alice, turn.thread_id, lambda t: escaped in user_outputs(t))
    assert user_outputs(thread) == [escaped]


async def test_an_edit_over_the_limit_is_refused_and_the_stored_text_kept(security_app, alice):
    await alice.connect()
    turn = await alice.send("a short question")
    thread_id = turn.thread_id
    await stored_thread(security_app, alice, thread_id, lambda t: user_outputs(t) == ["a short question"])

    mark = len(alice.events)
    edit = {
        "threadId": thread_id,
        "id": turn.user_id,
        "name": alice.identifier,
        "type": "user_message",
        "output": text_of(LIMIT + 100),
        "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "metadata": {},
    }
    await alice._sio.emit("edit_message", {"message": edit})

    def notice():
        return [e.data for e in alice.events[mark:]
                if e.name == "new_message" and "too large" in (e.data.get("output") or "")]

    (shown,) = await alice.wait_for(notice, 30, "the refusal of the edit")
    assert "Your edit was not saved" in shown["output"] and f"{LIMIT + 100:,} bytes" in shown["output"]
    # The browser already showed the edit: the stored text is put back on screen.
    restored = [e.data for e in alice.events[mark:] if e.name == "update_message" and e.data.get("id") == turn.user_id]
    assert restored and restored[-1]["output"] == "a short question"
    await asyncio.sleep(1)  # an edit that got through would be written by now
    thread = await stored_thread(security_app, alice, thread_id)
    assert user_outputs(thread) == ["a short question"]
    assert alice.connected
    again = await alice.send("and another")
    assert again.reply_text and "and another" in again.reply_text


async def test_the_limit_counts_utf8_bytes(security_app, alice):
    """The limit counts UTF-8 bytes: LIMIT // 4 emoji are exactly at it, one more byte is over."""
    await alice.connect()
    emoji = "😀" * (LIMIT // 4)
    turn = await alice.send(emoji)
    assert turn.reply_text and turn.reply_text.startswith("**Offline mode**"), turn.reply_text
    over = await alice.send(emoji + "x")
    assert_refused(over, LIMIT + 1)
