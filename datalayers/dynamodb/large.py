"""Large attributes: moved to blob storage when an item would be too large, put back on read.

An item over the inline limit (a long output, a big session in thread metadata) has its
largest attributes stored as JSON blobs, recorded in the item's `_blobs` map. DynamoDB's
limit is 400 KB, but an update is billed by the size of the whole item, so items are kept
far below it."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from storage.base import element_object_key

from ..errors import DataLayerError
from .client import Conflict, DynamoDBError
from .items import (
    BLOBS,
    DIGEST_ATTRIBUTES,
    MAX_ITEM_BYTES,
    PINNED_ATTRIBUTES,
    REV,
    Expression,
    item_size,
    serialize,
    value_size,
)

if TYPE_CHECKING:
    from storage.base import BlobStorage

    from .client import Table


class TooLarge(DataLayerError, ValueError):
    """An item cannot be stored: too large even without its large attributes, or large and
    no storage is configured. The input is refused (a retry cannot succeed)."""


class LargeAttributes:
    def __init__(self, storage: BlobStorage | None, inline_limit: int, logger: logging.Logger):
        self.storage = storage
        self.inline_limit = inline_limit
        self.logger = logger

    def fits(self, item: dict[str, Any]) -> bool:
        """The item stays inline as it is (the search digest does not count: it has its
        own cap and never moves)."""
        return item_size({k: v for k, v in item.items() if k not in DIGEST_ATTRIBUTES}) <= self.inline_limit

    async def offload(self, item: dict[str, Any], owner: str | None, thread_id: str, label: str,
                      previous: dict[str, Any], previous_blobs: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
        """The item to write, with its largest attributes moved to blob storage while it is
        over the inline limit; and the keys of blobs uploaded for it (to clean up on failure).

        An attribute that is unchanged and already in a blob keeps that blob. New blobs get
        fresh keys, so a concurrent writer can never overwrite the blob of a committed item.
        """
        stored = {k: v for k, v in item.items() if v is not None and k != BLOBS}
        # The digest does not count toward the inline limit, so it cannot push other
        # attributes out either.
        digest = item_size({k: v for k, v in stored.items() if k in DIGEST_ATTRIBUTES})
        total = item_size(stored) - digest
        if total <= self.inline_limit:
            return stored, []
        sizes = {k: len(k.encode()) + value_size(v) for k, v in stored.items() if k not in PINNED_ATTRIBUTES}
        blobs: dict[str, str] = {}
        moves: list[tuple[str, Any]] = []
        for attribute in sorted(sizes, key=sizes.__getitem__, reverse=True):
            if total <= self.inline_limit:
                break
            value = stored.pop(attribute)
            total -= sizes[attribute]
            if attribute in previous_blobs and previous.get(attribute) == value:
                blobs[attribute] = previous_blobs[attribute]
            else:
                moves.append((attribute, value))
        if total + digest > MAX_ITEM_BYTES - 16 * 1024:
            raise TooLarge(f"{label} of thread {thread_id!r} is too large for DynamoDB even without its "
                           f"large attributes ({total + digest} bytes)")
        if moves and self.storage is None:
            raise TooLarge(f"{label} of thread {thread_id!r} exceeds {self.inline_limit} bytes and no "
                           "storage client is configured to hold its large attributes")
        uploaded: list[str] = []
        try:
            for attribute, value in moves:
                key = element_object_key(owner, thread_id, f"_{label}", f"{attribute}.{uuid.uuid4().hex}.json")
                body = json.dumps(value, ensure_ascii=False).encode("utf-8")
                assert self.storage is not None  # checked above: moves need a storage client
                await self.storage.upload_file(key, body, mime="application/json", overwrite=False)
                uploaded.append(key)
                blobs[attribute] = key
        except BaseException:
            await self.discard(uploaded, f"{label} (cleanup)")
            raise
        stored[BLOBS] = blobs
        return stored, uploaded

    async def hydrate(self, item: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The item with its blob-stored attributes read back, and the blob map."""
        blobs = item.pop(BLOBS, None) or {}
        if blobs:
            if self.storage is None:
                raise TooLarge(f"item {item.get('PK')}/{item.get('SK')} has attributes in blob storage "
                               "but no storage client is configured")
            bodies = await asyncio.gather(*(self.storage.read_file(k) for k in blobs.values()))
            for attribute, body in zip(blobs, bodies, strict=True):
                item[attribute] = json.loads(body)
        return item, blobs

    async def discard(self, keys: Iterable[str | None], operation: str) -> None:
        """Delete blobs nothing points at (uploaded for a write that failed). Best effort:
        the write's own error is the one to report."""
        present = [k for k in keys if k]
        if not present or self.storage is None:
            return
        try:
            await self.storage.delete_files(present)
        except Exception as exc:
            self.logger.warning("%s: %d unused blob(s) could not be removed (%s)", operation, len(present),
                                type(exc).__name__)

    async def forget_uploads(self, exc: BaseException, uploaded: list[str], operation: str) -> None:
        """After a failed item write: delete the blobs uploaded for it only when the item
        was certainly not written. When the outcome is unknown (timeout, cancellation), the
        item may point at them: an orphaned blob is better than a broken item."""
        if not uploaded:
            return
        if isinstance(exc, DynamoDBError) and exc.not_written:
            await self.discard(uploaded, f"{operation} (cleanup)")
        else:
            self.logger.warning("%s: write outcome unknown (%s); keeping %d new blob(s)", operation,
                                type(exc).__name__, len(uploaded))


async def put_versioned(table: Table, large: LargeAttributes, operation: str, ids: dict[str, Any],
                        item: dict[str, Any], old: dict[str, Any] | None, old_blobs: dict[str, str], *,
                        owner: str | None, thread_id: str, label: str, journaled: bool = False) -> list[str]:
    """Write `item` if nobody changed it since `old` was read (else raise Conflict), with
    its large attributes offloaded. Returns the keys of `old`'s blobs it no longer uses."""
    previous_rev = old.get(REV) if old else None
    item[REV] = int(previous_rev or 0) + 1
    stored, uploaded = await large.offload(item, owner, thread_id, label, old or {}, old_blobs)
    expression = Expression()
    if old is None:
        condition = f"attribute_not_exists({expression.name('PK')})"
    elif previous_rev is None:  # written by Chainlit's layer: no revision yet
        condition = f"attribute_exists({expression.name('PK')}) AND attribute_not_exists({expression.name(REV)})"
    else:
        condition = f"{expression.name(REV)} = {expression.value(previous_rev)}"
    try:
        put = {"TableName": table.name, "Item": serialize(stored), "ConditionExpression": condition,
               **expression.kwargs()}
    except BaseException:
        await large.discard(uploaded, f"{operation} (cleanup)")
        raise
    try:
        await table.call("put_item", operation, ids, journaled=journaled, **put)
    except BaseException as exc:
        await large.forget_uploads(exc, uploaded, operation)
        if isinstance(exc, DynamoDBError) and exc.is_conflict:
            raise Conflict() from exc
        raise
    kept = set(stored.get(BLOBS, {}).values())
    return [k for k in old_blobs.values() if k not in kept]
