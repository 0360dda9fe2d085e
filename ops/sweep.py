"""The storage sweep: blobs no row points to (orphans), and element rows whose blob is
missing.

Both sides are streamed into a temporary SQLite file — every key in storage, and every key
the database points at (element files, DynamoDB's large attributes, and element rows still
waiting in the app's write journal) — and compared there with two anti-joins on indexed
columns: a store of millions of objects costs disk in the temp folder, not memory.

`fix` deletes orphans **older than the grace period** (default one hour) only. An upload
writes the blob first and its element row after it (journaled, applied in the background,
retried through a database outage): a blob younger than that may be a file whose row is
on its way, and deleting it would break an attachment that is being saved.

Elements whose blob is missing are only reported (thread, element, key), never deleted:
the row is what is left of the attachment (its name, type and message), the file may come
back from a backup of the storage, and deleting it would hide that it was lost. Delete such
an attachment through the app or the API once it is known to be gone for good.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .references import blob_references

BATCH = 1000
EXAMPLES = 100
JOURNAL = "(journal)"
DEFAULT_GRACE_SECONDS = 3600.0


@dataclass
class SweepReport:
    fix: bool
    grace_seconds: float
    blobs: int = 0                 # objects in storage
    references: int = 0            # keys the database (and the app's journal) points at
    orphans: int = 0               # objects nothing points at
    orphans_in_grace: int = 0      # ... of which younger than the grace period (left alone)
    removed: int = 0
    missing: int = 0               # element rows whose blob is not in storage
    missing_large: int = 0         # DynamoDB large attributes whose blob is not in storage
    orphan_examples: list[str] = field(default_factory=list)
    missing_examples: list[dict[str, str | None]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing left to fix (young orphans are not a problem yet)."""
        left = self.orphans - self.orphans_in_grace - self.removed
        return left == 0 and not self.missing and not self.missing_large

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}


class _KeySets:
    """The temporary SQLite file; every call runs in a worker thread, one at a time."""

    def __init__(self, folder: Path):
        self.db = sqlite3.connect(folder / "sweep.sqlite3", isolation_level=None, check_same_thread=False)
        self.db.executescript("""
            PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;
            CREATE TABLE blobs (key TEXT PRIMARY KEY, modified REAL NOT NULL) WITHOUT ROWID;
            CREATE TABLE refs (key TEXT NOT NULL, thread TEXT NOT NULL, element TEXT);
        """)

    async def add_blobs(self, rows: list[tuple[str, float]]) -> None:
        await asyncio.to_thread(self._insert, "INSERT OR IGNORE INTO blobs VALUES (?, ?)", rows)

    async def add_refs(self, rows: list[tuple[str, str, str | None]]) -> None:
        await asyncio.to_thread(self._insert, "INSERT INTO refs VALUES (?, ?, ?)", rows)

    def _insert(self, statement: str, rows: list) -> None:
        self.db.execute("BEGIN")
        self.db.executemany(statement, rows)
        self.db.execute("COMMIT")

    async def index_refs(self) -> int:
        def work() -> int:
            self.db.execute("CREATE INDEX refs_key ON refs (key)")
            return int(self.db.execute("SELECT count(DISTINCT key) FROM refs").fetchone()[0])

        return await asyncio.to_thread(work)

    async def pages(self, query: str) -> Any:
        cursor = await asyncio.to_thread(self.db.execute, query)
        while rows := await asyncio.to_thread(cursor.fetchmany, BATCH):
            yield rows

    def close(self) -> None:
        self.db.close()


async def sweep(layer: Any, storage: Any, *, fix: bool = False, grace_seconds: float = DEFAULT_GRACE_SECONDS,
                journal_keys: Iterable[str] = (), progress: Callable[[int], None] | None = None,
                now: float | None = None) -> SweepReport:
    report = SweepReport(fix=fix, grace_seconds=grace_seconds)
    advance = progress or (lambda n: None)
    with tempfile.TemporaryDirectory(prefix="chainlit-sweep-") as folder:
        keys = _KeySets(Path(folder))
        try:
            # Storage first: a blob uploaded after its listing cannot be taken for an orphan.
            batch_blobs: list[tuple[str, float]] = []
            async for item in storage.list_objects():
                batch_blobs.append((item.key, item.modified.timestamp()))
                report.blobs += 1
                if len(batch_blobs) == BATCH:
                    await keys.add_blobs(batch_blobs)
                    advance(len(batch_blobs))
                    batch_blobs = []
            await keys.add_blobs(batch_blobs)
            advance(len(batch_blobs))
            batch_refs: list[tuple[str, str, str | None]] = [(k, JOURNAL, None) for k in journal_keys]
            async for ref in blob_references(layer):
                batch_refs.append((ref.key, ref.thread_id, ref.element_id))
                if len(batch_refs) >= BATCH:
                    await keys.add_refs(batch_refs)
                    batch_refs = []
            await keys.add_refs(batch_refs)
            report.references = await keys.index_refs()
            await _orphans(keys, storage, report, (now or time.time()) - grace_seconds)
            await _missing(keys, storage, report)
        finally:
            keys.close()
    return report


async def _orphans(keys: _KeySets, storage: Any, report: SweepReport, young_after: float) -> None:
    query = ("SELECT b.key, b.modified FROM blobs b WHERE NOT EXISTS "
             "(SELECT 1 FROM refs r WHERE r.key = b.key) ORDER BY b.key")
    async for rows in keys.pages(query):
        doomed = []
        for key, modified in rows:
            report.orphans += 1
            if len(report.orphan_examples) < EXAMPLES:
                report.orphan_examples.append(key)
            if modified > young_after:
                report.orphans_in_grace += 1
            elif report.fix:
                doomed.append(key)
        if doomed:
            await storage.delete_files(doomed)
            report.removed += len(doomed)


async def _missing(keys: _KeySets, storage: Any, report: SweepReport) -> None:
    query = (f"SELECT r.key, r.thread, r.element FROM refs r WHERE r.thread != '{JOURNAL}' AND NOT EXISTS "
             "(SELECT 1 FROM blobs b WHERE b.key = r.key) ORDER BY r.thread, r.key")
    async for rows in keys.pages(query):
        for key, thread, element in rows:
            # Looked up again: the row may have been written (its blob first) after the listing.
            if [k async for k in storage.list_keys(key) if k == key]:
                continue
            if element is None:
                report.missing_large += 1
            else:
                report.missing += 1
            if len(report.missing_examples) < EXAMPLES:
                report.missing_examples.append({"thread": thread, "element": element, "key": key})
