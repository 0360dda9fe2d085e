"""The sidebar: a page of a user's threads from the `UserThread` index alone, and the
favourite steps.

The index is keyed by owner and last activity and projects what a page shows (name,
createdAt, owner, tags, metadata, `_blobs`) and the feedback counters: a page without
filters is one Query; the feedback filter is a FilterExpression of that same Query. Reading
goes on until the page is full, so filters never produce short or empty pages. Metadata
moved to blob storage (`_blobs`) is read from storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, cast

from chainlit.types import ThreadDict

from storage.base import ObjectNotFound

from ..errors import RequestError
from .client import Table
from .items import (
    BLOBS,
    FEEDBACK_DOWN,
    FEEDBACK_UP,
    INDEX_ATTRIBUTES,
    INDEX_NAME,
    Expression,
    deserialize,
    public,
    remove_prefix,
    serialize,
    thread_key,
)
from .large import LargeAttributes
from .search import search_filter


def step_dict(item: dict[str, Any], with_feedback: bool = True) -> dict[str, Any]:
    """A stored step as Chainlit's dict, its rating in Chainlit's feedback shape."""
    data = public(item)
    feedback = data.pop("feedback", None)
    if with_feedback and isinstance(feedback, dict) and feedback.get("value") is not None:
        data["feedback"] = {"id": feedback.get("id"), "forId": feedback.get("forId", data.get("id")),
                            "threadId": feedback.get("threadId"), "value": int(feedback["value"]),
                            "comment": feedback.get("comment")}
    return data


class Sidebar:
    def __init__(self, table: Table, large: LargeAttributes):
        self.table = table
        self.large = large

    async def page(self, user_id: str, identifier: str, position: dict | None, limit: int,
                   search: str | None, feedback: int | None) -> list[tuple[ThreadDict, dict]]:
        """Up to `limit` threads after `position`, most recently active first, each with
        the cursor position that follows it."""
        term = search.lower() if search else None
        ids = {"user_id": user_id}
        e = Expression()
        kwargs: dict[str, Any] = {
            "IndexName": INDEX_NAME,
            "KeyConditionExpression": f"{e.name('UserThreadPK')} = {e.value(f'USER#{identifier}')}",
            "ScanIndexForward": False,
            # Without filters one slice of the index is the answer; with filters, read ahead
            # in bigger slices so a page fills in fewer round trips.
            "Limit": limit if term is None and feedback is None else max(50, limit),
        }
        if feedback is not None:
            counter = FEEDBACK_UP if int(feedback) == 1 else FEEDBACK_DOWN
            kwargs["FilterExpression"] = f"{e.name(counter)} > {e.value(0)}"
        kwargs.update(e.kwargs())
        if position is not None:
            sort_key, last_id = position.get("s"), position.get("t")
            if not isinstance(sort_key, str) or not isinstance(last_id, str):
                raise RequestError("invalid pagination cursor: start again from the first page")
            kwargs["ExclusiveStartKey"] = serialize({"UserThreadPK": f"USER#{identifier}", "UserThreadSK": sort_key,
                                                     **thread_key(last_id)})
        matches: list[dict[str, Any]] = []
        async with aclosing(self._index_batches(kwargs, ids)) as batches:
            async for batch in batches:
                if term is not None:
                    batch = await search_filter(self.table, self.large, batch, term)
                matches.extend(batch)
                if len(matches) >= limit:
                    break
        matches = matches[:limit]
        threads = await asyncio.gather(*(self._thread(m, user_id, identifier) for m in matches))
        return [(thread, {"s": m["UserThreadSK"], "t": m["id"]}) for thread, m in zip(threads, matches, strict=True)]

    async def _index_batches(self, kwargs: dict[str, Any], ids: dict[str, Any]) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Slices of the UserThread index query (each at most `Limit` items evaluated)."""
        kwargs = {"TableName": self.table.name, **kwargs}
        while True:
            response = await self.table.call("query", "list_threads", ids, **kwargs)
            batch = []
            for raw in response.get("Items", []):
                item = deserialize(raw)
                thread_id = remove_prefix(item.get("PK", ""), "THREAD#")
                if thread_id is None or item.get("SK") != "THREAD":
                    continue
                item["id"] = thread_id
                batch.append(item)
            yield batch
            if "LastEvaluatedKey" not in response:
                return
            kwargs["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    async def _thread(self, item: dict[str, Any], user_id: str, identifier: str) -> ThreadDict:
        """The thread as a page shows it, from its index item. The index partition is the
        owner's, so a thread owned through a step write (no `userId` yet) gets the owner's."""
        if item.get(BLOBS):
            try:
                item, _ = await self.large.hydrate(dict(item))
            except ObjectNotFound:
                # The index lags the table: a newer write replaced the blob it names. The
                # table item names the current one.
                fresh = await self.table.get(thread_key(item["id"]), "list_threads", {"thread_id": item["id"]},
                                             attributes=INDEX_ATTRIBUTES)
                item, _ = await self.large.hydrate({**(fresh or {}), "id": item["id"]})
        return cast(ThreadDict, {
            "id": item["id"], "createdAt": item.get("createdAt"), "name": item.get("name"),
            "userId": item.get("userId") or user_id, "userIdentifier": item.get("userIdentifier") or identifier,
            "tags": item.get("tags"), "metadata": item.get("metadata") or {}, "steps": [], "elements": [],
        })

    async def favorites(self, user_id: str, identifier: str) -> list[dict[str, Any]]:
        """Steps whose metadata says favorite, in all of the user's threads, newest first."""
        ids = {"user_id": user_id}
        e = Expression()
        thread_ids = []
        async for item in self.table.query("get_favorite_steps", ids, IndexName=INDEX_NAME,
                                           KeyConditionExpression=f"{e.name('UserThreadPK')} = "
                                                                  f"{e.value(f'USER#{identifier}')}",
                                           ProjectionExpression=e.name("PK"), **e.kwargs()):
            thread_id = remove_prefix(item.get("PK", ""), "THREAD#")
            if thread_id is not None:
                thread_ids.append(thread_id)

        def favorite(ex: Expression) -> str:
            # Steps whose metadata went to blob storage are checked after reading it.
            return (f"{ex.path('metadata', 'favorite')} = {ex.value(True)} "
                    f"OR attribute_exists({ex.path(BLOBS, 'metadata')})")

        semaphore = asyncio.Semaphore(16)

        async def favorites_in(thread_id: str) -> list[dict[str, Any]]:
            async with semaphore:
                items = await self.table.partition(thread_id, "get_favorite_steps", "STEP#",
                                                   filter_expression=favorite)
            found = []
            for item in items:
                item, _ = await self.large.hydrate(item)
                if (item.get("metadata") or {}).get("favorite") is True:
                    found.append(step_dict(item, with_feedback=False))
            return found

        steps = [s for group in await asyncio.gather(*(favorites_in(t) for t in thread_ids)) for s in group]
        steps.sort(key=lambda s: s.get("createdAt") or "", reverse=True)
        return steps
