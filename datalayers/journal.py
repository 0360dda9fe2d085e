"""The write journal: writes Chainlit handed the data layer, kept on the app's local disk
until the database has them.

A write is durable once `append` returns: it is committed to a SQLite file (WAL,
`synchronous=FULL` by default, so it survives a crash of the process and of the machine).
Appends that arrive while a commit is running are committed together in the next one
(group commit), so many concurrent sessions share one fsync instead of queueing for one
each. Entries the database has applied are deleted lazily, in the next commit: if the app
dies before that, replaying them is harmless because every journaled write is idempotent.

Without a path the journal lives in memory only (ordering, coalescing and retries still
work; a crash loses what was pending). The app always gives it a path.

One journal file belongs to one process at a time (an exclusive lock on `<path>.lock`):
several app instances must each have their own `WRITE_JOURNAL_PATH`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    lane TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    actor TEXT,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    seq INTEGER PRIMARY KEY,
    lane TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    actor TEXT,
    created REAL NOT NULL,
    rejected REAL NOT NULL,
    error TEXT NOT NULL
);
"""


#: Writers resumed per event-loop iteration after a group commit.
WAKE_BATCH = 16


class JournalInUse(RuntimeError):
    """Another process holds this journal file."""


@dataclass
class Entry:
    """One journaled write. `seqs` are the journal rows it stands for (several when later
    writes of the same item were coalesced into it)."""

    lane: str
    kind: str
    payload: dict
    actor: str | None
    created: float = field(default_factory=time.time)
    seqs: list[int] = field(default_factory=list)


def _dumps(payload: dict) -> str:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str)


class WriteJournal:
    def __init__(self, path: str | os.PathLike | None = None, *, synchronous: str = "FULL"):
        self.path = Path(path) if path is not None else None
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"journal synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        self.synchronous = synchronous.upper()
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        # One thread owns the SQLite connection: file I/O and fsync never run on the loop.
        self._executor: ThreadPoolExecutor | None = None
        self._appends: list[tuple[Entry, asyncio.Future]] = []
        self._done: list[int] = []
        self._committer: asyncio.Task | None = None
        self._memory_seq = 0
        self._open_guard = threading.Lock()

    @property
    def durable(self) -> bool:
        return self.path is not None

    def __repr__(self) -> str:
        return f"WriteJournal({str(self.path) if self.path else 'memory'!r})"

    # ------------------------------------------------------------------ opening
    def _open_sync(self) -> list[Entry]:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = f"{self.path}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalInUse(f"write journal {self.path} is in use by another process; give each app "
                               "instance its own WRITE_JOURNAL_PATH") from None
        self._lock_fd = fd
        if not self.path.exists():
            # Message text lives here until the database has it: readable by the app only.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        db.executescript(SCHEMA)
        self._db = db
        rows = db.execute("SELECT seq, lane, kind, payload, actor, created FROM entries ORDER BY seq").fetchall()
        return [Entry(lane, kind, json.loads(payload), actor, created, [seq])
                for seq, lane, kind, payload, actor, created in rows]

    async def open(self) -> list[Entry]:
        """Open the journal and return the entries still to apply, oldest first."""
        if self.path is None or self._db is not None:
            return []
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write-journal")
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._open_sync)

    # ------------------------------------------------------------------ appending
    async def append(self, entry: Entry) -> None:
        """Record `entry`; when this returns it survives a crash (for a file journal)."""
        if self.path is None:
            self._memory_seq += 1
            entry.seqs.append(self._memory_seq)
            return
        if self._db is None:
            raise RuntimeError("the write journal is not open")
        future = asyncio.get_running_loop().create_future()
        self._appends.append((entry, future))
        self._kick()
        await future

    def applied(self, seqs: list[int]) -> None:
        """The database has these entries: forget them (in the next commit)."""
        if self.path is not None and seqs:
            self._done.extend(seqs)
            self._kick()

    async def reject(self, entry: Entry, error: str) -> None:
        """Move an entry the database refused for good to `rejected`, for the operator."""
        if self.path is None or self._db is None:
            return
        db = self._db

        def move() -> None:
            with self._open_guard:
                db.execute("BEGIN IMMEDIATE")
                for seq in entry.seqs:
                    db.execute("INSERT OR REPLACE INTO rejected (seq, lane, kind, payload, actor, created, rejected, error)"
                               " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (seq, entry.lane, entry.kind, _dumps(entry.payload), entry.actor, entry.created,
                                time.time(), error[:2000]))
                    db.execute("DELETE FROM entries WHERE seq = ?", (seq,))
                db.execute("COMMIT")

        await asyncio.get_running_loop().run_in_executor(self._executor, move)

    async def rejected_count(self) -> int:
        if self.path is None or self._db is None:
            return 0
        db = self._db

        def count() -> int:
            with self._open_guard:
                return db.execute("SELECT count(*) FROM rejected").fetchone()[0]

        return await asyncio.get_running_loop().run_in_executor(self._executor, count)

    def _kick(self) -> None:
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_loop())

    async def _commit_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while self._appends or self._done:
            appends, self._appends = self._appends, []
            done, self._done = self._done, []
            try:
                seqs = await loop.run_in_executor(self._executor, self._commit, [e for e, _ in appends], done)
            except BaseException as exc:
                self._done.extend(done)  # retried with the next commit
                for _, future in appends:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            for index, ((entry, future), seq) in enumerate(zip(appends, seqs, strict=True), 1):
                entry.seqs.append(seq)
                if not future.done():
                    future.set_result(None)
                if index % WAKE_BATCH == 0:
                    # Wake the writers of a big group a few at a time: a burst of sessions
                    # then resumes over several loop iterations instead of stalling one.
                    await asyncio.sleep(0)

    def _commit(self, entries: list[Entry], done: list[int]) -> list[int]:
        assert self._db is not None
        db = self._db
        with self._open_guard:
            db.execute("BEGIN IMMEDIATE")
            try:
                seqs = []
                for entry in entries:
                    cursor = db.execute(
                        "INSERT INTO entries (lane, kind, payload, actor, created) VALUES (?, ?, ?, ?, ?)",
                        (entry.lane, entry.kind, _dumps(entry.payload), entry.actor, entry.created))
                    seqs.append(int(cursor.lastrowid or 0))
                if done:
                    db.executemany("DELETE FROM entries WHERE seq = ?", [(s,) for s in done])
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return seqs

    # ------------------------------------------------------------------ closing
    async def close(self) -> None:
        """Commit what is queued and release the file (entries not applied stay in it)."""
        if self._committer is not None and not self._committer.done():
            await self._committer
        if self._appends or self._done:
            await self._commit_loop()
        db, self._db = self._db, None
        executor, self._executor = self._executor, None
        if db is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        if executor is not None:
            executor.shutdown(wait=False)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

