"""Counting and timing helpers shared by the write benchmarks (`benchmarks.writes`,
`benchmarks.dynamodb_writes`).

* `StatementCounter` counts the SQL statements and transactions an SQLAlchemy engine sends,
  by verb and table (`INSERT steps`), through SQLAlchemy's engine events.
* `start_moto_behind_proxy` starts a moto server and a small counting HTTP proxy in one
  child process; `proxy_counts` reads (and resets) how many requests went through it, by
  DynamoDB operation (the `X-Amz-Target` header).
* small shared pieces: the optional `flush()`, the write-journal keyword, a Chainlit
  context, percentiles, an event-loop stall ticker and the results table.

Counts are exact and repeatable, unlike times: they explain the times.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import event

from benchmarks.motofixes import MOTO_FIXES

# ---------------------------------------------------------------------------- SQL statements
_TARGET = re.compile(r'\b(?:INTO|UPDATE|FROM)\s+"?(\w+)"?', re.IGNORECASE)


def statement_label(statement: str) -> str:
    """`INSERT steps`, `SELECT threads`: enough to see which table a layer talks to and how."""
    words = statement.lstrip().split(None, 1)
    verb = words[0].upper() if words else "?"
    match = _TARGET.search(statement)
    return f"{verb} {match.group(1)}" if match else verb


class StatementCounter:
    """Counts statements (`before_cursor_execute`) and commits on one engine while active.

    BEGIN and COMMIT go through the driver's own calls, not a cursor, so `statements` are the
    SQL a layer writes; `transactions` counts the commits (each one a round trip and, after
    a write, a WAL flush on PostgreSQL)."""

    def __init__(self, engine):
        # An AsyncEngine's events live on its sync_engine.
        self.engine = getattr(engine, "sync_engine", engine)
        self.by_label: Counter[str] = Counter()
        self.transactions = 0

    def _on_statement(self, conn, cursor, statement, parameters, context, executemany):
        self.by_label[statement_label(statement)] += 1

    def _on_commit(self, conn):
        self.transactions += 1

    def __enter__(self) -> StatementCounter:
        event.listen(self.engine, "before_cursor_execute", self._on_statement)
        event.listen(self.engine, "commit", self._on_commit)
        return self

    def __exit__(self, *exc) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on_statement)
        event.remove(self.engine, "commit", self._on_commit)

    @property
    def statements(self) -> int:
        return sum(self.by_label.values())


def per_unit(counts: Counter, units: int) -> dict[str, float]:
    """Counts divided by the number of turns or pages, most frequent first."""
    return {label: round(n / units, 2) for label, n in counts.most_common()}


def breakdown(counts: dict[str, float]) -> str:
    return ", ".join(f"{n:g} {label}" for label, n in counts.items()) or "none"


# ---------------------------------------------------------------------------- moto + proxy
# The child process: moto on a free port and, in front of it, a keep-alive HTTP proxy that
# counts every request by DynamoDB operation. Both live outside the benchmark's process so
# that neither moto's nor the proxy's CPU time shows up as a stall of the event loop being
# measured. GET /__counts__ returns the counts; ?reset=1 also zeroes them. The child prints
# both ports and ends when its stdin closes.
MOTO_AND_PROXY = MOTO_FIXES + r"""
import http.client, json, logging, sys, threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.WARNING)
moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
moto.start()
moto_port = moto.get_host_and_port()[1]
counts, lock = Counter(), threading.Lock()
HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection"}

class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as both SDKs expect
    # Headers and body leave in separate writes: without TCP_NODELAY, Nagle's algorithm
    # and the client's delayed ACK add ~40 ms to every response.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def setup(self):
        super().setup()
        self.upstream = http.client.HTTPConnection("127.0.0.1", moto_port)

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        target = self.headers.get("X-Amz-Target")
        with lock:
            counts[target.rsplit(".", 1)[-1] if target else self.command + " " + self.path.split("?")[0]] += 1
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        for attempt in (1, 2):  # moto may have closed an idle keep-alive connection
            try:
                self.upstream.request(self.command, self.path, body, headers)
                response = self.upstream.getresponse()
                data = response.read()
                break
            except (http.client.HTTPException, OSError):
                self.upstream.close()
                if attempt == 2:
                    raise
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP]
        self.reply(response.status, response.reason, kept, data)

    do_POST = do_PUT = do_DELETE = do_HEAD = forward

    def do_GET(self):
        if not self.path.startswith("/__counts__"):
            return self.forward()
        with lock:
            data = json.dumps(dict(counts)).encode()
            if "reset=1" in self.path:
                counts.clear()
        self.reply(200, "OK", [("Content-Type", "application/json")], data)

    def reply(self, status, reason, headers, data):
        self.send_response_only(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

server = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
print(moto_port, server.server_address[1], flush=True)
sys.stdin.read()
server.shutdown()
moto.stop()
"""


def start_moto_behind_proxy() -> tuple[subprocess.Popen, str, str]:
    """(child process, moto's URL, the counting proxy's URL)."""
    proc = subprocess.Popen([sys.executable, "-c", MOTO_AND_PROXY], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    ports = proc.stdout.readline().split()
    if len(ports) != 2 or not all(p.isdigit() for p in ports):
        proc.kill()
        raise RuntimeError(f"moto and proxy did not start (exit code {proc.wait()})")
    return proc, f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"


def stop_child(proc: subprocess.Popen) -> None:
    if proc.stdin:
        proc.stdin.close()  # the child's cue to stop
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def proxy_counts(proxy_url: str, reset: bool = True) -> Counter:
    """Requests seen by the proxy since the last reset, by operation. Called between phases
    only (a blocking call, but nothing is being timed then)."""
    with urllib.request.urlopen(f"{proxy_url}/__counts__{'?reset=1' if reset else ''}", timeout=30) as response:
        return Counter(json.loads(response.read()))


def cpu_seconds(pid: int | None = None) -> float | None:
    """CPU time (user + system) used so far by this process, or by child `pid` (from
    /proc: Linux only; None elsewhere). Unlike elapsed time, it does not depend on what
    else the machine is running, so it compares the work each layer makes moto do."""
    if pid is None:
        return time.process_time()
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(before: float | None, pid: int | None = None) -> float | None:
    after = cpu_seconds(pid)
    return None if before is None or after is None else after - before


# ---------------------------------------------------------------------------- layers
async def flush(layer) -> None:
    """Wait until the layer's accepted writes are in the database. A layer that writes
    synchronously has nothing to wait for (and no flush)."""
    method = getattr(layer, "flush", None)
    if method is not None:
        await method()


def journal_options(cls, directory: str) -> tuple[dict, str]:
    """The constructor keyword that puts the layer's write journal in a file under
    `directory`, so the journal's disk cost is part of what is measured — and a label for it.
    `journal_path=` if the constructor has it, else a `journal=` that takes a path."""
    parameters = inspect.signature(cls.__init__).parameters
    path = str(Path(directory) / f"journal-{uuid.uuid4().hex[:8]}.sqlite")
    for name in ("journal_path", "journal"):
        if name in parameters:
            return {name: path}, f"file ({name}=)"
    return {}, "none given (the constructor takes no journal keyword)"


def set_chainlit_context(identifier: str) -> None:
    """An HTTP-style Chainlit context with a logged-in user: the write methods of both
    layers are decorated with Chainlit's `@queue_until_user_message`, which reads
    `context.session`, and ours takes the acting user from it. Tasks created later
    (asyncio.gather) inherit it."""
    from chainlit.context import ChainlitContext, context_var
    from chainlit.session import HTTPSession
    from chainlit.user import User

    session = HTTPSession(id=str(uuid.uuid4()), client_type="webapp", user=User(identifier=identifier))
    context_var.set(ChainlitContext(session))


async def bounded(concurrency: int, calls) -> None:
    """Run the coroutines of `calls` with at most `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one(call):
        async with gate:
            await call

    await asyncio.gather(*(one(call) for call in calls))


class ThreadCursor:
    """Hands out the loaded threads in turn, wrapping around, so that each phase writes into
    threads the phase before did not just write into (a write right behind another on the
    same thread waits for it in a journaling layer: that would measure the queue)."""

    def __init__(self, ids: list[str]):
        self.ids, self.position = ids, 0

    def take(self, n: int) -> list[str]:
        chosen = [self.ids[(self.position + i) % len(self.ids)] for i in range(n)]
        self.position += n
        return chosen


# ---------------------------------------------------------------------------- timing
def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[18] if len(values) > 1 else values[0]


@asynccontextmanager
async def stall_ticker():
    """The worst event-loop stall while the block runs: how much later than asked a 1 ms
    sleep woke up. A layer that blocks the loop (a synchronous SDK call) delays every other
    session of the process by that much. Yields a dict whose "worst_ms" is set on exit, and
    "worst_cpu_ms": the most CPU the event loop's thread used between two ticks — the part
    of a stall the process's own work on the loop causes, without the time the thread waited
    for a core (a busy machine) or for the GIL (another thread of the process)."""
    result = {"worst_ms": 0.0, "worst_cpu_ms": 0.0}
    done = False

    async def tick():
        while not done:
            start, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            result["worst_ms"] = max(result["worst_ms"], (time.perf_counter() - start) * 1000 - 1)
            result["worst_cpu_ms"] = max(result["worst_cpu_ms"], (time.thread_time() - cpu) * 1000)

    task = asyncio.create_task(tick())
    await asyncio.sleep(0.01)  # let the ticker start before the work does
    try:
        yield result
    finally:
        done = True
        await task


# ---------------------------------------------------------------------------- output
def ratio(ours: float, theirs: float, higher_is_better: bool) -> float | None:
    """Oriented so that > 1 means ours is better."""
    if not ours or not theirs:
        return None
    return ours / theirs if higher_is_better else theirs / ours


def print_table(rows: list[dict]) -> None:
    """rows: {"measure", "ours", "chainlit", "ratio", "format"}."""
    width = max(len(r["measure"]) for r in rows) + 2
    print(f"{'measure':<{width}} {'ours':>12} {'chainlit':>12} {'ratio (>1: ours better)':>24}")
    for r in rows:
        fmt = r.get("format", "{:.2f}")
        cells = [fmt.format(r[k]) if r[k] is not None else "-" for k in ("ours", "chainlit")]
        shown = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        print(f"{r['measure']:<{width}} {cells[0]:>12} {cells[1]:>12} {shown:>24}")
    sys.stdout.flush()


def environment() -> dict:
    import chainlit
    import sqlalchemy

    return {"python": sys.version.split()[0], "chainlit": getattr(chainlit, "__version__", "?"),
            "sqlalchemy": sqlalchemy.__version__, "cpus": os.cpu_count()}
