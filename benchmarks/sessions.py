"""Concurrent sessions against the real app: how soon the thread id reaches the browser, and
whether the model's thread title survives Chainlit's own thread setup.

    python -m benchmarks.sessions                       # 30 sessions x 10 turns, SQLite
    python -m benchmarks.sessions --sessions 30 --turns 10 --database postgresql

It starts the app (`chainlit run app.py`, the embedded defaults: SQLite unless
`--database postgresql`, whose throwaway database is created on BENCH_POSTGRES_URL's server)
with the OpenAI-compatible test server as the model, and drives N sessions at once through
Chainlit's own socket protocol (log in, connect, send messages, wait for the reply). For
each session it measures the time from sending the first message to the `first_interaction`
event that carries the thread id (the browser shows the thread and its URL then), and
afterwards reads every thread back: messages stored of messages sent, and whether the
thread's name is the model's title (the title is saved after the first answer; Chainlit's
thread setup names the thread after the first message and must never win).

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.e2e.app_runner import RunningApp
from tests.faults.chainlit_client import ChainlitClient
from tests.servers.openai_compat import OpenAICompatServer, default_responder


def titled(body: dict) -> str:
    """Stream echoes; a title request (not streamed) gets a title naming the question."""
    if body.get("stream"):
        return default_responder(body)
    question = " ".join(str(m.get("content")) for m in body["messages"] if m["role"] == "user")
    found = re.search(r"session-\d+", question)
    return f"Chat of {found.group(0) if found else 'someone'}"


async def one_session(url: str, password: str, number: int, turns: int) -> dict:
    client = await ChainlitClient.login(url, "admin", password)
    async with client:
        await client.connect()
        started = time.monotonic()
        first = asyncio.create_task(client.send(f"Question 1 from session-{number}"))
        await client.wait_for(lambda: client.by_name.get("first_interaction"), 60, "the thread id")
        thread_seen = next(e.at for e in client.events if e.name == "first_interaction") - started
        await first
        for turn in range(2, turns + 1):
            await client.send(f"Question {turn} from session-{number}")
        titles = [d.get("interaction") for d in client.by_name.get("first_interaction", [])]
        return {"thread_id": client.thread_id, "thread_id_seconds": thread_seen, "turns": len(client.turns),
                "title_event": titles[-1] if len(titles) > 1 else None,
                "sent": [t.user_text for t in client.turns], "replies": [t.reply_text for t in client.turns]}


async def wait_drained(url: str, timeout: float = 120) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        deadline = time.monotonic() + timeout
        while True:
            status = (await http.get("/health")).json()
            if status["journal"]["pending"] == 0 or time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.2)


async def read_back(database_url: str, thread_ids: list[str]) -> dict[str, dict]:
    from chainlit.context import init_http_context

    from datalayers.sqlalchemy import SQLAlchemyDataLayer

    init_http_context()
    layer = SQLAlchemyDataLayer(database_url, auto_migrate=False)
    try:
        return {t: await layer.get_thread(t) for t in thread_ids}
    finally:
        await layer.close()


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def bench_database(args, folder: Path):
    """The app's database for a run: a throwaway PostgreSQL database (drop it with
    `databases.drop_all()`), or an SQLite file in `folder`; (its URL, the databases or None)."""
    if args.database == "postgresql":
        from tests.conftest import POSTGRES_ADMIN_URL, ThrowawayDatabases

        databases = ThrowawayDatabases(args.postgres_url or POSTGRES_ADMIN_URL)
        return databases.create(), databases
    return f"sqlite+aiosqlite:///{folder / 'chainlit.db'}", None


async def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bench-sessions-"))
    database_url, databases = bench_database(args, tmp)
    with OpenAICompatServer() as llm:
        llm.responder = titled
        app = RunningApp(tmp, database_url, llm.base_url)
        try:
            app.wait_ready()
            password = app.admin_password()
            began = time.monotonic()
            sessions = await asyncio.gather(*(one_session(app.url, password, n, args.turns)
                                              for n in range(args.sessions)))
            elapsed = time.monotonic() - began
            health = await wait_drained(app.url)
        finally:
            app.stop()
    try:
        stored = await read_back(database_url, [s["thread_id"] for s in sessions])
    finally:
        if databases is not None:
            databases.drop_all()
    latencies = [s["thread_id_seconds"] for s in sessions]
    kept_titles = lost = 0
    for session in sessions:
        thread = stored[session["thread_id"]]
        outputs = [s["output"] for s in thread["steps"] if s["type"] in ("user_message", "assistant_message")]
        expected = [text for pair in zip(session["sent"], session["replies"], strict=True) for text in pair]
        lost += sum(1 for text in expected if text not in outputs)
        kept_titles += thread["name"] == session["title_event"]
    return {
        "database": args.database, "sessions": args.sessions, "turns": args.turns, "elapsed_s": round(elapsed, 2),
        "thread_id_ms": {"median": round(statistics.median(latencies) * 1000, 1),
                         "p95": round(percentile(latencies, 0.95) * 1000, 1),
                         "max": round(max(latencies) * 1000, 1)},
        "model_titles_kept": f"{kept_titles}/{len(sessions)}",
        "messages_stored": f"{2 * args.sessions * args.turns - lost}/{2 * args.sessions * args.turns}",
        "journal_after": health["journal"],
        "app_log_errors": sum(" ERROR " in line for line in (tmp / "chainlit.log").read_text().splitlines()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sessions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--postgres-url", default=None, help="admin URL of the PostgreSQL server (BENCH_POSTGRES_URL)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.postgres_url is None:
        import os

        args.postgres_url = os.environ.get("BENCH_POSTGRES_URL")
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{result['sessions']} sessions x {result['turns']} turns on {result['database']}, {result['elapsed_s']} s")
    latency = result["thread_id_ms"]
    print(f"thread id reaches the client: median {latency['median']} ms, p95 {latency['p95']} ms, "
          f"max {latency['max']} ms")
    print(f"model titles kept: {result['model_titles_kept']}; messages stored: {result['messages_stored']}; "
          f"journal after: {result['journal_after']['pending']} pending, {result['journal_after']['rejected']} rejected; "
          f"ERROR lines in the app log: {result['app_log_errors']}")


if __name__ == "__main__":
    main()
