"""Reading a store as a stream of portable records (`records.py`): the export's source side,
shared by `export` (into an archive) and `copy` (straight into another store).

A `Source` lists users and threads with the data layer's listing methods, reads whole
threads with the public `get_thread`, and blob bytes with the storage client's
`read_file`. Threads are read `concurrency` at a time but handed on in listing order, so at
most that many threads (and their blobs) are in memory whatever the store's size.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from storage.base import ObjectNotFound

from .records import Bundle, bundle_from_thread, sha256_hex, user_record

logger = logging.getLogger("chainlit").getChild("ops.export")

T = TypeVar("T")
R = TypeVar("R")

BLOB_SHA, BLOB_SIZE = "blobSha256", "blobSize"


async def ordered_map(items: AsyncIterator[T], work: Callable[[T], Awaitable[R]], concurrency: int
                      ) -> AsyncIterator[R]:
    """`work(item)` for each item, up to `concurrency` at once, results in the items' order."""
    pending: deque[asyncio.Future[R]] = deque()
    try:
        async for item in items:
            pending.append(asyncio.ensure_future(work(item)))
            if len(pending) >= concurrency:
                yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for future in pending:
            future.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


class Source:
    """Our data layer (any backend) and its storage, read-only."""

    def __init__(self, layer: Any, storage: Any, description: dict[str, Any], concurrency: int = 8):
        self.layer = layer
        self.storage = storage
        self.description = description
        self.concurrency = concurrency
        self.missing_blobs = 0

    async def users(self, only: str | None = None) -> AsyncIterator[dict[str, Any]]:
        if only is not None:
            user = await self.layer.get_user(only)
            if user is None:
                raise ValueError(f"no user {only!r} in the source database")
            yield user_record({"identifier": user.identifier, "metadata": user.metadata, "createdAt": user.createdAt,
                               "id": user.id})
            return
        async for row in self.layer.iter_users():
            yield user_record(row)

    def thread_rows(self, only: str | None, since: str | None) -> AsyncIterator[dict[str, Any]]:
        return self.layer.iter_threads(user_id=only, changed_since=since)

    async def read_thread(self, row: dict[str, Any]) -> Bundle | None:
        thread = await self.layer.get_thread(row["id"])
        if thread is None:  # deleted since it was listed
            return None
        return bundle_from_thread(dict(thread), row.get("updatedAt"))

    async def read_blob(self, key: str) -> bytes:
        return await self.storage.read_file(key)

    async def _complete(self, row: dict[str, Any]) -> Bundle | None:
        bundle = await self.read_thread(row)
        if bundle is None:
            return None
        blobs: dict[str, bytes] = {}
        for element in bundle.elements:
            key = element.get("objectKey")
            if not key:
                continue
            try:
                data = await self.read_blob(key)
            except ObjectNotFound:
                # The row points at nothing in the source too: copied as it is, counted.
                self.missing_blobs += 1
                logger.warning("element %s of thread %s: blob %r is missing in the source", element.get("id"),
                               bundle.id, key)
                continue
            digest = sha256_hex(data)
            element[BLOB_SHA], element[BLOB_SIZE] = digest, len(data)
            blobs[digest] = data

        async def read_blob(digest: str, element: dict[str, Any]) -> bytes:
            return blobs[digest]

        bundle.read_blob = read_blob
        return bundle

    async def threads(self, only: str | None = None, since: str | None = None) -> AsyncIterator[Bundle]:
        """Every (matching) thread as a bundle, blobs read and checksummed, in listing order."""
        async for bundle in ordered_map(self.thread_rows(only, since), self._complete, self.concurrency):
            if bundle is not None:
                yield bundle
