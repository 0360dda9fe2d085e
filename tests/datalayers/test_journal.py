"""The write journal and its application: durable before a write returns, ordered per thread,
coalesced, retried through transient failures, refused on permanent ones, replayed after a
crash — first on its own (a scripted `apply`), then through the SQL layer on real SQLite."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from datalayers.journal import Entry, JournalInUse, WriteJournal
from datalayers.sqlalchemy import SQLAlchemyDataLayer
from datalayers.writeback import PERMANENT, TRANSIENT, UNKNOWN, WriteBack
from datalayers.writes import StepWrite
from storage.memory import MemoryStorage
from tests.contracts.datalayer import new_id, step, timestamp

ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger("chainlit").getChild("JournalTest")


def merge(earlier: Entry, later: Entry) -> bool:
    if earlier.kind == later.kind == "step" and earlier.payload["id"] == later.payload["id"]:
        earlier.payload = {**earlier.payload, "n": earlier.payload["n"] + later.payload["n"]}
        return True
    return False


class Scripted:
    """An `apply` that records what it applied and fails as told."""

    def __init__(self):
        self.applied: list[tuple[str, str, int]] = []
        self.fail_with: list[BaseException] = []

    async def __call__(self, entry: Entry) -> None:
        await asyncio.sleep(0)
        if self.fail_with:
            raise self.fail_with.pop(0)
        self.applied.append((entry.lane, entry.payload["id"], entry.payload["n"]))


def classify(exc: BaseException) -> str:
    return {ConnectionError: TRANSIENT, ValueError: PERMANENT}.get(type(exc), UNKNOWN)


def writeback(journal: WriteJournal, apply) -> WriteBack:
    return WriteBack(journal, apply, classify, merge, logger, max_backoff=0.05, unknown_attempts=3)


async def test_writes_are_applied_in_order_per_lane_and_coalesced(tmp_path):
    apply = Scripted()
    writes = writeback(WriteJournal(tmp_path / "j.sqlite3"), apply)
    await writes.start()
    apply.fail_with = [ConnectionError("down")] * 3  # an outage at the start: the rest queues up
    for i in range(10):
        await writes.submit(Entry("thread-a", "step", {"id": f"s{i % 3}", "n": 1}, "alice"))
        await writes.submit(Entry("thread-b", "other", {"id": f"o{i}", "n": 1}, "bob"))
    assert await writes.flush(5)
    lane_b = [item_id for lane, item_id, _ in apply.applied if lane == "thread-b"]
    assert lane_b == [f"o{i}" for i in range(10)]
    lane_a = [(item_id, n) for lane, item_id, n in apply.applied if lane == "thread-a"]
    assert sum(n for _, n in lane_a) == 10  # nothing lost, nothing twice
    assert len(lane_a) < 10  # writes of the same step that waited were folded together
    assert writes.backlog() == (0, 0.0)
    await writes.close()
    # Everything applied was forgotten: a new run has nothing to replay.
    db = sqlite3.connect(tmp_path / "j.sqlite3")
    assert db.execute("SELECT count(*) FROM entries").fetchone()[0] == 0


async def test_one_warning_per_outage_and_info_when_drained(tmp_path, caplog):
    apply = Scripted()
    writes = writeback(WriteJournal(None), apply)
    apply.fail_with = [ConnectionError("refused")] * 5
    with caplog.at_level(logging.DEBUG, logger="chainlit"):
        for i in range(4):
            await writes.submit(Entry(f"t{i}", "x", {"id": str(i), "n": 1}, None))
        assert await writes.flush(5)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    infos = [r for r in caplog.records if r.levelno == logging.INFO and "drained" in r.getMessage()]
    assert len(warnings) == 1 and "kept in the journal" in warnings[0].getMessage()
    assert len(infos) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(apply.applied) == 4


async def test_a_permanent_failure_is_rejected_reported_and_does_not_block_the_lane(tmp_path, caplog):
    apply = Scripted()
    path = tmp_path / "j.sqlite3"
    writes = writeback(WriteJournal(path), apply)
    apply.fail_with = [ValueError("value too long for column")]
    await writes.submit(Entry("t", "x", {"id": "bad", "n": 1}, "alice"))
    await writes.submit(Entry("t", "x", {"id": "good", "n": 1}, "alice"))
    with caplog.at_level(logging.ERROR, logger="chainlit"):
        assert await writes.flush(5)
    assert [item for _, item, _ in apply.applied] == ["good"]
    assert writes.rejected == 1
    assert "refused by the database" in caplog.text and "alice" in caplog.text
    await writes.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT error FROM rejected").fetchone()[0].startswith("ValueError")


async def test_waiting_writes_are_applied_in_batches_and_a_refused_batch_finds_the_bad_write(tmp_path, caplog):
    apply = Scripted()
    batches: list[list[str]] = []

    async def apply_batch(entries: list[Entry]) -> None:
        await asyncio.sleep(0)
        ids = [e.payload["id"] for e in entries]
        if "bad" in ids:
            raise ValueError("one of them is refused")  # all or nothing, as a transaction
        batches.append(ids)

    writes = WriteBack(WriteJournal(tmp_path / "j.sqlite3"), apply, classify, merge, logger, max_backoff=0.05,
                       apply_batch=apply_batch, batch_key=lambda e: e.kind if e.kind == "step" else None,
                       max_batch=3)
    release = asyncio.Event()
    held = Scripted()

    async def first_waits(entry: Entry) -> None:
        await release.wait()  # the first write is in flight while the others queue up
        await held(entry)

    writes._apply = first_waits
    for item in ("a", "b", "c", "d"):
        await writes.submit(Entry("t", "step", {"id": item, "n": 1}, "alice"))
    await writes.submit(Entry("t", "thread", {"id": "t", "n": 1}, "alice"))
    await writes.submit(Entry("t", "step", {"id": "e", "n": 1}, "alice"))
    release.set()
    assert await writes.flush(5)
    # At most max_batch at a time, never across a write that cannot join, in order.
    assert [i for _, i, _ in held.applied][:1] == ["a"] and batches == [["b", "c", "d"]]
    assert [i for _, i, _ in held.applied][1:] == ["t", "e"]
    batches.clear()
    release.clear()
    single: list[str] = []

    async def refuses_bad(entry: Entry) -> None:
        if entry.payload["id"] == "f":
            await release.wait()
        if entry.payload["id"] == "bad":
            raise ValueError("refused")
        single.append(entry.payload["id"])

    writes._apply = refuses_bad
    for item in ("f", "bad", "g", "h"):
        await writes.submit(Entry("t", "step", {"id": item, "n": 1}, "alice"))
    release.set()
    with caplog.at_level(logging.ERROR, logger="chainlit"):
        assert await writes.flush(5)
    # The refused batch is retried one write at a time: only the bad one is rejected, the
    # others are applied, in order.
    assert writes.rejected == 1 and "refused by the database" in caplog.text
    applied = single + [i for batch in batches for i in batch]
    assert applied == ["f", "g", "h"] and batches in ([], [["g", "h"]])
    await writes.close()


async def test_an_unrecognised_failure_is_retried_a_few_times_then_rejected(tmp_path):
    apply = Scripted()
    writes = writeback(WriteJournal(None), apply)
    apply.fail_with = [RuntimeError("odd")] * 2
    await writes.submit(Entry("t", "x", {"id": "flaky", "n": 1}, None))
    assert await writes.flush(5)
    assert [item for _, item, _ in apply.applied] == ["flaky"]
    apply.fail_with = [RuntimeError("odd")] * 3
    await writes.submit(Entry("t", "x", {"id": "hopeless", "n": 1}, None))
    assert await writes.flush(5)
    assert writes.rejected == 1


async def test_a_failing_journal_file_loses_no_write_and_says_so(tmp_path, caplog):
    apply = Scripted()
    journal = WriteJournal(tmp_path / "j.sqlite3")
    writes = writeback(journal, apply)
    await writes.start()

    async def disk_full(entry):
        raise OSError(28, "No space left on device")

    journal.append = disk_full
    with caplog.at_level(logging.ERROR, logger="chainlit"):
        await writes.submit(Entry("t", "x", {"id": "kept", "n": 1}, "alice"))
        assert await writes.flush(5)
    assert [item for _, item, _ in apply.applied] == ["kept"]
    assert "applied without it" in caplog.text and "No space left" in caplog.text
    await writes.close()


async def test_a_journal_file_belongs_to_one_process(tmp_path):
    first = WriteJournal(tmp_path / "j.sqlite3")
    await first.open()
    second = WriteJournal(tmp_path / "j.sqlite3")
    with pytest.raises(JournalInUse, match="WRITE_JOURNAL_PATH"):
        await second.open()
    await first.close()
    await second.open()  # released with the first
    await second.close()
    assert oct((tmp_path / "j.sqlite3").stat().st_mode & 0o777) == "0o600"


def _sequential(writes: list[StepWrite]) -> dict:
    row = None
    for write in writes:
        row = write.apply_to(row)
    return row


def test_coalesced_step_writes_equal_the_writes_applied_one_by_one():
    """Every order of creates and updates (with empty values and metadata deletions), folded
    into one write, gives the row the writes give one by one — with or without a stored row."""
    rng = random.Random(7)
    values = ["", "draft", "final", None]
    for _ in range(400):
        writes = []
        for _ in range(rng.randint(1, 5)):
            data = {"id": "s", "threadId": "t", "output": rng.choice(values), "name": rng.choice(["", "Bot"]),
                    "metadata": {k: rng.choice([1, 2, None]) for k in rng.sample(["a", "b", "c"], 2)}}
            writes.append(StepWrite.from_step(data, overwrite=rng.random() < 0.5))
        for stored in (None, {"id": "s", "threadId": "t", "output": "old", "name": "", "metadata": {"a": 0}}):
            expected = _sequential(writes) if stored is None else _sequential_from(stored, writes)
            merged = StepWrite.from_json(writes[0].to_json())
            for later in writes[1:]:
                merged.merge(later)
            assert merged.apply_to(stored) == expected, (stored, [w.to_json() for w in writes])


def _sequential_from(stored: dict, writes: list[StepWrite]) -> dict:
    row = stored
    for write in writes:
        row = write.apply_to(row)
    return row


# ---------------------------------------------------------------------- through the SQL layer
def hold_exclusive_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection holds SQLite's write lock, as another process would."""
    ready = threading.Event()

    def hold():
        db = sqlite3.connect(path, timeout=30, isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        ready.set()
        threading.Event().wait(seconds)
        db.execute("COMMIT")
        db.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    ready.wait(10)
    return thread


async def test_sqlite_locked_past_the_busy_timeout_loses_nothing(tmp_path, caplog):
    path = tmp_path / "chat.db"
    layer = SQLAlchemyDataLayer(f"sqlite:///{path}", storage=MemoryStorage(), journal=tmp_path / "journal.sqlite3")
    thread_id = new_id()
    await layer.update_thread(thread_id, name="locked out")
    assert await layer.flush(10)
    holder = hold_exclusive_lock(path, 7)  # longer than the 5 s busy timeout: writes fail once
    with caplog.at_level(logging.INFO, logger="chainlit"):
        for i in range(10):
            await layer.create_step(step(thread_id, output=f"m{i}", createdAt=timestamp(i)))
        assert layer.pending(thread_id)[0] > 0
        await asyncio.to_thread(holder.join)
        assert await layer.flush(30)
    stored = await layer.get_thread(thread_id)
    assert [s["output"] for s in stored["steps"]] == [f"m{i}" for i in range(10)]
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("chainlit")]
    assert sum("kept in the journal" in m for m in messages) == 1
    assert any("drained" in m for m in messages)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await layer.close()


async def test_a_killed_process_loses_no_write_it_returned_from(tmp_path):
    """Writes made while the database is unreachable survive SIGKILL and are applied by the
    next process that opens the journal."""
    journal = tmp_path / "journal.sqlite3"
    thread_id = new_id()
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(ROOT)!r})
        from datalayers.sqlalchemy import SQLAlchemyDataLayer
        from tests.contracts.datalayer import step, timestamp

        async def main():
            from chainlit.context import init_http_context

            init_http_context()  # Chainlit's write decorator needs a context
            # Nothing listens on port 1: every write fails and waits in the journal.
            layer = SQLAlchemyDataLayer("postgresql+asyncpg://nobody@127.0.0.1:1/none", auto_migrate=False,
                                        journal={str(journal)!r})
            await layer.update_thread({thread_id!r}, name="survivor")
            for i in range(20):
                await layer.create_step(step({thread_id!r}, output=f"m{{i}}", createdAt=timestamp(i)))
            print("written", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert line.strip() == b"written"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    layer = SQLAlchemyDataLayer(f"sqlite:///{tmp_path / 'chat.db'}", storage=MemoryStorage(), journal=journal)
    await layer.start()
    assert await layer.flush(30)
    thread = await layer.get_thread(thread_id)
    assert thread["name"] == "survivor"
    assert [s["output"] for s in thread["steps"]] == [f"m{i}" for i in range(20)]
    await layer.close()


async def test_reads_wait_for_pending_writes_of_their_thread(tmp_path):
    layer = SQLAlchemyDataLayer(f"sqlite:///{tmp_path / 'chat.db'}", storage=MemoryStorage())
    thread_id = new_id()
    for i, write in zip(range(30), itertools.cycle([layer.create_step, layer.update_step])):
        await write(step(thread_id, step_id=f"{thread_id}-{i // 2}", output=f"v{i}", createdAt=timestamp(i // 2)))
    thread = await layer.get_thread(thread_id)  # no flush: the read waits for the thread's writes
    assert [s["output"] for s in thread["steps"]] == [f"v{i}" for i in range(1, 30, 2)]
    await layer.close()
