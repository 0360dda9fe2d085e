"""Conversations through database outages: nothing the user said or was told may be lost.

Each test starts the real app (`chainlit run app.py`, with the test model server) on a
database of its own, holds a conversation over Chainlit's socket protocol while the database
goes away and comes back, waits until the app's backlog has drained, and then reads the
thread back through the project's own data layer: it must exist, belong to the user who
logged in, and hold every message and every reply exactly once, in order, with the text the
user saw.

The outages (see backends.py): SQLite, another process holds the write lock; PostgreSQL,
the server is stopped; DynamoDB, moto is stopped, or it answers with throttling and server
errors. SQLite and stopped-moto outages last at least as long as the client's own waiting
and retrying would (backends.py says why). The model does not need the database, so the chat
must keep answering throughout.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from .backends import BACKENDS
from .chainlit_client import ChainlitClient, Turn
from .checks import close_data_layer, open_data_layer, read_health, read_thread, thread_problems, wait_drained

pytestmark = pytest.mark.faults

TURNS = 20
TURNS_BEFORE_OUTAGE = 8
TURNS_DURING_OUTAGE = 6
OUTAGE_SECONDS = 30.0
SHORT_OUTAGE_SECONDS = 10.0
DRAIN_SECONDS = 90.0
# After the last answer of a conversation the app is killed: Chainlit hands writes to the
# data layer in background tasks, so give them a moment to be recorded before the kill.
# A message the user saw answered must survive a crash that comes later than that.
SETTLE_BEFORE_KILL_SECONDS = 2.0


def text_of(turn: int, label: str) -> str:
    return f"{label}: message {turn}"


async def say(client: ChainlitClient, turn: int, label: str) -> Turn:
    """One turn, which must be answered whatever state the database is in."""
    answer = await client.send(text_of(turn, label), timeout=60)
    assert answer.reply_author == "Assistant", f"turn {turn} got no reply from the model: {answer}"
    assert (answer.reply_text or "").startswith(f"Echo: {text_of(turn, label)} "), f"turn {turn}: {answer.reply_text!r}"
    return answer


async def say_during(client: ChainlitClient, turns: range, label: str, began: float, seconds: float) -> None:
    """Turns spread over the outage (the first at once), so that writes fail early, late and
    in between, not all in its first second."""
    spacing = seconds / max(len(turns), 1)
    for i, turn in enumerate(turns):
        await asyncio.sleep(max(0.0, began + i * spacing - time.monotonic()))
        await say(client, turn, label)


async def assert_conversation_stored(app, client: ChainlitClient, scratch, backend, turns: list[Turn],
                                     context: str = "") -> None:
    layer = open_data_layer(app.env, scratch)
    try:
        drained = await wait_drained(app.url, layer, client.thread_id, turns, timeout=DRAIN_SECONDS)
        thread = await read_thread(layer, client.thread_id)
        problems = thread_problems(thread, client.thread_id, turns, owner="admin")
    finally:
        await close_data_layer(layer)
    notices = client.notices()
    assert not problems, (
        f"{backend.describe()}; waited for the backlog via {drained['by']} (last /health: {drained['health']}); "
        f"notices shown to the user: {notices or 'none'}{'; ' + context if context else ''}\n" + "\n".join(problems)
    )


async def login(app) -> ChainlitClient:
    client = await ChainlitClient.login(app.url, "admin", app.admin_password())
    await client.connect()
    return client


@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_outage_in_the_middle_of_a_conversation(backend_name, make_backend, start_app, scratch):
    """20 turns; the database goes away after turn 8 for 30 s (SQLite: longer, see
    backends.py) while turns 9-14 are answered, and is back for turns 15-20."""
    backend = make_backend(backend_name)
    app = await start_app(backend)
    client = await login(app)
    label = f"mid-outage {backend_name}"
    seconds = backend.outage_seconds(OUTAGE_SECONDS)
    try:
        for turn in range(1, TURNS_BEFORE_OUTAGE + 1):
            await say(client, turn, label)
        during = range(TURNS_BEFORE_OUTAGE + 1, TURNS_BEFORE_OUTAGE + TURNS_DURING_OUTAGE + 1)
        async with backend.outage(seconds) as began:
            await say_during(client, during, label, began, seconds)
        for turn in range(during.stop, TURNS + 1):
            await say(client, turn, label)
        assert len(client.turns) == TURNS
        await assert_conversation_stored(
            app, client, scratch, backend, client.turns,
            context=f"turns 1-{during.start - 1} were answered before the outage (their writes may still "
                    f"have been in flight when it began), {during.start}-{during.stop - 1} during it, "
                    f"{during.stop}-{TURNS} after")
    finally:
        await client.close()


@pytest.mark.parametrize("backend_name", BACKENDS)
async def test_outage_from_the_very_first_message(backend_name, make_backend, start_app, scratch):
    """The database goes away after the user connected and before their first message, so
    the thread itself (and its owner) must be created late. PostgreSQL crashes this time
    (immediate stop) rather than shutting down."""
    options = {"stop_mode": "immediate"} if backend_name == "postgresql" else {}
    backend = make_backend(backend_name, **options)
    app = await start_app(backend)
    client = await login(app)
    label = f"first-message outage {backend_name}"
    seconds = backend.outage_seconds(SHORT_OUTAGE_SECONDS)
    try:
        async with backend.outage(seconds) as began:
            await say_during(client, range(1, 4), label, began, seconds)
        for turn in (4, 5):
            await say(client, turn, label)
        await assert_conversation_stored(app, client, scratch, backend, client.turns,
                                         context="turns 1-3 were answered during the outage, 4-5 after")
    finally:
        await client.close()


@pytest.mark.parametrize("backend_name", ["sqlite", "postgresql", "dynamodb-down"])
async def test_app_killed_during_an_outage_loses_nothing(backend_name, make_backend, start_app, scratch):
    """Turns 1-3 with the database up, turns 4-6 during an outage, then the app is killed
    (SIGKILL: no shutdown hook runs) while the database is still down. The database comes
    back, the app is started again on the same data folder, and must deliver turns 4-6."""
    backend = make_backend(backend_name)
    first = await start_app(backend)
    client = await login(first)
    label = f"crash {backend_name}"
    try:
        for turn in (1, 2, 3):
            await say(client, turn, label)
        await backend.begin_outage()
        try:
            for turn in (4, 5, 6):
                await say(client, turn, label)
            await asyncio.sleep(SETTLE_BEFORE_KILL_SECONDS)
            health = await read_health(first.url)
            first.proc.kill()
            await asyncio.to_thread(first.proc.wait, 10)
            await client.close()
        finally:
            await backend.end_outage()
        second = await start_app(backend, data_dir=first.tmp / "data")
        assert len(client.turns) == 6
        await assert_conversation_stored(second, client, scratch, backend, client.turns,
                                         context=f"turns 4-6 were answered during the outage; /health of the first "
                                                 f"app just before the kill: {health}")
        # With a journal, the kill must have left work for the restart, or it tested nothing.
        pending = ((health or {}).get("journal") or {}).get("pending")
        assert pending is None or pending > 0, f"nothing was pending when the app was killed: {health}"
    finally:
        await client.close()
