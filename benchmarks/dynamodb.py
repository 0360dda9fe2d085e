"""DynamoDB benchmark on moto: our layer vs Chainlit's, same data — sidebar, search, loop stalls.

    make bench                                   # default sizes
    python -m benchmarks.dynamodb --threads 200 1000 --search-max 1000

It starts a moto server in a child process (so moto's CPU time is not counted as a stall of
our event loop), creates two tables — ours with our provisioning code from the shipped
template, Chainlit's from its documented table definition — and loads the same user with N
threads × S steps into each (sidebar.py's dataset, written straight with BatchWriteItem in
each layer's item shape; loading is not timed). For each size it prints median milliseconds
of the first sidebar page (`list_threads`, page size 20) without and with a search term
(up to --search-max threads), and runs 50 chat turns concurrently per layer next to a 1 ms
ticker task: the worst event-loop stall and the elapsed time.

Chainlit's layer calls boto3 synchronously: the whole batch of turns blocks the loop. Its
search is a case-sensitive filter on thread names over one index page, so it finds none of
the threads whose messages match; the found counts are printed next to the times.

moto is not AWS: its Query walks the whole table, so every request (and our search, one
index Query per 50 threads) gets slower as the table grows. Compare the two columns, not the numbers
with DynamoDB's. Not a test; the README records a run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

from chainlit.types import Pagination, ThreadFilter
from chainlit.user import User

from benchmarks.motofixes import MOTO_FIXES
from benchmarks.sidebar import PAGE, SEARCH, dataset
from datalayers.dynamodb import (
    FEEDBACK_DOWN,
    FEEDBACK_UP,
    REV,
    TEXT,
    TEXT_BYTES,
    TEXT_LIMIT,
    TEXT_SINCE,
    TEXT_TRUNCATED,
    DynamoDBDataLayer,
    activity_sort_key,
    feedback_id_for,
    locator_key,
    serialize,
    step_key,
    thread_key,
)
from datalayers.timestamps import format_timestamp
from storage.memory import MemoryStorage

REGION = "us-east-1"
IDENTIFIER = "bench@example.com"
TURNS = 50
FAKE_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
    # Keep a developer's real profile and config out of it.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}

# The table Chainlit documents for chainlit.data.dynamodb.DynamoDBDataLayer (the
# CloudFormation template of its DynamoDB data-layer docs): the properties that shape the data.
CHAINLIT_TABLE = {
    "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"}
                             for name in ("PK", "SK", "UserThreadPK", "UserThreadSK")],
    "KeySchema": [{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}],
    "GlobalSecondaryIndexes": [{
        "IndexName": "UserThread",
        "KeySchema": [{"AttributeName": "UserThreadPK", "KeyType": "HASH"},
                      {"AttributeName": "UserThreadSK", "KeyType": "RANGE"}],
        "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["id", "name"]},
    }],
    "BillingMode": "PAY_PER_REQUEST",
}

# The child process: a moto server on a free port, which it prints; it ends when stdin closes.
# Two fixes make moto behave as DynamoDB does for what is measured here. moto serves each
# request in its own thread with no locking in its DynamoDB backend: one lock around the
# item operations gives AWS's per-request atomicity (as the tests do). And a
# TransactWriteItems deep-copies every table it touches to be able to roll back — hundreds of
# milliseconds per transaction on a loaded table, a cost DynamoDB does not have: here it
# saves and restores only the items the transaction writes.
MOTO_SERVER = MOTO_FIXES + """
logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
"""


def start_moto() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", MOTO_SERVER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    port = proc.stdout.readline().strip()
    if not port.isdigit():
        proc.kill()
        raise RuntimeError(f"moto server did not start (exit code {proc.wait()})")
    return proc, f"http://127.0.0.1:{port}"


def stop_moto(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def items_for(data, user_id: str, ours: bool) -> list[dict]:
    """The dataset as the layer writes it. Both: threads and steps under THREAD#{id},
    feedback as a map on the rated step, threads in the UserThread index. Ours adds `_rev`,
    step locators, feedback counters, the search digest of step outputs, and sorts the index
    by last activity (Chainlit's by the time of the thread's last update_thread, here its
    creation)."""
    _, thread_rows, step_rows, feedback_rows = data
    ratings = {row["forId"]: row["value"] for row in feedback_rows}
    last_activity: dict[str, str] = {}
    rated = Counter()  # (thread id, value) -> steps
    texts: dict[str, list[str]] = {}  # thread id -> lowercased step outputs, in order
    items = []
    for row in step_rows:
        thread_id, step_id = row["threadId"], row["id"]
        item = {**step_key(thread_id, step_id), **row, "metadata": {}}
        if step_id in ratings:
            rated[thread_id, ratings[step_id]] += 1
            item["feedback"] = {"id": feedback_id_for(thread_id, step_id), "forId": step_id, "threadId": thread_id,
                                "value": ratings[step_id], "comment": None}
        if ours:
            item.update({"disableFeedback": False, REV: 1})
            items.append({**locator_key("STEP", step_id), "threadId": thread_id})
        last_activity[thread_id] = row["createdAt"]
        if ours and row["output"]:
            texts.setdefault(thread_id, []).append(row["output"].lower())
        items.append(item)
    for row in thread_rows:
        thread_id = row["id"]
        item = {**thread_key(thread_id), **row, "userId": user_id, "userIdentifier": IDENTIFIER, "metadata": {},
                "UserThreadPK": f"USER#{IDENTIFIER}", "UserThreadSK": f"TS#{row['createdAt']}"}
        if ours:
            updated = last_activity.get(thread_id, row["createdAt"])
            item.update({"updatedAt": updated, "UserThreadSK": activity_sort_key(updated, thread_id), REV: 1,
                         FEEDBACK_UP: rated[thread_id, 1], FEEDBACK_DOWN: rated[thread_id, 0]})
            item.update(search_digest(texts.get(thread_id, []), row["createdAt"]))
        items.append(item)
    return items


def search_digest(texts: list[str], created_at: str) -> dict:
    """The digest our layer keeps on a thread it wrote from the start: step outputs up to
    TEXT_LIMIT bytes (then marked truncated), started with the thread."""
    digest, size, truncated = [], 0, False
    for text in texts:
        if size + len(text.encode()) > TEXT_LIMIT:
            truncated = True
            break
        digest.append(text)
        size += len(text.encode())
    return {TEXT: digest, TEXT_BYTES: size, TEXT_SINCE: created_at, **({TEXT_TRUNCATED: True} if truncated else {})}


def batch_write(client, table: str, items: list[dict]) -> None:
    for i in range(0, len(items), 25):
        requests = {table: [{"PutRequest": {"Item": serialize(item)}} for item in items[i:i + 25]]}
        while requests:
            requests = client.batch_write_item(RequestItems=requests).get("UnprocessedItems")


async def timed_page(layer, user_id: str, search, repeat: int) -> tuple[float, int]:
    """Median ms of the first sidebar page, and how many threads it holds. (No warm-up
    run: the client is warm from loading, and a search takes tens of seconds on moto.)"""
    filters = ThreadFilter(userId=user_id, search=search)
    times, found = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        found = len((await layer.list_threads(Pagination(first=PAGE), filters)).data)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), found


async def chat_turn(layer, user_id: str, i: int) -> None:
    """What Chainlit writes for one exchange: the thread, the question, the streamed answer."""
    thread_id, question, answer = (str(uuid.uuid4()) for _ in range(3))
    now = format_timestamp(datetime.now(UTC))
    step = {"threadId": thread_id, "createdAt": now, "streaming": False, "metadata": {}}
    await layer.update_thread(thread_id, name=f"turn {i}", user_id=user_id)
    await layer.create_step({**step, "id": question, "type": "user_message", "name": "user", "output": "hi"})
    await layer.create_step({**step, "id": answer, "type": "assistant_message", "name": "Assistant", "output": "",
                             "streaming": True})
    await layer.update_step({**step, "id": answer, "type": "assistant_message", "name": "Assistant",
                             "output": "answer " * 50})
    await layer.update_thread(thread_id, metadata={"session": {"turn": i}})


async def concurrent_turns(layer, user_id: str) -> tuple[float, float]:
    """TURNS chat turns at once next to a 1 ms ticker: the worst stall of the event loop
    (how much later than asked the ticker woke up) and the elapsed time, in ms. A layer that
    journals its writes (`flush()`) is timed until they are in the table."""
    worst, done = 0.0, False

    async def ticker():
        nonlocal worst
        while not done:
            start = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, (time.perf_counter() - start) * 1000 - 1)

    gc.collect()  # the benchmark's own garbage is not the layer's stall
    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    await asyncio.gather(*(chat_turn(layer, user_id, i) for i in range(TURNS)))
    if hasattr(layer, "flush"):
        await layer.flush()
    elapsed = (time.perf_counter() - start) * 1000
    done = True
    await task
    return worst, elapsed


def row(n: int, label: str, ours: float, theirs: float, found=None) -> None:
    if found is None:
        cells, ratio = (f"{ours:.1f}", f"{theirs:.1f}"), f"{theirs / ours:.1f}x"
    else:  # different answers: no ratio
        cells, ratio = (f"{ours:.1f} ({found[0]})", f"{theirs:.1f} ({found[1]})"), ""
    print(f"{n:>8}  {label:<42} {cells[0]:>14} {cells[1]:>14} {ratio:>8}")
    sys.stdout.flush()


async def bench_size(n, n_steps, repeat, search_repeat, search_max, endpoint, client) -> None:
    from chainlit.data.dynamodb import DynamoDBDataLayer as ChainlitDynamoDBDataLayer

    suffix = uuid.uuid4().hex[:8]
    ours = DynamoDBDataLayer.from_url(f"dynamodb://ours-{suffix}?region={REGION}&endpoint_url={endpoint}",
                                      storage=MemoryStorage())
    theirs_table = f"chainlit-{suffix}"
    try:
        await ours.provision()  # the shipped template, through our provisioning code
        client.create_table(TableName=theirs_table, **CHAINLIT_TABLE)
        theirs = ChainlitDynamoDBDataLayer(table_name=theirs_table, client=client, storage_provider=MemoryStorage(),
                                           user_thread_limit=PAGE)
        our_user = await ours.create_user(User(identifier=IDENTIFIER))
        their_user = await theirs.create_user(User(identifier=IDENTIFIER))
        data = dataset(n, n_steps)
        batch_write(client, ours.table_name, items_for(data, our_user.id, ours=True))
        batch_write(client, theirs_table, items_for(data, their_user.id, ours=False))

        pages = [await timed_page(layer, user.id, None, repeat) for layer, user in ((ours, our_user), (theirs, their_user))]
        if [found for _, found in pages] != [PAGE, PAGE]:
            raise RuntimeError(f"first page should hold {PAGE} threads for both layers, got {pages}")
        # The turns before the search, whose minute of work leaves garbage behind to collect.
        stalls = [await concurrent_turns(layer, user.id) for layer, user in ((ours, our_user), (theirs, their_user))]
        searches = None
        if n <= search_max:
            searches = [await timed_page(layer, user.id, SEARCH, search_repeat)
                        for layer, user in ((ours, our_user), (theirs, their_user))]
            expected = min(PAGE, sum(1 for t in range(n) if t % 100 == 7))  # dataset(): 1% of threads match
            if searches[0][1] != expected:
                raise RuntimeError(f"our search found {searches[0][1]} threads, expected {expected}")

        row(n, "sidebar page (median ms)", pages[0][0], pages[1][0])
        if searches:
            row(n, "search page (median ms, threads found)", searches[0][0], searches[1][0],
                found=(searches[0][1], searches[1][1]))
        else:
            print(f"{n:>8}  {'search page: skipped (above --search-max)':<42}")
        row(n, f"{TURNS} concurrent turns: worst loop stall (ms)", stalls[0][0], stalls[1][0])
        row(n, f"{TURNS} concurrent turns: elapsed (ms)", stalls[0][1], stalls[1][1])
    finally:
        await ours.close()
        for table in (ours.table_name, theirs_table):
            try:
                client.delete_table(TableName=table)
            except client.exceptions.ResourceNotFoundException:
                pass


async def run(sizes, n_steps, repeat, search_repeat, search_max, endpoint) -> None:
    import boto3
    from chainlit.context import ChainlitContext, context_var
    from chainlit.session import HTTPSession

    logging.getLogger("chainlit").setLevel(logging.ERROR)  # Chainlit's layers log every call
    context_var.set(ChainlitContext(HTTPSession(id=str(uuid.uuid4()), client_type="webapp")))
    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
    print(f"DynamoDB on moto, sidebar page (first={PAGE}), {n_steps} steps per thread, "
          f"median of {repeat} page runs and {search_repeat} search runs; ratio = Chainlit's / ours")
    print(f"{'threads':>8}  {'':<42} {'ours':>14} {'chainlit':>14} {'ratio':>8}")
    for n in sizes:
        await bench_size(n, n_steps, repeat, search_repeat, search_max, endpoint, client)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dynamodb", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[200])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=15)
    # Every moto Query sorts the whole table: a search takes ~2 s at 200 threads and ~30 s
    # at 1,000, so one run by default, and none past --search-max.
    parser.add_argument("--search-repeat", type=int, default=1)
    parser.add_argument("--search-max", type=int, default=200)
    args = parser.parse_args()
    os.environ.update(FAKE_AWS_ENVIRONMENT)
    os.environ.pop("AWS_PROFILE", None)
    proc, endpoint = start_moto()
    try:
        asyncio.run(run(args.threads, args.steps, args.repeat, args.search_repeat, args.search_max, endpoint))
    finally:
        stop_moto(proc)


if __name__ == "__main__":
    main()
