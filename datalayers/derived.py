"""Data kept outside the database that is derived from a thread — the knowledge index's
chunks and vectors of its documents and pages — and goes when its source goes.

A store registers with the data layer (`PersistentDataLayer.add_derived_store`). When a
thread, a message or an attachment is deleted, each store is told to forget what it derived
from it, right after the rows are gone. A store that fails (its server is down) is told
again from the write journal, in a lane of its own with a backoff, until it succeeds: a
deleted document must never stay retrievable.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Protocol

from .journal import Entry

if TYPE_CHECKING:
    from .base import PersistentDataLayer

logger = logging.getLogger("chainlit")

#: Journal lane of derived-data deletes that failed (one for all: nothing else waits for it).
DERIVED_LANE = "(derived cleanup)"
#: These entries act for nobody (see elements.CLEANUP_ACTOR).
DERIVED_ACTOR = ""
RETRY_MAX_SECONDS = 60.0
_WARN_EVERY = 20
KEYS = ("thread_id", "step_id", "element_id")


class DerivedStore(Protocol):
    """What a store of derived data implements. `name` identifies it in the journal, so it
    must stay the same across restarts."""

    name: str

    async def forget(self, *, thread_id: str | None = None, step_id: str | None = None,
                     element_id: str | None = None) -> None:
        """Delete everything derived from that thread / message / attachment (idempotent)."""


class DerivedStores:
    def __init__(self, layer: PersistentDataLayer):
        self.layer = layer
        self.stores: dict[str, DerivedStore] = {}
        self.retry_first_seconds = 1.0

    def add(self, store: DerivedStore) -> None:
        self.stores[store.name] = store

    async def forget(self, **keys: str | None) -> None:
        """Tell every store to forget what derives from `keys`; journal a retry for a failure."""
        keys = {k: v for k, v in keys.items() if v}
        if not keys or not self.stores:
            return
        for name, store in self.stores.items():
            try:
                await store.forget(**keys)
            except Exception as exc:
                logger.warning("%s could not forget %s yet (%s: %s); retrying until done", name, keys,
                               type(exc).__name__, exc)
                payload: dict[str, Any] = {"store": name, **keys}
                await self.layer.writes.submit(Entry(DERIVED_LANE, "derived_forget", payload, DERIVED_ACTOR))

    async def apply(self, entry: Entry) -> None:
        """A journaled retry: until the store succeeds, with a backoff (it holds only its lane)."""
        payload = entry.payload
        keys = {k: payload[k] for k in KEYS if payload.get(k)}
        delay, failures = self.retry_first_seconds, 0
        while True:
            store = self.stores.get(payload.get("store", ""))
            if store is None:
                # Not registered in this process (yet, or any more): keep the entry for a run
                # that has it rather than dropping the delete.
                raise ConnectionError(f"derived store {payload.get('store')!r} is not available in this process")
            try:
                await store.forget(**keys)
            except Exception as exc:
                failures += 1
                level = logging.WARNING if failures == 1 or failures % _WARN_EVERY == 0 else logging.DEBUG
                logger.log(level, "%s still could not forget %s (attempt %d, %s: %s); next attempt in %.0f s",
                           store.name, keys, failures, type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            if failures:
                logger.info("%s forgot %s after %d failed attempt(s)", store.name, keys, failures)
            return
