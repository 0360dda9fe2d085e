"""The HTTP API (`/api/v1`) on the real app: its reads against Chainlit's own routes on the
same app and data, and its chat turn against the model call alone.

    python -m benchmarks.api                               # SQLite, 200 threads x 4 messages
    python -m benchmarks.api --database postgresql --threads 200 --requests 50 --turns 30

It loads one user's N threads x S messages (1 thread in 10 mentions the search term) into a
fresh database through our data layer in-process, before the app starts (the same
`build_data_layer()` the app uses, so every derived column is right and loading takes
seconds); `--database postgresql` makes a throwaway database on BENCH_POSTGRES_URL's server
and drops it afterwards. Then it starts the app (`chainlit run`, API rate limit raised, model
titles off so a turn is one model call) with the OpenAI-compatible test server as the model,
and measures, each pair of sides alternating request by request so that the machine's drift
hits both alike:

1. listing: `GET /api/v1/conversations?limit=20` (bearer token) vs Chainlit's sidebar route
   `POST /project/threads` (login cookie), first page and a search page;
2. reading: `GET /api/v1/conversations/{id}/messages` vs `GET /project/thread/{id}`, on a
   conversation of 20 messages made by 10 API turns (real generation records);
3. a chat turn: `POST /api/v1/chat` (stream=false) into an existing conversation vs the very
   request the app sent the model for that turn (recorded by the test server), replayed
   directly; streamed: time to the first `delta` event vs to the first content chunk;
4. 20 API turns at once (new conversations) vs the 20 model requests at once, and every
   answer read back through the API;
5. bytes of the reading and listing responses, JSON and on the wire (the app gzips);

and the CPU time the app's process spends per turn (from /proc), which explains the times.

Any failed request ends the run with a non-zero status. Not a test: times depend on the machine.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from benchmarks.requestcount import bounded, environment, flush, p95, set_chainlit_context
from benchmarks.sessions import bench_database
from tests.e2e.app_runner import APP_ENV_PREFIXES, ROOT, RunningApp
from tests.servers.openai_compat import OpenAICompatServer

USER, PASSWORD = "bench", "bench-password-1"
SEARCH = "needle"
PAGE = 20
WORDS = "the quick brown fox jumps over a lazy dog while planning budgets and holidays".split()


# ---------------------------------------------------------------------------- set-up
def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # as Chainlit's frontend sends it


def step(thread_id: str, kind: str, output: str, created: str) -> dict:
    """A step dict shaped like chainlit.Message.to_dict(), what Chainlit hands a data layer."""
    return {"id": str(uuid.uuid4()), "threadId": thread_id, "parentId": None, "createdAt": created, "start": created,
            "end": created, "output": output, "name": USER if kind == "user_message" else "Assistant", "type": kind,
            "streaming": False, "isError": False, "waitForAnswer": False, "metadata": {}, "tags": None}


def app_env(tmp: Path, database_url: str) -> dict:
    """The settings RunningApp gives the app, for the CLI and the in-process loader: all three
    must find the same database, users file and auth secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(APP_ENV_PREFIXES) and k != "CI"}
    return {**env, "APP_DATA_DIR": str(tmp / "data"), "DATABASE_URL": database_url, "STORAGE_URL": (tmp / "files").as_uri()}


def users_cli(env: dict, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([sys.executable, "-m", "chat.users", *args], cwd=ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"chat.users {' '.join(args)} exited with {done.returncode}: {done.stdout}{done.stderr}")
    return done.stdout


async def load(env: dict, n_threads: int, n_steps: int) -> list[str]:
    """The user's history, written through the app's own data layer (journal included) and
    flushed; returns the thread ids. The app is not running yet, so nothing caches a
    thread owner or holds the journal."""
    from chainlit.user import User

    from settings import load_settings

    layer = load_settings(env, dotenv=False, export_secret=False).build_data_layer()
    try:
        user = await layer.create_user(User(identifier=USER, metadata={}))  # runs the migrations
        set_chainlit_context(USER)  # the layer's writes take the acting user from it
        base = datetime.now(UTC) - timedelta(days=2)
        ids = [str(uuid.uuid4()) for _ in range(n_threads)]

        async def one(t: int, thread_id: str) -> None:
            await layer.update_thread(thread_id, name=f"Conversation {t}", user_id=user.id)
            for s in range(n_steps):
                words = [WORDS[(t * 7 + s * 3 + k) % len(WORDS)] for k in range(30)]
                if t % 10 == 3 and s == n_steps - 1:
                    words.append(SEARCH)
                kind = "user_message" if s % 2 == 0 else "assistant_message"
                await layer.create_step(step(thread_id, kind, " ".join(words),
                                             stamp(base + timedelta(minutes=t, seconds=s))))

        await bounded(8, (one(t, thread_id) for t, thread_id in enumerate(ids)))
        await flush(layer)
    finally:
        await layer.close()
    return ids


# ---------------------------------------------------------------------------- HTTP helpers
async def ok(response: httpx.Response, status: int = 200) -> httpx.Response:
    if response.status_code != status:
        await response.aread()
        raise RuntimeError(f"{response.request.method} {response.request.url.path} answered {response.status_code} "
                           f"(expected {status}): {response.text[:400]}")
    return response


async def timed(send) -> tuple[float, httpx.Response]:
    start = time.perf_counter()
    response = await ok(await send())
    return (time.perf_counter() - start) * 1000, response


async def paired(n: int, ours, theirs) -> tuple[list[float], list[float], httpx.Response, httpx.Response]:
    """n timed requests per side, alternating which side goes first, after 3 warm-ups each."""
    for _ in range(3):
        await timed(ours)
        await timed(theirs)
    a: list[float] = []
    b: list[float] = []
    last_ours = last_theirs = None
    for i in range(n):
        order = ((ours, a), (theirs, b)) if i % 2 == 0 else ((theirs, b), (ours, a))
        for send, out in order:
            ms, response = await timed(send)
            out.append(ms)
            if send is ours:
                last_ours = response
            else:
                last_theirs = response
    return a, b, last_ours, last_theirs


async def read_stream(client: httpx.AsyncClient, url: str, body: dict) -> list[tuple[float, str]]:
    """The response's lines, each with the ms since the request was sent."""
    start = time.perf_counter()
    timeline = []
    async with client.stream("POST", url, json=body) as response:
        await ok(response)
        async for line in response.aiter_lines():
            timeline.append(((time.perf_counter() - start) * 1000, line))
    return timeline


def first(timeline: list[tuple[float, str]], accept) -> float:
    found = next((ms for ms, line in timeline if accept(line)), None)
    if found is None:
        raise RuntimeError(f"the stream ended without the line looked for: {[line for _, line in timeline[-4:]]}")
    return found


def api_delta(line: str) -> bool:
    return line.startswith("event: delta")


def model_content(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))  # the role chunk carries no text


async def direct(model: httpx.AsyncClient, body: dict) -> float:
    """The model call alone: the app's recorded request, read to its end as the app reads it."""
    timeline = await read_stream(model, "/chat/completions", body)
    return first(timeline, lambda line: line == "data: [DONE]")


def app_cpu_ms(pid: int) -> float:
    """CPU time (user + system) the app's process has used: times are noisy, this explains them."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def stats(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), p95(values)


# ---------------------------------------------------------------------------- the measures
async def listing(rows: list, notes: list, api, web, n: int) -> None:
    for label, search in (("first page", None), ("search page", SEARCH)):
        query = {"limit": PAGE, **({"search": search} if search else {})}
        payload = {"pagination": {"first": PAGE}, "filter": {"search": search} if search else {}}
        a, b, ours, theirs = await paired(n, lambda q=query: api.get("/conversations", params=q),
                                          lambda p=payload: web.post("/project/threads", json=p))
        ours_ids = [c["id"] for c in ours.json()["data"]]
        theirs_ids = [t["id"] for t in theirs.json()["data"]]
        if ours_ids != theirs_ids:
            raise RuntimeError(f"listing, {label}: the API and Chainlit's route list different threads")
        add_times(rows, f"list, {label}", a, b, "Chainlit's POST /project/threads")
        rows.append(row(f"list, {label}: JSON bytes", len(ours.content), len(theirs.content), "same", "{:,.0f}"))
        notes.append(f"Listing ({label}): API median {statistics.median(a):.1f} ms vs Chainlit's route "
                     f"{statistics.median(b):.1f} ms ({statistics.median(a) / statistics.median(b):.2f}x), "
                     f"the same {len(ours_ids)} threads in the same order.")


async def reading(rows: list, notes: list, api, web, conversation_id: str, n: int) -> None:
    a, b, ours, theirs = await paired(n, lambda: api.get(f"/conversations/{conversation_id}/messages"),
                                      lambda: web.get(f"/project/thread/{conversation_id}"))
    messages, steps = ours.json()["data"], theirs.json()["steps"]
    add_times(rows, "read a conversation", a, b, "Chainlit's GET /project/thread/{id}")
    rows.append(row("  messages / steps returned", len(messages), len(steps), "same", "{:.0f}"))
    rows.append(row("  JSON bytes", len(ours.content), len(theirs.content), "same", "{:,.0f}"))
    rows.append(row("  bytes on the wire (gzip)", ours.num_bytes_downloaded, theirs.num_bytes_downloaded, "same",
                    "{:,.0f}"))
    notes.append(f"Reading: API median {statistics.median(a):.1f} ms vs Chainlit's route {statistics.median(b):.1f} ms; "
                 f"{len(messages)} messages in {len(ours.content):,} bytes vs {len(steps)} steps in "
                 f"{len(theirs.content):,} bytes ({len(ours.content) / len(theirs.content):.2f}x).")


async def turns(rows: list, notes: list, api, model, llm, cpu, thread_ids: list[str], n: int) -> None:
    """Each API turn continues a different loaded conversation; the request the app then sent
    the model is replayed directly right after, so both sides carry the same history."""
    def replayed(query: str, since: int) -> dict:
        bodies = llm.chat_requests()[since:]  # the test server records the direct calls too
        if len(bodies) != 1 or query not in json.dumps(bodies[0]):
            raise RuntimeError(f"expected the app to send the model one request for {query!r}, saw {len(bodies)}")
        return bodies[0]

    ours, floor = [], []
    for i in range(n + 3):  # 3 warm-ups
        if i == 3:
            cpu_before = cpu()
        query = f"Whole turn {i}: what should I plan next?"
        body = {"query": query, "conversation_id": thread_ids[i % len(thread_ids)], "stream": False}
        since = len(llm.chat_requests())
        ms, response = await timed(lambda b=body: api.post("/chat", json=b))
        if not response.json()["text"].startswith("Echo: "):
            raise RuntimeError(f"unexpected answer {response.text[:200]}")
        base = await direct(model, replayed(query, since))
        if i >= 3:
            ours.append(ms)
            floor.append(base)
    cpu_per_turn = (cpu() - cpu_before) / n
    add_times(rows, "chat turn, stream=false", ours, floor, "the model call alone")
    rows.append(row("  app CPU per turn, ms", cpu_per_turn, None, "", "{:.1f}"))
    overhead = [a - b for a, b in zip(ours, floor, strict=True)]
    rows.append(row("  overhead per turn, median ms", statistics.median(overhead), None, "", "{:.1f}"))
    notes.append(f"Chat turn: API median {statistics.median(ours):.1f} ms, the model alone {statistics.median(floor):.1f} ms: "
                 f"{statistics.median(overhead):.1f} ms of overhead per turn at the median (p95 of the turn "
                 f"{p95(ours):.1f} ms vs {p95(floor):.1f} ms); the app's process used {cpu_per_turn:.1f} ms of CPU per turn.")

    started, first_ours, first_floor, whole = [], [], [], []
    offset = n + 3
    for i in range(n + 3):
        query = f"Streamed turn {i}: and then?"
        body = {"query": query, "conversation_id": thread_ids[(offset + i) % len(thread_ids)]}
        since = len(llm.chat_requests())
        timeline = await read_stream(api, "/chat", body)
        done = first(timeline, lambda line: line == "event: done")
        events = [(a[1][7:], json.loads(b[1][6:])) for a, b in zip(timeline, timeline[1:], strict=False)
                  if a[1].startswith("event: ") and b[1].startswith("data: ")]
        if "".join(d["text"] for e, d in events if e == "delta") != events[-1][1]["text"]:
            raise RuntimeError("the streamed deltas do not add up to the text of `done`")
        floor_timeline = await read_stream(model, "/chat/completions", replayed(query, since))
        if i >= 3:
            started.append(first(timeline, lambda line: line == "event: start"))
            first_ours.append(first(timeline, api_delta))
            first_floor.append(first(floor_timeline, model_content))
            whole.append(done)
    add_times(rows, "streamed: first delta", first_ours, first_floor, "first chunk of the model alone")
    rows.append(row("  `start` event, median ms", statistics.median(started), None, "", "{:.1f}"))
    notes.append(f"Streamed: the first `delta` after {statistics.median(first_ours):.1f} ms at the median (`start` after "
                 f"{statistics.median(started):.1f} ms), the model's first chunk after {statistics.median(first_floor):.1f} ms "
                 f"(+{statistics.median(first_ours) - statistics.median(first_floor):.1f} ms); whole streamed turn "
                 f"{statistics.median(whole):.1f} ms.")


async def concurrent(rows: list, notes: list, api, model, llm, cpu, n: int) -> None:
    before = len(llm.chat_requests())
    queries = [f"Concurrent question {i}" for i in range(n)]
    cpu_before, start = cpu(), time.perf_counter()
    answers = await asyncio.gather(*(api.post("/chat", json={"query": q, "stream": False}) for q in queries))
    elapsed, busy = (time.perf_counter() - start) * 1000, cpu() - cpu_before
    answers = [(await ok(a)).json() for a in answers]
    bodies = llm.chat_requests()[before:]
    if len(bodies) != n:
        raise RuntimeError(f"{n} concurrent turns made {len(bodies)} model requests")
    stored = 0
    for query, answer in zip(queries, answers, strict=True):
        page = (await ok(await api.get(f"/conversations/{answer['conversation_id']}/messages"))).json()["data"]
        stored += sum(1 for m in page if (m["role"], m["text"]) in (("user", query), ("assistant", answer["text"])))
    start = time.perf_counter()
    await asyncio.gather(*(direct(model, body) for body in bodies))
    floor = (time.perf_counter() - start) * 1000
    rows.append(row(f"{n} turns at once, elapsed ms", elapsed, floor, f"{n} model calls at once"))
    rows.append(row("  app CPU in that time, ms", busy, None, "", "{:.0f}"))
    rows.append(row("  messages stored / expected", stored, 2 * n, "", "{:.0f}"))
    notes.append(f"Concurrency: {n} API turns at once took {elapsed:.0f} ms ({elapsed / n:.1f} ms per turn), the {n} "
                 f"model calls alone {floor:.0f} ms; the app used {busy:.0f} ms of CPU meanwhile; "
                 f"{stored}/{2 * n} messages read back through the API.")
    if stored != 2 * n:
        raise RuntimeError(f"only {stored} of {2 * n} messages of the concurrent turns were stored")


def row(measure: str, ours, other, vs: str, fmt: str = "{:.1f}") -> dict:
    return {"measure": measure, "ours": ours, "other": other, "vs": vs, "format": fmt}


def add_times(rows: list, measure: str, ours: list[float], other: list[float], vs: str) -> None:
    (m1, p1), (m2, p2) = stats(ours), stats(other)
    rows.append(row(f"{measure}, median ms", m1, m2, vs))
    rows.append(row(f"{measure}, p95 ms", p1, p2, "same"))


def print_table(rows: list[dict]) -> None:
    width = max(len(r["measure"]) for r in rows) + 2
    print(f"{'measure':<{width}} {'API':>10} {'other':>10} {'API/other':>10}  other side")
    for r in rows:
        cells = [r["format"].format(r[k]) if r[k] is not None else "-" for k in ("ours", "other")]
        ratio = f"{r['ours'] / r['other']:.2f}x" if r["other"] and r["ours"] is not None else "-"
        print(f"{r['measure']:<{width}} {cells[0]:>10} {cells[1]:>10} {ratio:>10}  {r['vs']}")


# ---------------------------------------------------------------------------- the run
async def run(args) -> tuple[list, list, dict]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    (tmp / "data").mkdir()
    database_url, databases = bench_database(args, tmp / "data")
    rows: list = []
    notes: list = []
    try:
        env = app_env(tmp, database_url)
        users_cli(env, "add", USER, "--password-stdin", stdin=f"{PASSWORD}\n")
        started = time.monotonic()
        thread_ids = await load(env, args.threads, args.steps)
        loaded_s = time.monotonic() - started
        token = users_cli(env, "token", "create", USER, "--name", "bench").strip().splitlines()[-1]
        with OpenAICompatServer() as llm:
            # socketserver listens with a backlog of 5: 20 connections at once overflow it, and
            # the kernel's SYN retry adds a full second to both sides of the concurrency measure.
            llm._httpd.socket.listen(128)
            # Its handler writes headers and body (and each streamed chunk) separately with
            # Nagle on: now and then a delayed ACK holds a write 40 ms, on both sides alike.
            llm._httpd.RequestHandlerClass.disable_nagle_algorithm = True
            app = RunningApp(tmp, database_url, llm.base_url, API_RATE_LIMIT_PER_MINUTE="100000",
                             LLM_GENERATE_TITLES="false")
            try:
                app.wait_ready()
                info = await measure(app, llm, token, thread_ids, rows, notes, args)
            finally:
                app.stop()
            errors = sum(" ERROR " in line for line in app.log_path.read_text(errors="replace").splitlines())
        info.update(loaded_s=round(loaded_s, 1), app_log_errors=errors)
        if errors:
            raise RuntimeError(f"{errors} ERROR lines in the app log {app.log_path}")
    except BaseException:
        print(f"(the app's data and log are kept in {tmp})", file=sys.stderr)
        raise
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if databases is not None:
            databases.drop_all()
    return rows, notes, info


async def measure(app: RunningApp, llm, token: str, thread_ids: list[str], rows: list, notes: list, args) -> dict:
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as login:
        await ok(await login.post("/login", data={"username": USER, "password": PASSWORD}))
        cookies = dict(login.cookies.items())  # Chainlit may split its token over several cookies
    api = httpx.AsyncClient(base_url=f"{app.url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                            limits=limits)
    web = httpx.AsyncClient(base_url=app.url, cookies=cookies, timeout=60, limits=limits)
    model = httpx.AsyncClient(base_url=llm.base_url, headers={"Authorization": "Bearer sk-e2e"}, timeout=60, limits=limits)
    async with api, web, model:
        await listing(rows, notes, api, web, args.requests)
        first = (await ok(await api.post("/chat", json={"query": "Reading 0", "stream": False}))).json()
        for i in range(1, 10):  # 10 turns: 20 messages with their generation records
            await ok(await api.post("/chat", json={"query": f"Reading {i}", "conversation_id": first["conversation_id"],
                                                   "stream": False}))
        await reading(rows, notes, api, web, first["conversation_id"], args.requests)
        cpu = functools.partial(app_cpu_ms, app.proc.pid)
        await turns(rows, notes, api, model, llm, cpu, thread_ids, args.turns)
        await concurrent(rows, notes, api, model, llm, cpu, args.concurrent)
        journal = (await ok(await web.get("/health"))).json()["journal"]
    if journal.get("rejected"):
        raise RuntimeError(f"the app's journal rejected writes: {journal}")
    return {"journal": journal}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.api", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--threads", type=int, default=200, help="threads loaded for the user (default 200)")
    parser.add_argument("--steps", type=int, default=4, help="messages per loaded thread (default 4)")
    parser.add_argument("--requests", type=int, default=50, help="timed requests per side for reads (>= 30)")
    parser.add_argument("--turns", type=int, default=30, help="timed chat turns per side (>= 30)")
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--postgres-url", default=os.environ.get("BENCH_POSTGRES_URL"),
                        help="admin URL of the PostgreSQL server (BENCH_POSTGRES_URL)")
    args = parser.parse_args()
    began = time.monotonic()
    try:
        rows, notes, info = asyncio.run(run(args))
    except Exception as exc:
        traceback.print_exc()
        print(f"benchmark failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    env = environment()
    print(f"HTTP API vs Chainlit's routes and the model alone: {args.database}, {args.threads} threads x {args.steps} "
          f"messages (loaded in {info['loaded_s']} s), {args.requests} reads and {args.turns} turns per side; "
          f"python {env['python']}, chainlit {env['chainlit']}, {env['cpus']} CPUs")
    print_table(rows)
    print()
    for note in notes:
        print(note)
    journal = info.get("journal") or {}
    print(f"Journal afterwards: {journal.get('pending')} pending, {journal.get('rejected')} rejected; "
          f"ERROR lines in the app log: {info['app_log_errors']}; {time.monotonic() - began:.0f} s in all.")


if __name__ == "__main__":
    main()
