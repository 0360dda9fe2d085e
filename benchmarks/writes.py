"""Write-path benchmark on PostgreSQL: our SQLAlchemy layer vs Chainlit's own, same data, same server.

    python -m benchmarks.writes                          # 1,000 threads x 20 steps
    python -m benchmarks.writes --threads 100 --steps 5 --writes 200 --turns 10 --json

It creates two throwaway databases on the PostgreSQL server (BENCH_POSTGRES_URL, default
the local test server) and loads the same user with N threads x S steps into each, by bulk
insert (loading is not what is measured, and 20,000 writes through either layer take
minutes): ours into the schema our migrations build (`--preload api` writes it through our
layer's public API instead, which no schema change can break), Chainlit's into its
documented DDL. Then, for each layer, through Chainlit's public data-layer API only:

* step writes/s: --writes `create_step` calls of new messages into existing threads,
  --concurrency in flight, until they are in the database;
* a chat turn: the user's message (create_step), the assistant's empty streaming message
  (create_step), its final text (update_step); median and p95 ms over --turns turns, one
  after the other;
* --concurrent-turns turns on as many threads at once (asyncio.gather), elapsed seconds;
* SQL statements and transactions per chat turn, counted with SQLAlchemy engine events,
  with the statements broken down by verb and table — counts are exact where times are noisy;
* the first sidebar page (list_threads, page size 20) afterwards, median ms.

"Until they are in the database": a layer that journals its writes and applies them in
the background has a `flush()`; every timed batch ends with it, and the layer gets a
journal file in a temporary directory so the journal's disk cost is counted. A layer
without `flush()` writes synchronously.

Chainlit's layer swallows database errors (it logs a warning and returns), so the number
of stored steps is checked against the number written, for both layers, and printed.

Not a test: numbers depend on the machine. The databases are dropped at the end, also on error.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from benchmarks.requestcount import (
    StatementCounter,
    ThreadCursor,
    bounded,
    breakdown,
    environment,
    flush,
    journal_options,
    p95,
    per_unit,
    print_table,
    ratio,
    set_chainlit_context,
)

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
IDENTIFIER = "bench@example.com"
PAGE = 20
WORDS = "the quick brown fox jumps over a lazy dog while planning budgets and holidays".split()
ANSWER = " ".join(WORDS * 20)  # a ~1.5 KB final answer
# Chainlit's documented DDL, frozen with our migrations.
DDL_MODULES = ("datalayers.migrations.chainlit_reference",)


def chainlit_ddl() -> list[str]:
    for name in DDL_MODULES:
        try:
            return list(importlib.import_module(name).CHAINLIT_POSTGRES_DDL)
        except (ImportError, AttributeError):
            continue
    raise RuntimeError(f"CHAINLIT_POSTGRES_DDL not found in any of {', '.join(DDL_MODULES)}")


def stamp(moment: datetime) -> str:
    # What Chainlit's frontend sends and both schemas store: ISO-8601 UTC text.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message(thread_id: str, step_id: str, kind: str, output: str, streaming: bool, created: str) -> dict:
    """A step dict shaped like chainlit.Message.to_dict(), what Chainlit hands a layer."""
    return {"id": step_id, "threadId": thread_id, "parentId": None, "createdAt": created, "command": None,
            "modes": None, "start": created, "end": created, "output": output,
            "name": "user" if kind == "user_message" else "Assistant", "type": kind, "language": None,
            "streaming": streaming, "isError": False, "waitForAnswer": False, "metadata": {}, "tags": None}


def dataset(n_threads: int, n_steps: int) -> list[dict]:
    """One user's history: threads a minute apart, alternating user/assistant messages."""
    base = datetime(2025, 1, 1, tzinfo=UTC)
    threads = []
    for t in range(n_threads):
        created = base + timedelta(minutes=t)
        steps = []
        for s in range(n_steps):
            kind = "user_message" if s % 2 == 0 else "assistant_message"
            words = " ".join(WORDS[(t * 7 + s * 3 + k) % len(WORDS)] for k in range(30))
            steps.append(message("", str(uuid.uuid4()), kind, words, False, stamp(created + timedelta(seconds=s))))
        thread_id = str(uuid.uuid4())
        for step in steps:
            step["threadId"] = thread_id
        threads.append({"id": thread_id, "name": f"Conversation {t}", "createdAt": stamp(created), "steps": steps})
    return threads


# ---------------------------------------------------------------------------- databases
async def admin(statement: str):
    engine = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(statement))
            return result.scalar() if result.returns_rows else None
    finally:
        await engine.dispose()


def url_for(name: str) -> str:
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def stored_steps(url: str) -> int:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT count(*) FROM steps"))).scalar()
    finally:
        await engine.dispose()


# Our table definitions, for the bulk preload.
SCHEMA_MODULES = ("datalayers.sqlalchemy.schema",)


async def load_ours(url: str, threads: list[dict], journal_dir: str, args):
    """Our layer with the user and its history. `--preload bulk` inserts the rows straight
    into our tables (seconds); `api` writes them through the layer (minutes at the default
    size, but immune to schema changes). A bulk insert that fails falls back to the API."""
    from datalayers.sqlalchemy import SQLAlchemyDataLayer
    from storage.memory import MemoryStorage

    options, journal = journal_options(SQLAlchemyDataLayer, journal_dir)
    layer = SQLAlchemyDataLayer(url, storage=MemoryStorage(), **options)
    user = await layer.create_user(_user())  # also runs our migrations (auto_migrate)
    how = args.preload
    if how == "bulk":
        try:
            await bulk_load_ours(layer, user.id, threads)
        except Exception as exc:  # a schema this loader does not know: the public API always works
            print(f"bulk preload of our tables failed ({type(exc).__name__}: {str(exc)[:200]}); "
                  "loading through the API instead", file=sys.stderr)
            how = "api"
    if how == "api":
        async def one_thread(thread):
            # A thread's writes in order (its owner first), threads side by side.
            await layer.update_thread(thread["id"], name=thread["name"], user_id=user.id)
            for step in thread["steps"]:
                await layer.create_step(dict(step))

        await bounded(args.preload_concurrency, (one_thread(t) for t in threads))
        await flush(layer)
    return layer, user.id, journal, how


async def bulk_load_ours(layer, user_id: str, threads: list[dict]) -> None:
    from sqlalchemy import insert

    schema = None
    for name in SCHEMA_MODULES:
        try:
            schema = importlib.import_module(name)
            break
        except ImportError:
            continue
    if schema is None:
        raise RuntimeError(f"our table definitions not found in any of {', '.join(SCHEMA_MODULES)}")
    thread_rows = [{"id": t["id"], "createdAt": t["createdAt"], "updatedAt": t["steps"][-1]["createdAt"]
                    if t["steps"] else t["createdAt"], "name": t["name"], "userId": user_id,
                    "userIdentifier": IDENTIFIER, "metadata": {}, "tags": []} for t in threads]
    step_rows = [{"id": s["id"], "threadId": t["id"], "name": s["name"], "type": s["type"], "streaming": False,
                  "waitForAnswer": False, "isError": False, "disableFeedback": False, "output": s["output"],
                  "input": "", "createdAt": s["createdAt"], "start": s["createdAt"], "end": s["createdAt"],
                  "metadata": {}} for t in threads for s in t["steps"]]
    async with layer.engine.begin() as conn:  # one transaction: a failure leaves nothing behind
        for table, rows in ((schema.threads, thread_rows), (schema.steps, step_rows)):
            for i in range(0, len(rows), 5000):
                await conn.execute(insert(table), rows[i:i + 5000])
    async with layer.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))


async def load_chainlit(url: str, threads: list[dict]):
    from chainlit.data.sql_alchemy import (
        SQLAlchemyDataLayer as ChainlitSQLAlchemyDataLayer,
    )

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            for statement in chainlit_ddl():
                await conn.execute(text(statement))
        layer = ChainlitSQLAlchemyDataLayer(conninfo=url, storage_provider=None)
        user = await layer.create_user(_user())
        async with engine.begin() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection  # asyncpg: executemany at COPY-like speed, native UUIDs
            await driver.executemany(
                'INSERT INTO threads ("id","createdAt","name","userId","userIdentifier","metadata") '
                "VALUES ($1::uuid,$2,$3,$4::uuid,$5,'{}'::jsonb)",
                [(t["id"], t["createdAt"], t["name"], user.id, IDENTIFIER) for t in threads])
            await driver.executemany(
                'INSERT INTO steps ("id","threadId","name","type","streaming","waitForAnswer","isError","output",'
                '"input","createdAt","start","end","metadata","generation") '
                "VALUES ($1::uuid,$2::uuid,$3,$4,false,false,false,$5,'',$6,$6,$6,'{}'::jsonb,'{}'::jsonb)",
                [(s["id"], t["id"], s["name"], s["type"], s["output"], s["createdAt"])
                 for t in threads for s in t["steps"]])
        async with engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
    finally:
        await engine.dispose()
    return layer, user.id


def _user():
    from chainlit.user import User

    return User(identifier=IDENTIFIER, metadata={})


# ---------------------------------------------------------------------------- measures
async def chat_turn(layer, thread_id: str) -> None:
    """One exchange into an existing thread, as Chainlit writes it, until it is stored."""
    now = stamp(datetime.now(UTC))
    question, answer = str(uuid.uuid4()), str(uuid.uuid4())
    await layer.create_step(message(thread_id, question, "user_message", "what should I plan next?", False, now))
    await layer.create_step(message(thread_id, answer, "assistant_message", "", True, now))
    await layer.update_step(message(thread_id, answer, "assistant_message", ANSWER, False, now))


async def measure(layer, user_id: str, threads: list[dict], args) -> dict:
    """Every measure for one layer, phase after phase, each ending with flush()."""
    from chainlit.types import Pagination, ThreadFilter

    ids = [t["id"] for t in threads]
    cursor = ThreadCursor(ids)
    result: dict = {}

    # Warm-up: connections in the pool, statements prepared, caches loaded.
    for thread_id in cursor.take(3):
        await chat_turn(layer, thread_id)
    await flush(layer)

    now = stamp(datetime.now(UTC))
    writes = (layer.create_step(message(thread_id, str(uuid.uuid4()), "user_message", f"message {i}", False, now))
              for i, thread_id in enumerate(cursor.take(args.writes)))
    start = time.perf_counter()
    await bounded(args.concurrency, writes)
    await flush(layer)
    result["writes_per_s"] = args.writes / (time.perf_counter() - start)

    counted = cursor.take(args.count_turns)
    with StatementCounter(layer.engine) as counter:  # off again before anything is timed
        for thread_id in counted:
            await chat_turn(layer, thread_id)
            await flush(layer)
    result["statements_per_turn"] = counter.statements / len(counted)
    result["transactions_per_turn"] = counter.transactions / len(counted)
    result["statements_breakdown"] = per_unit(counter.by_label, len(counted))

    times = []
    for thread_id in cursor.take(args.turns):
        start = time.perf_counter()
        await chat_turn(layer, thread_id)
        await flush(layer)
        times.append((time.perf_counter() - start) * 1000)
    result["turn_median_ms"], result["turn_p95_ms"] = statistics.median(times), p95(times)

    targets = cursor.take(args.concurrent_turns)
    start = time.perf_counter()
    await asyncio.gather(*(chat_turn(layer, thread_id) for thread_id in targets))
    await flush(layer)
    result["concurrent_turns_s"] = time.perf_counter() - start

    filters = ThreadFilter(userId=user_id)
    page = await layer.list_threads(Pagination(first=PAGE), filters)  # warm-up and sanity check
    if len(page.data) != min(PAGE, len(ids)):
        raise RuntimeError(f"{type(layer).__module__}: sidebar page holds {len(page.data)} threads")
    pages = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        await layer.list_threads(Pagination(first=PAGE), filters)
        pages.append((time.perf_counter() - start) * 1000)
    result["sidebar_median_ms"] = statistics.median(pages)

    result["steps_written"] = args.writes + 2 * (3 + args.count_turns + args.turns + args.concurrent_turns)
    return result


MEASURES = [  # key, label, higher is better, format
    ("writes_per_s", "step writes/s ({writes}, {concurrency} in flight)", True, "{:.0f}"),
    ("turn_median_ms", "chat turn median ms", False, "{:.2f}"),
    ("turn_p95_ms", "chat turn p95 ms", False, "{:.2f}"),
    ("concurrent_turns_s", "{concurrent_turns} concurrent turns, elapsed s", False, "{:.3f}"),
    ("statements_per_turn", "SQL statements per chat turn", False, "{:.1f}"),
    ("transactions_per_turn", "transactions (commits) per chat turn", False, "{:.1f}"),
    ("sidebar_median_ms", "sidebar page (first=20) median ms", False, "{:.2f}"),
]


async def run(args) -> dict:
    logging.getLogger("chainlit").setLevel(logging.ERROR)  # Chainlit's layer warns about storage
    set_chainlit_context(IDENTIFIER)
    version = await admin("SHOW server_version")
    names = {who: f"bench_writes_{who}_{uuid.uuid4().hex[:8]}" for who in ("ours", "chainlit")}
    created: list[str] = []
    layers = []
    # The journal directory outlives the layers: they are closed (journal included) first.
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as journal_dir:
        try:
            for name in names.values():
                await admin(f"CREATE DATABASE {name}")
                created.append(name)
            threads = dataset(args.threads, args.steps)
            start = time.perf_counter()
            ours, our_user, journal, how = await load_ours(url_for(names["ours"]), threads, journal_dir, args)
            layers.append(ours)
            ours_load = time.perf_counter() - start
            start = time.perf_counter()
            theirs, their_user = await load_chainlit(url_for(names["chainlit"]), threads)
            layers.append(theirs)
            theirs_load = time.perf_counter() - start
            print(f"loaded {args.threads} threads x {args.steps} steps: ours ({how}) in {ours_load:.1f} s, "
                  f"Chainlit's by bulk insert in {theirs_load:.1f} s", file=sys.stderr)

            results = {"ours": await measure(ours, our_user, threads, args),
                       "chainlit": await measure(theirs, their_user, threads, args)}
            for who, layer in (("ours", ours), ("chainlit", theirs)):
                await layer.close()  # ours: waits for its journal, then disposes of the engine
                layers.remove(layer)
                results[who]["steps_stored"] = await stored_steps(url_for(names[who]))
                results[who]["steps_expected"] = args.threads * args.steps + results[who]["steps_written"]
        finally:
            for layer in layers:
                try:
                    await layer.close()
                except Exception as exc:  # the databases are dropped below either way
                    print(f"closing {type(layer).__module__} failed: {exc!r}", file=sys.stderr)
            for name in created:
                await admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    rows = []
    for key, label, higher, fmt in MEASURES:
        rows.append({"measure": label.format(**vars(args)), "key": key, "ours": results["ours"][key],
                     "chainlit": results["chainlit"][key], "format": fmt,
                     "ratio": ratio(results["ours"][key], results["chainlit"][key], higher)})
    return {
        "context": {"postgresql": version, "server": make_url(ADMIN_URL).render_as_string(hide_password=True),
                    "threads": args.threads, "steps_per_thread": args.steps, "our_journal": journal, "our_preload": how,
                    "our_flush": hasattr(ours, "flush"), **environment()},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "results": results,
        "table": [{k: v for k, v in r.items() if k != "format"} for r in rows],
        "_rows": rows,
    }


def report(result: dict) -> None:
    ctx, results = result["context"], result["results"]
    print(f"PostgreSQL {ctx['postgresql']} at {ctx['server']}; {ctx['threads']} threads x "
          f"{ctx['steps_per_thread']} steps loaded per layer; Python {ctx['python']}, Chainlit "
          f"{ctx['chainlit']}, SQLAlchemy {ctx['sqlalchemy']}, {ctx['cpus']} CPUs")
    print(f"our layer: journal {ctx['our_journal']}, flush() {'awaited after every batch' if ctx['our_flush'] else 'absent'}")
    print("ratio > 1 means ours is better (Chainlit's / ours for times and counts, ours / Chainlit's for writes/s)")
    print_table(result["_rows"])
    for who in ("ours", "chainlit"):
        r = results[who]
        print(f"{who + ':':<10} per chat turn {breakdown(r['statements_breakdown'])}")
    for who in ("ours", "chainlit"):
        r = results[who]
        state = "ok" if r["steps_stored"] == r["steps_expected"] else "MISSING WRITES: its numbers are not comparable"
        print(f"{who + ':':<10} steps stored {r['steps_stored']} of {r['steps_expected']} written ({state})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.writes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1000, help="threads loaded for the user (default 1000)")
    parser.add_argument("--steps", type=int, default=20, help="steps per loaded thread (default 20)")
    parser.add_argument("--writes", type=int, default=2000, help="step writes for writes/s (default 2000)")
    parser.add_argument("--concurrency", type=int, default=10, help="writes in flight for writes/s (default 10)")
    parser.add_argument("--turns", type=int, default=50, help="sequential chat turns timed (default 50)")
    parser.add_argument("--concurrent-turns", type=int, default=50, help="chat turns run at once (default 50)")
    # A journaling layer may fold the assistant's create and update into one write, or not,
    # depending on timing: the count per turn is an average over several turns.
    parser.add_argument("--count-turns", type=int, default=10,
                        help="chat turns whose statements are counted (default 10)")
    parser.add_argument("--repeat", type=int, default=15, help="sidebar pages timed (default 15)")
    parser.add_argument("--preload", choices=("bulk", "api"), default="bulk",
                        help="load our history by bulk insert (default) or through our layer's API")
    parser.add_argument("--preload-concurrency", type=int, default=20,
                        help="with --preload api: threads loaded at once (default 20)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "_rows"}, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
