"""Export and import throughput of `chainlit-persist` (threads/s, MB/s, peak memory).

    python -m benchmarks.ops [--threads 10000] [--steps 20] [--attachment-bytes 8192]
                             [--dynamodb-threads 1000] [--skip-dynamodb] [--concurrency 8]

A source with N threads × S steps, one attachment per thread (random bytes, so nothing is
de-duplicated) and a rating on every tenth thread is seeded fast with bulk inserts (SQLite
and local files). Then, each phase as its own `chainlit-persist --json` process (its peak
RSS from wait4):

1. SQLite → archive → PostgreSQL (export, then import into a fresh database)
2. PostgreSQL → archive → DynamoDB on moto (a moto server in a child process, with the
   same atomicity fixes as the other DynamoDB benchmarks)

What the figures are compared with: Chainlit has no export or import at all (moving its
data means hand-written SQL, and there is no path from SQL to DynamoDB). The floor for the
SQL leg is a raw bulk copy of the same rows and blob files — SELECT every row, INSERT it
in chunks of 5,000 with executemany, copy each file — with no archive, no checksums, no
comparison with the target and no per-thread writes: what a throwaway script would do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import insert, select

from datalayers.sqlalchemy import SQLAlchemyDataLayer
from datalayers.sqlalchemy.schema import elements, feedbacks, steps, threads, users
from datalayers.timestamps import format_timestamp
from storage.base import element_object_key

CONSOLE = Path(sys.executable).with_name("chainlit-persist")
WORDS = "the quick brown fox jumps over a lazy dog while answering questions about budgets".split()


def dataset(n_threads: int, n_steps: int, attachment: int, users_count: int = 20):
    rng = random.Random(7)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    user_rows = [{"id": str(uuid.uuid4()), "identifier": f"user{u}@example.com", "metadata": {"n": u},
                  "createdAt": format_timestamp(start)} for u in range(users_count)]
    thread_rows, step_rows, element_rows, feedback_rows, blobs = [], [], [], [], []
    for t in range(n_threads):
        owner = user_rows[t % users_count]
        thread_id = str(uuid.uuid4())
        created = start + timedelta(minutes=t)
        last = created + timedelta(seconds=n_steps - 1)
        thread_rows.append({"id": thread_id, "createdAt": format_timestamp(created), "updatedAt": format_timestamp(last),
                            "name": f"thread {t}", "userId": owner["id"], "userIdentifier": owner["identifier"],
                            "tags": ["bench"], "metadata": {"t": t}})
        first_step = None
        for s in range(n_steps):
            step_id = str(uuid.uuid4())
            first_step = first_step or step_id
            step_rows.append({"id": step_id, "threadId": thread_id, "name": "User" if s % 2 == 0 else "Assistant",
                              "type": "user_message" if s % 2 == 0 else "assistant_message", "streaming": False,
                              "disableFeedback": False, "input": "", "metadata": {"s": s},
                              "output": " ".join(rng.choice(WORDS) for _ in range(30)),
                              "createdAt": format_timestamp(created + timedelta(seconds=s))})
        element_id = str(uuid.uuid4())
        key = element_object_key(owner["identifier"], thread_id, element_id, "data.bin")
        element_rows.append({"id": element_id, "threadId": thread_id, "type": "file", "name": "data.bin",
                             "display": "inline", "objectKey": key, "forId": first_step,
                             "mime": "application/octet-stream"})
        blobs.append((key, rng.randbytes(attachment)))
        if t % 10 == 0:
            feedback_rows.append({"id": str(uuid.uuid4()), "forId": first_step, "threadId": thread_id, "value": 1})
    return user_rows, thread_rows, step_rows, element_rows, feedback_rows, blobs


async def chunked(conn, table, rows, size=5000):
    for i in range(0, len(rows), size):
        await conn.execute(insert(table), rows[i:i + size])


async def seed(url: str, files: Path, data) -> None:
    layer = SQLAlchemyDataLayer(url)
    await layer.migrate()
    user_rows, thread_rows, step_rows, element_rows, feedback_rows, blobs = data
    async with layer.engine.begin() as conn:
        for table, rows in ((users, user_rows), (threads, thread_rows), (steps, step_rows),
                            (elements, element_rows), (feedbacks, feedback_rows)):
            await chunked(conn, table, rows)
    await layer.close()
    for key, data_bytes in blobs:  # the local client's layout: <root>/objects/<key>
        path = files / "objects" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data_bytes)


def run_phase(argv: list[str], env: dict[str, str], folder: Path) -> tuple[dict, float, float]:
    """(the JSON summary, wall seconds, peak RSS in MB) of one CLI process.

    The peak is the child's own VmHWM, polled from /proc: wait4's ru_maxrss would not do,
    as Linux carries the high-water mark across fork and exec, so a child of this process
    (which holds the dataset) would report this process's size."""
    out_path, err_path = folder / "phase.out", folder / "phase.err"
    started = time.perf_counter()
    peak_kb = 0
    with open(out_path, "w") as out, open(err_path, "w") as err:
        process = subprocess.Popen([str(CONSOLE), "--json", *argv], stdout=out, stderr=err, env=env)
        while process.poll() is None:
            try:
                status = Path(f"/proc/{process.pid}/status").read_text()
                peak_kb = max(peak_kb, int(status.split("VmHWM:")[1].split()[0]))
            except (OSError, IndexError, ValueError):  # exiting
                pass
            time.sleep(0.05)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:2])} failed ({process.returncode}): {err_path.read_text()[-2000:]}")
    return json.loads(out_path.read_text()), seconds, peak_kb / 1024


async def raw_copy(source: str, target: str, source_files: Path, target_files: Path) -> float:
    """The floor: every row SELECTed and bulk INSERTed, every blob file copied."""
    started = time.perf_counter()
    src, dst = SQLAlchemyDataLayer(source, auto_migrate=False), SQLAlchemyDataLayer(target)
    await dst.migrate()
    async with src.engine.connect() as read, dst.engine.begin() as write:
        for table in (users, threads, steps, elements, feedbacks):
            result = await read.stream(select(table))
            async for chunk in result.partitions(5000):
                await write.execute(insert(table), [dict(r._mapping) for r in chunk])
    await src.close()
    await dst.close()
    await asyncio.to_thread(shutil.copytree, source_files, target_files)
    return time.perf_counter() - started


def line(label: str, summary: dict, seconds: float, peak: float, threads: int, megabytes: float) -> str:
    return (f"{label:<34} {seconds:>8.1f} s {threads / seconds:>9.1f} threads/s {megabytes / seconds:>7.2f} MB/s "
            f"peak RSS {peak:>6.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--attachment-bytes", type=int, default=8192)
    parser.add_argument("--dynamodb-threads", type=int, default=None,
                        help="threads for the DynamoDB leg (default: --threads, at most 1,000: moto applies one "
                        "request at a time, each transaction costing it tens of milliseconds of Python)")
    parser.add_argument("--skip-dynamodb", action="store_true")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    from tests.conftest import POSTGRES_ADMIN_URL, ThrowawayDatabases

    tmp = Path(tempfile.mkdtemp(prefix="bench-ops-"))
    databases = ThrowawayDatabases(POSTGRES_ADMIN_URL)
    env = {**os.environ, "APP_DATA_DIR": str(tmp / "data"), "CHAINLIT_AUTH_SECRET": "b" * 48,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    conc = ["--concurrency", str(args.concurrency)]
    moto = None
    try:
        data = dataset(args.threads, args.steps, args.attachment_bytes)
        blob_mb = args.threads * args.attachment_bytes / 1e6
        sqlite_url = f"sqlite+aiosqlite:///{tmp / 'source.db'}"
        started = time.perf_counter()
        asyncio.run(seed(sqlite_url, tmp / "files-source", data))
        print(f"{args.threads:,} threads x {args.steps} steps, one {args.attachment_bytes:,}-byte attachment each "
              f"({blob_mb:.1f} MB of blobs), seeded in {time.perf_counter() - started:.1f} s; concurrency "
              f"{args.concurrency}")
        source = f"{sqlite_url},{(tmp / 'files-source').as_uri()}"
        postgres = databases.create()
        target = f"{postgres},{(tmp / 'files-pg').as_uri()}"
        summary, seconds, peak = run_phase(["export", str(tmp / "a1"), "--from", source, *conc], env, tmp)
        archive_mb = sum(f.stat().st_size for f in (tmp / "a1").rglob("*") if f.is_file()) / 1e6
        print(line("SQLite export -> archive", summary, seconds, peak, args.threads, blob_mb)
              + f" (archive {archive_mb:.0f} MB)")
        summary, seconds, peak = run_phase(["import", str(tmp / "a1"), "--to", target, *conc], env, tmp)
        assert summary["threads"]["created"] == args.threads, summary
        print(line("archive -> PostgreSQL import", summary, seconds, peak, args.threads, blob_mb))
        summary, seconds, peak = run_phase(["import", str(tmp / "a1"), "--to", target, *conc], env, tmp)
        assert summary["changes"] == 0, summary
        print(line("  again (0 changes: compare only)", summary, seconds, peak, args.threads, blob_mb))
        raw_target = databases.create()
        seconds = asyncio.run(raw_copy(sqlite_url, raw_target, tmp / "files-source", tmp / "files-raw"))
        print(f"{'raw bulk copy SQLite -> PostgreSQL':<34} {seconds:>8.1f} s {args.threads / seconds:>9.1f} threads/s "
              f"{blob_mb / seconds:>7.2f} MB/s (no archive, no checks; the floor)")
        if not args.skip_dynamodb:
            from benchmarks.dynamodb import start_moto, stop_moto

            n = args.dynamodb_threads or min(args.threads, 1000)
            moto, endpoint = start_moto()
            pg_source = target
            if n != args.threads:  # a smaller PostgreSQL source for the DynamoDB leg
                small = dataset(n, args.steps, args.attachment_bytes)
                pg_small = databases.create()
                asyncio.run(seed(pg_small, tmp / "files-pg-small", small))
                pg_source = f"{pg_small},{(tmp / 'files-pg-small').as_uri()}"
            mb = n * args.attachment_bytes / 1e6
            summary, seconds, peak = run_phase(["export", str(tmp / "a2"), "--from", pg_source, *conc], env, tmp)
            print(line(f"PostgreSQL export ({n:,} threads)", summary, seconds, peak, n, mb))
            dynamo = f"dynamodb://bench-{uuid.uuid4().hex[:8]}?region=us-east-1&endpoint_url={endpoint}"
            summary, seconds, peak = run_phase(["import", str(tmp / "a2"), "--to",
                                                f"{dynamo},{(tmp / 'files-dy').as_uri()}", *conc], env, tmp)
            assert summary["threads"]["created"] == n, summary
            print(line("archive -> DynamoDB (moto) import", summary, seconds, peak, n, mb))
        print("peak RSS: the CLI process's own high-water mark (VmHWM).")
    finally:
        if moto is not None:
            from benchmarks.dynamodb import stop_moto

            stop_moto(moto)
        databases.drop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
