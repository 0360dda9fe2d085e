"""Every blob key the database points at — element files, and on DynamoDB the large
attributes moved to storage (`_blobs`) — streamed from the backend a page at a time, for
the storage sweep (`ops/sweep.py`).

    SQL       elements with an objectKey, keyset pages on the primary key
    DynamoDB  a Scan of items that have an objectKey or `_blobs` (the table has no index
              over all elements; the sweep is an offline job that reads every key anyway)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .stale import PAGE, _backend


@dataclass(frozen=True)
class BlobRef:
    key: str
    thread_id: str
    element_id: str | None   # None: a large attribute of a DynamoDB thread or step item


def blob_references(layer: Any) -> AsyncIterator[BlobRef]:
    if _backend(layer) == "sql":
        return _sql_references(layer)
    return _dynamodb_references(layer)


async def _sql_references(layer: Any) -> AsyncIterator[BlobRef]:
    from sqlalchemy import select

    from datalayers.sqlalchemy.schema import elements

    last: str | None = None
    while True:
        query = select(elements.c.id, elements.c.threadId, elements.c.objectKey).where(
            elements.c.objectKey.is_not(None))
        if last is not None:
            query = query.where(elements.c.id > last)
        query = query.order_by(elements.c.id).limit(PAGE)

        async def work(conn, query=query):
            return (await conn.execute(query)).all()

        rows = await layer._run("list element blobs", work)
        for row in rows:
            if row.objectKey:
                yield BlobRef(row.objectKey, row.threadId or "", row.id)
        if len(rows) < PAGE:
            return
        last = rows[-1].id


async def _dynamodb_references(layer: Any) -> AsyncIterator[BlobRef]:
    from datalayers.dynamodb.items import BLOBS, Expression, deserialize, remove_prefix

    e = Expression()
    kwargs: dict[str, Any] = {
        "TableName": layer.table.name,
        "FilterExpression": f"attribute_exists({e.name('objectKey')}) OR attribute_exists({e.name(BLOBS)})",
        "ProjectionExpression": e.names_of(("PK", "SK", "objectKey", BLOBS)), **e.kwargs()}
    while True:
        page = await layer.table.call("scan", "list blobs", {}, **kwargs)
        for raw in page.get("Items", []):
            item = deserialize(raw)
            thread_id = remove_prefix(item.get("PK"), "THREAD#") or ""
            element_id = remove_prefix(item.get("SK"), "ELEMENT#")
            if item.get("objectKey") and element_id is not None:
                yield BlobRef(item["objectKey"], thread_id, element_id)
            for key in (item.get(BLOBS) or {}).values():
                if key:
                    yield BlobRef(str(key), thread_id, None)
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]
