"""Sidebar-page benchmark: our SQLAlchemy layer vs Chainlit's own, same data, same PostgreSQL.

    make bench                                   # default sizes
    python -m benchmarks.sidebar --threads 100 1000 10000 --steps 20 --repeat 15

For each size it creates two throwaway databases on the PostgreSQL server
(BENCH_POSTGRES_URL, default the local test server), loads the same user with N threads ×
S steps into each — ours through our migrations, Chainlit's with its documented DDL — and
times `list_threads` for the first sidebar page (page size 20), without and with a search
term. It prints median milliseconds and the ratio. Chainlit's layer is only run up to
--chainlit-max threads (it loads every thread with all steps per page; past 1000 threads it
cannot reach the older ones at all).

Not a test: numbers depend on the machine. The README records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

from chainlit.types import Pagination, ThreadFilter
from sqlalchemy import insert, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from datalayers.sqlalchemy import SQLAlchemyDataLayer
from datalayers.sqlalchemy.schema import CHAINLIT_POSTGRES_DDL, feedbacks, steps, threads, users
from datalayers.timestamps import format_timestamp

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
PAGE = 20
SEARCH = "needle"
WORDS = "the quick brown fox jumps over a lazy dog while planning budgets and holidays".split()


def dataset(n_threads: int, n_steps: int):
    """One user's history: rows shared by both schemas (timestamps as Chainlit writes them)."""
    user_id = str(uuid.uuid4())
    base = datetime(2025, 1, 1, tzinfo=UTC)
    thread_rows, step_rows, feedback_rows = [], [], []
    for t in range(n_threads):
        thread_id = str(uuid.uuid4())
        created = base + timedelta(minutes=t)
        thread_rows.append({"id": thread_id, "createdAt": format_timestamp(created), "name": f"Conversation {t}"})
        for s in range(n_steps):
            words = [WORDS[(t * 7 + s * 3 + k) % len(WORDS)] for k in range(30)]
            if t % 100 == 7 and s == n_steps - 1:
                words.append(SEARCH)  # 1% of threads match the search term
            step_id = str(uuid.uuid4())
            step_rows.append({
                "id": step_id, "threadId": thread_id, "name": "user" if s % 2 == 0 else "Assistant",
                "type": "user_message" if s % 2 == 0 else "assistant_message", "streaming": False,
                "output": " ".join(words), "input": "",
                "createdAt": format_timestamp(created + timedelta(seconds=s)),
            })
            if t % 10 == 0 and s == 1:
                feedback_rows.append({"id": str(uuid.uuid4()), "forId": step_id, "threadId": thread_id, "value": 1})
    return user_id, thread_rows, step_rows, feedback_rows


async def admin(statement: str) -> None:
    engine = create_async_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with engine.connect() as conn:
        await conn.execute(text(statement))
    await engine.dispose()


async def new_database() -> str:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    await admin(f"CREATE DATABASE {name}")
    return name


def url_for(name: str) -> str:
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def chunked_insert(conn, table, rows, size=5000):
    for i in range(0, len(rows), size):
        await conn.execute(insert(table), rows[i:i + size])


async def load_ours(url, data) -> SQLAlchemyDataLayer:
    user_id, thread_rows, step_rows, feedback_rows = data
    layer = SQLAlchemyDataLayer(url)
    await layer.migrate()
    last_step = {}
    for row in step_rows:
        last_step[row["threadId"]] = row["createdAt"]
    async with layer.engine.begin() as conn:
        await conn.execute(insert(users), [{"id": user_id, "identifier": "bench@example.com", "metadata": {},
                                            "createdAt": thread_rows[0]["createdAt"]}])
        await chunked_insert(conn, threads, [
            {**r, "updatedAt": last_step.get(r["id"], r["createdAt"]), "userId": user_id,
             "userIdentifier": "bench@example.com", "metadata": {}, "tags": []} for r in thread_rows])
        await chunked_insert(conn, steps, [{**r, "disableFeedback": False, "metadata": {}} for r in step_rows])
        await chunked_insert(conn, feedbacks, feedback_rows)
    async with layer.engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
    return layer


async def load_chainlit(url, data):
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer as ChainlitSQLAlchemyDataLayer

    user_id, thread_rows, step_rows, feedback_rows = data
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for statement in CHAINLIT_POSTGRES_DDL:
            await conn.execute(text(statement))
        await conn.execute(text('INSERT INTO users VALUES (:id, :identifier, \'{}\'::jsonb, :created)'),
                           {"id": user_id, "identifier": "bench@example.com", "created": thread_rows[0]["createdAt"]})
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection  # asyncpg: COPY-speed executemany with native UUIDs
        await driver.executemany(
            'INSERT INTO threads ("id","createdAt","name","userId","userIdentifier","metadata") '
            "VALUES ($1::uuid,$2,$3,$4::uuid,$5,'{}'::jsonb)",
            [(r["id"], r["createdAt"], r["name"], user_id, "bench@example.com") for r in thread_rows])
        await driver.executemany(
            'INSERT INTO steps ("id","threadId","name","type","streaming","output","input","createdAt","metadata") '
            "VALUES ($1::uuid,$2::uuid,$3,$4,false,$5,'',$6,'{}'::jsonb)",
            [(r["id"], r["threadId"], r["name"], r["type"], r["output"], r["createdAt"]) for r in step_rows])
        await driver.executemany(
            'INSERT INTO feedbacks ("id","forId","threadId","value") VALUES ($1::uuid,$2::uuid,$3::uuid,$4)',
            [(r["id"], r["forId"], r["threadId"], r["value"]) for r in feedback_rows])
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
    await engine.dispose()
    return ChainlitSQLAlchemyDataLayer(conninfo=url)


async def median_ms(layer, user_id, search, repeat) -> float:
    filters = ThreadFilter(userId=user_id, search=search)
    page = await layer.list_threads(Pagination(first=PAGE), filters)  # warm-up (and sanity check)
    if not page.data:
        raise RuntimeError(f"{type(layer).__module__}: empty sidebar page (search={search!r})")
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        await layer.list_threads(Pagination(first=PAGE), filters)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


async def run(sizes, n_steps, repeat, chainlit_max):
    import logging

    logging.getLogger("chainlit").setLevel(logging.ERROR)  # Chainlit's layer warns about storage
    print(f"PostgreSQL sidebar page (first={PAGE}), {n_steps} steps per thread, median of {repeat} runs")
    print(f"{'threads':>8} {'query':>8} {'ours ms':>10} {'chainlit ms':>12} {'ratio':>8}")
    created = []
    try:
        for n in sizes:
            data = dataset(n, n_steps)
            ours_db = await new_database()
            created.append(ours_db)
            ours = await load_ours(url_for(ours_db), data)
            theirs = None
            if n <= chainlit_max:
                theirs_db = await new_database()
                created.append(theirs_db)
                theirs = await load_chainlit(url_for(theirs_db), data)
            for label, term in (("page", None), ("search", SEARCH)):
                ours_ms = await median_ms(ours, data[0], term, repeat)
                if theirs is not None:
                    theirs_ms = await median_ms(theirs, data[0], term, max(3, repeat // 3))
                    print(f"{n:>8} {label:>8} {ours_ms:>10.2f} {theirs_ms:>12.1f} {theirs_ms / ours_ms:>7.0f}x")
                else:
                    print(f"{n:>8} {label:>8} {ours_ms:>10.2f} {'(skipped)':>12} {'':>8}")
                sys.stdout.flush()
            await ours.close()
            if theirs is not None:
                await theirs.engine.dispose()
    finally:
        for name in created:
            await admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sidebar", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--chainlit-max", type=int, default=10000)
    args = parser.parse_args()
    asyncio.run(run(args.threads, args.steps, args.repeat, args.chainlit_max))


if __name__ == "__main__":
    main()
