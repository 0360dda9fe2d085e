"""What the outage tests check, directly in the database: waiting until the app's backlog is
drained, reading the thread back through the project's own data layer, and listing
everything that differs from what the user saw.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx

from .chainlit_client import Turn

MESSAGE_TYPES = ("user_message", "assistant_message")


def open_data_layer(app_env: dict[str, str], scratch: Path):
    """The data layer the app builds from the same settings, for reading what it stored.

    Built through `settings.load_settings` like the app does, so the check reads with the
    code under test whatever the backend. Its own data folder (and write journal, should the
    layer keep one) so it never touches the running app's files; no migrations: the app has
    made the schema, and the check must not hide a schema the app failed to make.
    """
    from settings import load_settings

    scratch.mkdir(parents=True, exist_ok=True)
    env = {
        **app_env,
        "APP_DATA_DIR": str(scratch),
        "WRITE_JOURNAL_PATH": str(scratch / "journal.sqlite3"),
        "DATABASE_AUTO_MIGRATE": "false",
    }
    return load_settings(env, dotenv=False, export_secret=False).build_data_layer()


async def close_data_layer(layer) -> None:
    close = getattr(layer, "close", None)
    if close is not None:
        await close()


async def read_health(app_url: str) -> dict | None:
    """The app's `/health` JSON, or None when it has no such route. Chainlit itself answers
    `/health` with `{"status": "ok"}`; only the write journal adds `journal`."""
    async with httpx.AsyncClient(base_url=app_url, timeout=10) as http:
        response = await http.get("/health")
    if response.status_code == 404 or "text/html" in response.headers.get("content-type", ""):
        return None  # no route (Chainlit answers unknown paths with its index page)
    try:
        body = response.json()
    except ValueError:
        body = None
    # A degraded app may well answer 503 (load balancers read the status code): still JSON.
    if response.status_code not in (200, 503) or not isinstance(body, dict):
        raise AssertionError(f"GET /health answered {response.status_code}: {response.text[:500]}")
    return body


async def read_thread(layer, thread_id: str | None) -> dict | None:
    if not thread_id:
        return None
    return await layer.get_thread(thread_id)


def stored_messages(thread: dict | None) -> list[dict]:
    if not thread:
        return []
    return [s for s in thread.get("steps") or [] if s.get("type") in MESSAGE_TYPES]


def expected_messages(turns: Iterable[Turn]) -> list[dict]:
    """The messages the user saw, in order: each turn's message, then its reply."""
    out = []
    for turn in turns:
        out.append({"id": turn.user_id, "type": "user_message", "output": turn.user_text, "turn": turn.number})
        out.append({"id": turn.reply_id, "type": "assistant_message", "output": turn.reply_text, "turn": turn.number})
    return out


async def wait_drained(app_url: str, layer, thread_id: str | None, turns: list[Turn], timeout: float = 90,
                       quiet: float = 8) -> dict[str, Any]:
    """Wait until the app has written what it will write; returns how that was decided.

    With `/health`: until its journal reports nothing pending (twice in a row, a second
    apart: a write Chainlit fires in the background may reach the journal a moment after the
    reply), then briefly until the thread is complete. Without it (the app of before the
    write journal, or a backend the journal does not cover: no `pending` count): until the
    thread is complete, or has not changed for `quiet` seconds.
    Either way bounded by `timeout`; running out is an error only with `/health`.
    """
    expected = len(expected_messages(turns))
    deadline = time.monotonic() + timeout
    health = await read_health(app_url)
    if health is not None and "pending" in (health.get("journal") or {}):
        zero_in_a_row = 0
        while True:
            pending = (health.get("journal") or {}).get("pending")
            zero_in_a_row = zero_in_a_row + 1 if pending == 0 else 0
            if zero_in_a_row >= 2:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the app's write journal did not drain in {timeout}s: /health says {health}")
            await asyncio.sleep(1)
            health = await read_health(app_url)
        grace = time.monotonic() + 10
        while time.monotonic() < grace and len(stored_messages(await read_thread(layer, thread_id))) < expected:
            await asyncio.sleep(0.5)
        return {"by": "health", "health": health}

    last, stable_since = None, time.monotonic()
    while time.monotonic() < deadline:
        thread = await read_thread(layer, thread_id)
        now = [(s.get("id"), s.get("output")) for s in stored_messages(thread)]
        owner = (thread or {}).get("userIdentifier")
        if len(now) >= expected and owner:
            break
        if (now, owner) != last:
            last, stable_since = (now, owner), time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            break
        await asyncio.sleep(1)
    return {"by": "database", "health": health}


def thread_problems(thread: dict | None, thread_id: str | None, turns: list[Turn], owner: str) -> list[str]:
    """Everything that differs between the stored thread and the conversation the user had."""
    if not thread_id:
        return ["the client never learned the thread id (no message step came back)"]
    if thread is None:
        return [f"thread {thread_id} is not in the database: the whole conversation ({len(turns)} turns) was lost"]
    problems = []
    if thread.get("userIdentifier") != owner:
        problems.append(f"thread {thread_id} is owned by {thread.get('userIdentifier')!r} "
                        f"(userId {thread.get('userId')!r}), expected {owner!r}: it would not be in their sidebar")
    expected = expected_messages(turns)
    by_id = {e["id"]: e for e in expected}
    stored = stored_messages(thread)
    stored_ids = [s.get("id") for s in stored]

    missing = [e for e in expected if e["id"] not in stored_ids]
    if missing:
        lost_turns: dict[int, list[str]] = {}
        for e in missing:
            lost_turns.setdefault(e["turn"], []).append("message" if e["type"] == "user_message" else "reply")
        detail = ", ".join(f"turn {n} ({'+'.join(kinds)})" for n, kinds in sorted(lost_turns.items()))
        problems.append(f"{len(missing)} of {len(expected)} messages are missing from thread {thread_id}: {detail}")
    twice = sorted({i for i in stored_ids if stored_ids.count(i) > 1 and i is not None}, key=stored_ids.index)
    if twice:
        problems.append("stored more than once: " + ", ".join(_label(by_id, i) for i in twice))
    extra = [s for s in stored if s.get("id") not in by_id]
    if extra:
        problems.append("messages nobody sent or saw: " + "; ".join(
            f"{s.get('type')} {s.get('id')} {str(s.get('output'))[:60]!r}" for s in extra))
    for s in stored:
        e = by_id.get(s.get("id"))
        if e is None:
            continue
        if s.get("type") != e["type"]:
            problems.append(f"{_label(by_id, e['id'])} is stored as {s.get('type')!r}")
        if s.get("output") != e["output"]:
            problems.append(f"{_label(by_id, e['id'])} is stored as {_short(s.get('output'))}, "
                            f"the user saw {_short(e['output'])}")
    order = [i for i in dict.fromkeys(stored_ids) if i in by_id]
    if order != [e["id"] for e in expected if e["id"] in order]:
        problems.append("messages are stored out of order: " + ", ".join(_label(by_id, i) for i in order))
    return problems


def _label(by_id: dict, step_id: str) -> str:
    e = by_id.get(step_id)
    if e is None:
        return str(step_id)
    return f"turn {e['turn']} {'message' if e['type'] == 'user_message' else 'reply'}"


def _short(text: Any, limit: int = 80) -> str:
    text = "" if text is None else str(text)
    return repr(text if len(text) <= limit else text[:limit] + "...")
