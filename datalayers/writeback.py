"""Applying journaled writes to the database: in order per thread, coalesced, retried
through outages, and observable.

Each thread has a lane: a FIFO of its pending writes and at most one task applying them,
so a thread's writes reach the database in the order Chainlit made them, while different
threads proceed in parallel. A write arriving while an earlier write of the same item is
still waiting is folded into it (a streamed reply's create and updates become one write).

Failures are sorted by the backend: a transient one (server down, connection reset,
timeout, lock contention, throttling) is retried with backoff for as long as it lasts —
all lanes share one retry schedule, so an outage costs a few probes per interval, not a
storm; a permanent one (the database refused this input) moves the write to the journal's
`rejected` table with an ERROR naming the write; anything unrecognised is retried a few
times, then treated as permanent. The operator gets one WARNING per outage with the
backlog, and one INFO when it is drained.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from .journal import Entry, WriteJournal

TRANSIENT, PERMANENT, UNKNOWN = "transient", "permanent", "unknown"


class Lane:
    __slots__ = ("entries", "applying", "idle", "task")

    def __init__(self) -> None:
        self.entries: deque[Entry] = deque()
        self.applying = 0  # entries[:applying] are being applied: nothing may be folded into them
        self.idle = asyncio.Event()
        self.task: asyncio.Task | None = None


class WriteBack:
    def __init__(
        self,
        journal: WriteJournal,
        apply: Callable[[Entry], Awaitable[None]],
        classify: Callable[[BaseException], str],
        merge: Callable[[Entry, Entry], bool],
        logger: logging.Logger,
        *,
        on_rejected: Callable[[Entry, BaseException], Awaitable[None]] | None = None,
        apply_batch: Callable[[list[Entry]], Awaitable[None]] | None = None,
        batch_key: Callable[[Entry], str | None] | None = None,
        max_batch: int = 25,
        max_backoff: float = 5.0,
        unknown_attempts: int = 5,
        concurrency: int = 8,
    ):
        self.journal = journal
        self._apply = apply
        self._classify = classify
        self._merge = merge
        self._on_rejected = on_rejected
        # Writes waiting at the head of a lane with the same batch key are applied together
        # (one transaction, one round trip) when the backend can: a backlog — a burst of
        # sessions, an outage draining — then costs a request per batch, not per write.
        self._apply_batch = apply_batch
        self._batch_key = batch_key
        self.max_batch = max_batch
        self.logger = logger
        self.max_backoff = max_backoff
        self.unknown_attempts = unknown_attempts
        self._lanes: dict[str, Lane] = {}
        # Lanes applying at once: no more than the database connections there are, or
        # a burst of sessions makes the pool open and close connections for every write.
        self.concurrency = concurrency
        self._applying: asyncio.Semaphore | None = None
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._outage_since: float | None = None
        self._outage_applied = 0
        self.rejected = 0

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Open the journal and replay what a previous run left (idempotent)."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            entries = await self.journal.open()
            self.rejected = await self.journal.rejected_count()
            for entry in entries:
                self._enqueue(entry)
            if entries:
                self.logger.warning("replaying %d write(s) left in the journal %s by an earlier run",
                                    len(entries), self.journal.path)
                self._outage_since = time.monotonic()
            self._started = True

    async def submit(self, entry: Entry) -> None:
        """Make `entry` durable, then queue it behind its lane's earlier writes.

        If the journal file cannot take it (disk full, I/O error), the write is still
        applied — not durable, and said so — rather than dropped."""
        await self.start()
        try:
            await self.journal.append(entry)
        except Exception as exc:
            self.logger.error("the write journal %s failed (%s: %s): the %s of thread %s is applied without it "
                              "and is lost if the app stops before the database has it", self.journal.path,
                              type(exc).__name__, _short(exc), entry.kind, entry.lane)
        self._enqueue(entry)

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every pending write is applied. False when `timeout` ran out."""
        return await self.settle(None, timeout)

    async def close(self, timeout: float = 10.0) -> None:
        if not self._started:
            return
        if not await self.flush(timeout):
            count, _ = self.backlog()
            self.logger.warning("closing with %d write(s) not yet in the database; they stay in the journal %s "
                                "and are applied at the next start", count, self.journal.path or "(memory: lost)")
        for lane in list(self._lanes.values()):
            if lane.task is not None:
                lane.task.cancel()
                try:
                    await lane.task
                except asyncio.CancelledError:
                    pass
        self._lanes.clear()
        await self.journal.close()
        self._started = False

    # ------------------------------------------------------------------ observing
    def backlog(self, lane: str | None = None) -> tuple[int, float]:
        """(pending writes, age in seconds of the oldest) for one lane or all."""
        lanes = [self._lanes[lane]] if lane is not None and lane in self._lanes else (
            [] if lane is not None else list(self._lanes.values()))
        count = sum(len(item.entries) for item in lanes)
        oldest = min((item.entries[0].created for item in lanes if item.entries), default=None)
        return count, (max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def lanes_of(self, actor: str | None, user_id: str) -> list[str]:
        """Lanes that may change this user's thread list: their own writes, writes made
        outside any session, and threads being given to them."""
        def concerns(entry: Entry) -> bool:
            return entry.actor is None or entry.actor == actor or entry.payload.get("userId") == user_id

        return [key for key, lane in self._lanes.items() if any(concerns(e) for e in lane.entries)]

    def pending_lane(self, kind: str, item_id: str) -> str | None:
        """The lane of a pending write of this kind whose payload has this id."""
        for key, lane in self._lanes.items():
            if any(e.kind == kind and e.payload.get("id") == item_id for e in lane.entries):
                return key
        return None

    @property
    def degraded(self) -> bool:
        return self._outage_since is not None

    async def settle(self, lanes: Iterable[str] | None, timeout: float | None) -> bool:
        """Wait (at most `timeout` seconds) until these lanes — all when None — are applied."""
        if not self._started:
            await self.start()
        keys = list(self._lanes) if lanes is None else [k for k in lanes if k in self._lanes]
        waits = [self._lanes[k].idle.wait() for k in keys]
        if not waits:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
            return True
        except TimeoutError:
            return False

    # ------------------------------------------------------------------ queueing
    def _enqueue(self, entry: Entry) -> None:
        lane = self._lanes.get(entry.lane)
        if lane is None:
            lane = self._lanes[entry.lane] = Lane()
        if not self._fold(lane, entry):
            lane.entries.append(entry)
        lane.idle.clear()
        if lane.task is None or lane.task.done():
            lane.task = asyncio.get_running_loop().create_task(self._drain(entry.lane, lane))

    def _fold(self, lane: Lane, entry: Entry) -> bool:
        """Fold `entry` into the latest waiting write of the same item, unless a delete or
        the write being applied stands between them."""
        first = lane.applying
        for index in range(len(lane.entries) - 1, first - 1, -1):
            earlier = lane.entries[index]
            if earlier.kind.endswith("_delete"):
                return False
            if self._merge(earlier, entry):
                earlier.seqs.extend(entry.seqs)
                return True
        return False

    # ------------------------------------------------------------------ applying
    def _take_batch(self, lane: Lane) -> list[Entry]:
        head = lane.entries[0]
        key = self._batch_key(head) if self._apply_batch is not None and self._batch_key is not None else None
        if key is None:
            return [head]
        batch = [head]
        for entry in list(lane.entries)[1:self.max_batch]:
            if self._batch_key(entry) != key:  # type: ignore[misc]
                break
            batch.append(entry)
        return batch

    async def _drain(self, key: str, lane: Lane) -> None:
        attempts = 0
        single = False  # after a batch was refused: one write at a time finds the one at fault
        while lane.entries:
            batch = [lane.entries[0]] if single else self._take_batch(lane)
            await self._wait_for_retry()
            if self._applying is None:
                self._applying = asyncio.Semaphore(self.concurrency)
            lane.applying = len(batch)
            try:
                async with self._applying:
                    if len(batch) == 1:
                        await self._apply(batch[0])
                    else:
                        await self._apply_batch(batch)  # type: ignore[misc]
            except asyncio.CancelledError:
                lane.applying = 0
                raise
            except Exception as exc:  # sorted below: retried, or rejected and reported
                lane.applying = 0
                kind = self._classify(exc)
                attempts += 1
                if kind == TRANSIENT or (kind == UNKNOWN and attempts < self.unknown_attempts):
                    self._failed(exc, batch[0], kind)
                    continue
                attempts = 0
                if len(batch) > 1:
                    single = True
                    continue
                lane.entries.popleft()
                await self._reject(batch[0], exc)
                continue
            lane.applying = 0
            for _ in batch:
                lane.entries.popleft()
            attempts = 0
            single = False
            self.journal.applied([seq for entry in batch for seq in entry.seqs])
            self._succeeded(len(batch))
        if self._lanes.get(key) is lane:
            del self._lanes[key]
        lane.idle.set()
        self._check_drained()

    async def _wait_for_retry(self) -> None:
        delay = self._retry_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _failed(self, exc: BaseException, entry: Entry, kind: str) -> None:
        self._failures += 1
        # Exponential backoff with jitter, shared by every lane, capped so a recovered
        # database is noticed within a few seconds.
        delay = min(self.max_backoff, 0.1 * 2 ** min(self._failures, 10)) * random.uniform(0.5, 1.0)
        self._retry_at = max(self._retry_at, time.monotonic() + delay)
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self._outage_applied = 0
            count, _ = self.backlog()
            self.logger.warning(
                "database writes are failing (%s: %s); %d write(s) kept in the journal %s and retried "
                "until the database is back", type(exc).__name__, _short(exc), count,
                self.journal.path or "(memory)")
        else:
            self.logger.debug("%s of thread %s failed again (%s): %s", entry.kind, entry.lane, kind, _short(exc))

    def _succeeded(self, count: int = 1) -> None:
        self._failures = 0
        if self._outage_since is not None:
            self._outage_applied += count

    def _check_drained(self) -> None:
        if self._outage_since is not None and not self._lanes:
            self.logger.info("journal drained: %d write(s) applied, %.1f s after the first failure",
                             self._outage_applied, time.monotonic() - self._outage_since)
            self._outage_since = None

    async def _reject(self, entry: Entry, exc: BaseException) -> None:
        self.rejected += 1
        self.logger.error("%s of thread %s (by %s) was refused by the database and will not be retried: %s: %s",
                          entry.kind, entry.lane, entry.actor or "unknown user", type(exc).__name__, _short(exc))
        try:
            await self.journal.reject(entry, f"{type(exc).__name__}: {exc}")
        except Exception:  # the write is reported above either way; keep the lane moving
            self.logger.exception("could not record the refused %s of thread %s in the journal", entry.kind, entry.lane)
        if self._on_rejected is not None:
            try:
                await self._on_rejected(entry, exc)
            except Exception:
                self.logger.exception("cleanup after the refused %s of thread %s failed", entry.kind, entry.lane)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:300]
