"""Write-path benchmark on DynamoDB (moto): our layer vs Chainlit's, request by request.

    python -m benchmarks.dynamodb_writes                 # 100 threads x 10 steps
    python -m benchmarks.dynamodb_writes --threads 20 --writes 100 --turns 5 --json

It starts one child process holding a moto server and, in front of it, a small HTTP proxy
that counts every request by DynamoDB operation (the `X-Amz-Target` header: GetItem,
PutItem, UpdateItem, Query, BatchGetItem, TransactWriteItems...). Both layers talk to the
proxy, each to its own table — ours created by our provisioning code from the shipped
template, Chainlit's from its documented table definition — and the same user's N threads
x S steps are written into each through the layer's public API. Then, per layer:

* requests per chat turn (the user's message, the assistant's empty streaming message, its
  final text; then flush), by operation — exact counts, the explanation of the times;
* requests per sidebar page (list_threads, page size 20, no filter), by operation, and its
  median ms;
* step writes/s: --writes `create_step` calls into existing threads, --concurrency in flight;
* a chat turn, median ms, turns one after the other;
* --concurrent-turns turns at once (asyncio.gather): elapsed seconds, and the worst
  event-loop stall meanwhile (a 1 ms ticker task). Chainlit's layer calls boto3
  synchronously, so its requests block the loop, and with it every other session. The most
  CPU the loop's thread used between two ticks is the part of a stall the layer's own work
  causes (a busy machine, or another thread holding the GIL, adds to the stall). Also the
  CPU seconds the moto process (server and proxy) and the benchmark's own process spent on
  those turns (Linux): unlike elapsed time and stalls, they do not depend on what else the
  machine is running.

A layer with a `flush()` (writes journaled, applied in the background) is flushed at the end
of every timed batch and given a journal file, so what is timed ends with the data in the
table. moto is not DynamoDB (its Query walks the whole table; the proxy adds a hop to every
request, for both layers): compare the columns, not the numbers with AWS's. Not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime

# The same fake credentials and the same Chainlit table as the read benchmark.
from benchmarks.dynamodb import CHAINLIT_TABLE, FAKE_AWS_ENVIRONMENT, REGION
from benchmarks.requestcount import (
    ThreadCursor,
    bounded,
    breakdown,
    cpu_seconds,
    cpu_used,
    environment,
    flush,
    journal_options,
    print_table,
    proxy_counts,
    ratio,
    set_chainlit_context,
    stall_ticker,
    start_moto_behind_proxy,
    stop_child,
)
from benchmarks.writes import IDENTIFIER, PAGE, chat_turn, dataset, message, stamp


async def preload(layer, user_id: str, threads: list[dict], concurrency: int) -> None:
    """The history, through the public API: each thread's owner first, then its steps in order."""
    async def one_thread(thread):
        await layer.update_thread(thread["id"], name=thread["name"], user_id=user_id)
        for step in thread["steps"]:
            await layer.create_step(dict(step))

    await bounded(concurrency, (one_thread(t) for t in threads))
    await flush(layer)


async def measure(layer, user_id: str, threads: list[dict], proxy: str, server_pid: int, args) -> dict:
    """Every measure for one layer; requests are counted per phase (the proxy's counts are
    reset before each, and nothing else talks to it meanwhile)."""
    from chainlit.types import Pagination, ThreadFilter

    ids = [t["id"] for t in threads]
    cursor = ThreadCursor(ids)
    filters = ThreadFilter(userId=user_id)
    result: dict = {}

    for thread_id in cursor.take(2):  # warm-up: connections, credentials, caches
        await chat_turn(layer, thread_id)
    await flush(layer)
    await layer.list_threads(Pagination(first=PAGE), filters)

    proxy_counts(proxy)
    counted = cursor.take(args.count_turns)
    for thread_id in counted:
        await chat_turn(layer, thread_id)
        await flush(layer)
    per_turn = proxy_counts(proxy)
    result["requests_per_turn"] = sum(per_turn.values()) / len(counted)
    result["turn_requests"] = {op: round(n / len(counted), 2) for op, n in per_turn.most_common()}

    times, found = [], 0
    for _ in range(args.repeat):
        start = time.perf_counter()
        found = len((await layer.list_threads(Pagination(first=PAGE), filters)).data)
        times.append((time.perf_counter() - start) * 1000)
    per_page = proxy_counts(proxy)
    if found != min(PAGE, len(ids)):
        raise RuntimeError(f"{type(layer).__module__}: the sidebar page holds {found} threads")
    result["sidebar_median_ms"] = statistics.median(times)
    result["requests_per_page"] = sum(per_page.values()) / args.repeat
    result["page_requests"] = {op: round(n / args.repeat, 2) for op, n in per_page.most_common()}

    now = stamp(datetime.now(UTC))
    targets = cursor.take(args.writes)
    writes = (layer.create_step(message(thread_id, str(uuid.uuid4()), "user_message", f"message {i}", False, now))
              for i, thread_id in enumerate(targets))
    start = time.perf_counter()
    await bounded(args.concurrency, writes)
    await flush(layer)
    result["writes_per_s"] = args.writes / (time.perf_counter() - start)
    proxy_counts(proxy)

    times = []
    for thread_id in cursor.take(args.turns):
        start = time.perf_counter()
        await chat_turn(layer, thread_id)
        await flush(layer)
        times.append((time.perf_counter() - start) * 1000)
    result["turn_median_ms"] = statistics.median(times)

    targets = cursor.take(args.concurrent_turns)
    gc.collect()  # the benchmark's own garbage is not the layer's stall
    async with stall_ticker() as stall:
        server, client = cpu_seconds(server_pid), cpu_seconds()
        start = time.perf_counter()
        await asyncio.gather(*(chat_turn(layer, thread_id) for thread_id in targets))
        await flush(layer)
        result["concurrent_turns_s"] = time.perf_counter() - start
        result["server_cpu_s"], result["client_cpu_s"] = cpu_used(server, server_pid), cpu_used(client)
    result["worst_stall_ms"], result["worst_stall_cpu_ms"] = stall["worst_ms"], stall["worst_cpu_ms"]
    proxy_counts(proxy)
    return result


MEASURES = [  # key, label, higher is better, format
    ("requests_per_turn", "requests per chat turn", False, "{:.1f}"),
    ("requests_per_page", "requests per sidebar page", False, "{:.1f}"),
    ("sidebar_median_ms", "sidebar page (first=20) median ms", False, "{:.1f}"),
    ("writes_per_s", "step writes/s ({writes}, {concurrency} in flight)", True, "{:.0f}"),
    ("turn_median_ms", "chat turn median ms", False, "{:.1f}"),
    ("concurrent_turns_s", "{concurrent_turns} concurrent turns, elapsed s", False, "{:.2f}"),
    ("worst_stall_ms", "worst event-loop stall in those turns, ms", False, "{:.1f}"),
    ("worst_stall_cpu_ms", "most loop-thread CPU between two ticks, ms", False, "{:.1f}"),
    ("server_cpu_s", "moto's CPU s in those turns (server + proxy)", False, "{:.2f}"),
    ("client_cpu_s", "the benchmark process's CPU s in those turns", False, "{:.2f}"),
]


async def run(args, moto_url: str, proxy: str, server_pid: int) -> dict:
    import boto3
    from chainlit.data.dynamodb import DynamoDBDataLayer as ChainlitDynamoDBDataLayer
    from chainlit.user import User

    from datalayers.dynamodb import DynamoDBDataLayer
    from storage.memory import MemoryStorage

    logging.getLogger("chainlit").setLevel(logging.ERROR)  # Chainlit's layers log every call
    set_chainlit_context(IDENTIFIER)
    # Table management goes straight to moto: only the layers' own requests are counted.
    admin = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_url)
    suffix = uuid.uuid4().hex[:8]
    theirs_table = f"chainlit-writes-{suffix}"
    threads = dataset(args.threads, args.steps)
    layers, tables, loads = [], [theirs_table], {}
    with tempfile.TemporaryDirectory(prefix="bench-journal-") as journal_dir:
        try:
            options, journal = journal_options(DynamoDBDataLayer, journal_dir)
            ours = DynamoDBDataLayer.from_url(f"dynamodb://ours-writes-{suffix}?region={REGION}&endpoint_url={proxy}",
                                              storage=MemoryStorage(), **options)
            layers.append(ours)
            tables.append(ours.table_name)
            await ours.provision()  # the shipped template, through our provisioning code
            admin.create_table(TableName=theirs_table, **CHAINLIT_TABLE)
            client = boto3.client("dynamodb", region_name=REGION, endpoint_url=proxy)
            theirs = ChainlitDynamoDBDataLayer(table_name=theirs_table, client=client,
                                               storage_provider=MemoryStorage(), user_thread_limit=PAGE)
            layers.append(theirs)
            our_user = await ours.create_user(User(identifier=IDENTIFIER))
            their_user = await theirs.create_user(User(identifier=IDENTIFIER))

            for who, layer, user in (("ours", ours, our_user), ("chainlit", theirs, their_user)):
                start = time.perf_counter()
                await preload(layer, user.id, threads, args.preload_concurrency)
                loads[who] = time.perf_counter() - start
            print(f"loaded {args.threads} threads x {args.steps} steps through each layer's API: ours in "
                  f"{loads['ours']:.1f} s, Chainlit's in {loads['chainlit']:.1f} s", file=sys.stderr)

            results = {"ours": await measure(ours, our_user.id, threads, proxy, server_pid, args),
                       "chainlit": await measure(theirs, their_user.id, threads, proxy, server_pid, args)}
        finally:
            for layer in layers:
                try:
                    await layer.close()  # ours: waits for its journal first
                except Exception as exc:  # the tables are deleted below either way
                    print(f"closing {type(layer).__module__} failed: {exc!r}", file=sys.stderr)
            for table in tables:
                try:
                    admin.delete_table(TableName=table)
                except admin.exceptions.ResourceNotFoundException:
                    pass

    rows = [{"measure": label.format(**vars(args)), "key": key, "ours": results["ours"][key],
             "chainlit": results["chainlit"][key], "format": fmt,
             "ratio": ratio(results["ours"][key], results["chainlit"][key], higher)}
            for key, label, higher, fmt in MEASURES]
    return {
        "context": {"backend": "moto (DynamoDB emulator) behind a counting proxy", "threads": args.threads,
                    "steps_per_thread": args.steps, "our_journal": journal, "our_flush": hasattr(ours, "flush"),
                    "preload_s": loads, **environment()},
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "results": results,
        "table": [{k: v for k, v in r.items() if k != "format"} for r in rows],
        "_rows": rows,
    }


def report(result: dict) -> None:
    ctx, results = result["context"], result["results"]
    print(f"DynamoDB on moto behind a counting proxy; {ctx['threads']} threads x {ctx['steps_per_thread']} steps "
          f"per layer; Python {ctx['python']}, Chainlit {ctx['chainlit']}, {ctx['cpus']} CPUs")
    print(f"our layer: journal {ctx['our_journal']}, flush() {'awaited after every batch' if ctx['our_flush'] else 'absent'}")
    print("ratio > 1 means ours is better (Chainlit's / ours for times and counts, ours / Chainlit's for writes/s)")
    print_table(result["_rows"])
    for key, label in (("turn_requests", "per chat turn"), ("page_requests", "per sidebar page")):
        for who in ("ours", "chainlit"):
            print(f"{who + ':':<10} {label:<17} {breakdown(results[who][key])}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dynamodb_writes",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=100, help="threads loaded for the user (default 100)")
    parser.add_argument("--steps", type=int, default=10, help="steps per loaded thread (default 10)")
    parser.add_argument("--writes", type=int, default=500, help="step writes for writes/s (default 500)")
    parser.add_argument("--concurrency", type=int, default=10, help="writes in flight for writes/s (default 10)")
    parser.add_argument("--turns", type=int, default=20, help="sequential chat turns timed (default 20)")
    parser.add_argument("--concurrent-turns", type=int, default=50, help="chat turns run at once (default 50)")
    # A journaling layer may fold the assistant's create and update into one write, or not,
    # depending on timing: the count per turn is an average over several turns.
    parser.add_argument("--count-turns", type=int, default=10,
                        help="chat turns whose requests are counted (default 10)")
    parser.add_argument("--repeat", type=int, default=10, help="sidebar pages timed and counted (default 10)")
    parser.add_argument("--preload-concurrency", type=int, default=10, help="threads loaded at once (default 10)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    os.environ.update(FAKE_AWS_ENVIRONMENT)
    os.environ.pop("AWS_PROFILE", None)
    proc, moto_url, proxy = start_moto_behind_proxy()
    try:
        result = asyncio.run(run(args, moto_url, proxy, proc.pid))
    finally:
        stop_child(proc)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "_rows"}, indent=2))
    else:
        report(result)


if __name__ == "__main__":
    main()
