"""Retention: delete threads inactive for longer than a window, with everything that hangs
off them, except threads under a legal hold. Used by `chainlit-persist purge` and by the
app itself on a schedule (`APP_RETENTION_DAYS`, see `RetentionSchedule`).

What goes with a thread: `delete_thread` of the data layer removes its steps, feedback,
elements and (DynamoDB) its search digest and large attributes in the database, then its
blobs in storage (a refused blob delete is retried from the write journal); the knowledge
index is told to drop the thread's chunks.

**Legal hold**: a thread tagged `legal-hold` (`LEGAL_HOLD_TAG`, compared ignoring case) is
never purged, whatever its age; the summary counts the threads kept for it. Put a thread
on hold and release it with `chainlit-persist hold THREAD_ID` / `hold --release THREAD_ID`.

A thread is checked again just before it is deleted (still inactive, still not held), so
a user who comes back to an old thread while the job runs keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from datalayers.errors import DataLayerError
from datalayers.timestamps import format_timestamp
from storage.base import StorageError

from .stale import ThreadRef, thread_ref, threads_of

logger = logging.getLogger("chainlit").getChild("Retention")

#: The documented thread tag that exempts a thread from retention.
LEGAL_HOLD_TAG = "legal-hold"
#: Unit -> length. A month is 30 days and a year 365: retention windows are approximate by
#: nature, and a fixed length keeps `6m` the same window whenever the job runs.
UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1),
         "m": timedelta(days=30), "y": timedelta(days=365)}
_AGE = re.compile(r"^\s*(\d+)\s*([hdwmy])\s*$", re.IGNORECASE)
#: Errors of one thread that the job reports and goes on after (the next thread may work).
THREAD_ERRORS = (DataLayerError, StorageError, OSError)
#: Threads purged at the same time.
CONCURRENCY = 4


def parse_age(text: str) -> timedelta:
    """`36h`, `90d`, `12w`, `6m` (30 days), `1y` (365 days) -> a timedelta; ValueError else."""
    match = _AGE.match(text or "")
    if not match:
        raise ValueError(f"invalid age {text!r}: a whole number and a unit, h (hours), d (days), w (weeks), "
                         "m (months of 30 days) or y (years of 365 days), e.g. 90d")
    amount = int(match.group(1))
    if amount <= 0:
        raise ValueError(f"invalid age {text!r}: must be more than zero")
    return amount * UNITS[match.group(2).lower()]


def is_held(tags: Any) -> bool:
    return isinstance(tags, (list, tuple)) and any(str(t).lower() == LEGAL_HOLD_TAG for t in tags)


@dataclass
class Counts:
    """What goes (or would go) with threads."""

    threads: int = 0
    steps: int = 0
    feedback: int = 0
    elements: int = 0
    blobs: int = 0
    chunks: int = 0

    def add_thread(self, thread: dict) -> None:
        steps = thread.get("steps") or []
        elements = thread.get("elements") or []
        self.threads += 1
        self.steps += len(steps)
        self.feedback += sum(1 for s in steps if s.get("feedback"))
        self.elements += len(elements)
        self.blobs += sum(1 for e in elements if e.get("objectKey"))


@dataclass
class PurgeReport:
    cutoff: str
    user: str | None
    dry_run: bool
    started_at: str
    finished_at: str = ""
    removed: Counts = field(default_factory=Counts)
    held: int = 0            # inactive threads kept for a legal hold
    became_active: int = 0   # inactive when listed, active again when their turn came
    failed: int = 0
    errors: list[str] = field(default_factory=list)   # the first few failures, with their thread
    not_finished: int = 0    # journaled deletes (blobs) still not done at the end

    @property
    def ok(self) -> bool:
        return not self.failed and not self.not_finished

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["would_remove" if self.dry_run else "removed"] = data.pop("removed")
        return data


def cutoff_for(older_than: timedelta, now: datetime | None = None) -> str:
    return format_timestamp((now or datetime.now(UTC)) - older_than)


async def purge(layer: Any, *, older_than: timedelta, user: str | None = None, dry_run: bool = False,
                knowledge: Any = None, progress: Callable[[int], None] | None = None,
                now: datetime | None = None, concurrency: int = CONCURRENCY) -> PurgeReport:
    """Delete (or with `dry_run` only count) the threads last active more than
    `older_than` ago, of `user` only when given. Failures of single threads are counted
    and reported; the job goes on with the next one."""
    cutoff = cutoff_for(older_than, now)
    report = PurgeReport(cutoff=cutoff, user=user, dry_run=dry_run, started_at=format_timestamp(datetime.now(UTC)))
    async def one(ref: ThreadRef) -> None:
        try:
            await _purge_one(layer, ref, cutoff, report, dry_run, knowledge)
        except THREAD_ERRORS as exc:
            report.failed += 1
            if len(report.errors) < 10:
                report.errors.append(f"thread {ref.id}: {type(exc).__name__}: {exc}")
            logger.warning("purge: thread %s could not be deleted (%s: %s); it stays for the next run",
                           ref.id, type(exc).__name__, exc)
        if progress is not None:
            progress(1)

    # A few threads at a time: each costs several round trips, mostly waiting on the
    # database; the bound keeps the job from crowding out the app's own queries.
    limit = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task] = set()
    unexpected: list[BaseException] = []   # anything but a thread's own failure stops the job

    def done(task: asyncio.Task) -> None:
        running.discard(task)
        limit.release()
        if not task.cancelled() and task.exception() is not None:
            unexpected.append(task.exception())  # type: ignore[arg-type]

    try:
        async for ref in threads_of(layer, inactive_before=cutoff, owner=user):
            await limit.acquire()
            if unexpected:
                raise unexpected[0]
            task = asyncio.create_task(one(ref))
            running.add(task)
            task.add_done_callback(done)
        await asyncio.gather(*running, return_exceptions=True)
        if unexpected:
            raise unexpected[0]
    finally:
        for task in list(running):
            task.cancel()
    report.finished_at = format_timestamp(datetime.now(UTC))
    return report


async def _purge_one(layer: Any, ref: ThreadRef, cutoff: str, report: PurgeReport, dry_run: bool,
                     knowledge: Any) -> None:
    if is_held(ref.tags):
        report.held += 1
        return
    thread = await layer.get_thread(ref.id)
    if thread is None:
        return  # deleted meanwhile
    if is_held(thread.get("tags")):
        report.held += 1
        return
    if dry_run:
        report.removed.add_thread(thread)
        if knowledge is not None:
            chunks = await knowledge.count(thread_id=ref.id)
            report.removed.chunks += chunks  # after the await: `x += await` would read x before it
        return
    fresh = await thread_ref(layer, ref.id)
    if fresh is None:
        return
    if is_held(fresh.tags):
        report.held += 1
        return
    if fresh.updated_at is not None and fresh.updated_at >= cutoff:
        report.became_active += 1
        return
    await layer.delete_thread(ref.id)
    report.removed.add_thread(thread)
    if knowledge is not None:
        chunks = await knowledge.delete(thread_id=ref.id)
        report.removed.chunks += chunks


def summary_line(report: PurgeReport) -> str:
    c = report.removed
    verb = "would remove" if report.dry_run else "removed"
    text = (f"{verb} {c.threads} thread(s) inactive since before {report.cutoff}"
            f"{f' of {report.user!r}' if report.user else ''}: {c.steps} step(s), {c.feedback} rating(s), "
            f"{c.elements} element(s), {c.blobs} blob(s), {c.chunks} knowledge chunk(s); "
            f"{report.held} kept under legal hold")
    if report.became_active:
        text += f", {report.became_active} active again and kept"
    if report.failed:
        text += f"; {report.failed} failed"
    if report.not_finished:
        text += f"; {report.not_finished} blob delete(s) not done yet"
    return text


class RetentionSchedule:
    """The app's own retention: `purge` every `interval` seconds with the app's data layer.

    The first run is `first_delay` seconds after start (not during the app's startup). Each
    run's result is logged at INFO; a run that fails is logged at ERROR with its cause and
    tried again at the next interval — never silently dropped. Several app instances may
    run it at once: deleting a thread twice is harmless.
    """

    def __init__(self, layer: Any, older_than: timedelta, interval: float, *, knowledge: Any = None,
                 first_delay: float = 60.0):
        self.layer = layer
        self.older_than = older_than
        self.interval = interval
        self.knowledge = knowledge
        self.first_delay = first_delay
        self.runs = 0
        self.last_report: PurgeReport | None = None
        self.last_error: BaseException | None = None

    async def run_once(self) -> PurgeReport | None:
        try:
            report = await purge(self.layer, older_than=self.older_than, knowledge=self.knowledge)
        except Exception as exc:  # reported here, and tried again next time
            self.last_error = exc
            logger.error("retention run failed (threads inactive for %s); trying again in %.0f s: %s: %s",
                         self.older_than, self.interval, type(exc).__name__, exc, exc_info=True)
            return None
        finally:
            self.runs += 1
        self.last_report, self.last_error = report, None
        level = logging.WARNING if report.failed else logging.INFO
        logger.log(level, "retention: %s", summary_line(report))
        return report

    async def run_forever(self) -> None:
        await asyncio.sleep(self.first_delay)
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval)
