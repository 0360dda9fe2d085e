"""Which threads a retention or erasure job visits, listed straight from the backend with
an indexed query, a page at a time (never the whole table in memory).

    SQL       threads(updatedAt, id) (revision 0006) across all users; threads(userId,
              updatedAt, id) for one user. Keyset pages on (updatedAt, id), so deleting
              the rows of a page does not shift the next one.
    DynamoDB  one user: a Query of the UserThread index (keyed by owner and last
              activity: `UserThreadSK < TS#cutoff`). All users: a Scan of thread items
              with a filter — there is no index by activity alone, and a second index
              written on every message would cost more than an operator job's occasional
              read of the table. Run the all-users purge off-peak on big tables, or give
              `--user`.

Only this project's data layers are supported: a foreign class is refused with a message.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from settings import ConfigurationError

PAGE = 500


@dataclass(frozen=True)
class ThreadRef:
    id: str
    owner: str | None        # the owner's identifier
    updated_at: str | None   # last activity, stored text (sorts as time)
    tags: tuple[str, ...]


def _tags(value: Any) -> tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(str(t) for t in value)
    return ()


def _backend(layer: Any) -> str:
    from datalayers.sqlalchemy.layer import SQLAlchemyDataLayer

    if isinstance(layer, SQLAlchemyDataLayer):
        return "sql"
    dynamodb = sys.modules.get("datalayers.dynamodb.layer")  # loaded if the layer is one
    if dynamodb is not None and isinstance(layer, dynamodb.DynamoDBDataLayer):
        return "dynamodb"
    raise ConfigurationError(f"this command works on the project's SQL and DynamoDB data layers, not on "
                             f"{type(layer).__name__}")


def threads_of(layer: Any, *, inactive_before: str | None = None,
               owner: str | None = None) -> AsyncIterator[ThreadRef]:
    """Threads last active before `inactive_before` (all when None), of `owner` only
    when given (an identifier). Held threads are listed too: the caller decides."""
    if _backend(layer) == "sql":
        return _sql_threads(layer, inactive_before, owner)
    return _dynamodb_threads(layer, inactive_before, owner)


async def count_threads(layer: Any, *, inactive_before: str | None = None, owner: str | None = None) -> int | None:
    """How many `threads_of` would list, where an index answers it; None where only a
    second pass over the table would (DynamoDB across users)."""
    if _backend(layer) == "sql":
        return await _sql_count(layer, inactive_before, owner)
    if owner is None:
        return None
    return await _dynamodb_count(layer, inactive_before, owner)


async def thread_ref(layer: Any, thread_id: str) -> ThreadRef | None:
    """The thread's owner, activity and tags as stored now (one key lookup)."""
    if _backend(layer) == "sql":
        return await _sql_ref(layer, thread_id)
    return await _dynamodb_ref(layer, thread_id)


# ---------------------------------------------------------------------- SQL
def _sql_passes(layer: Any, inactive_before: str | None, owner: str | None, user_id: str | None):
    """(condition, keyset on updatedAt?) pairs whose union is the selection, each one an
    index range: by activity, or by owner id (threads owned only by identifier, written
    before their user had a row, are the `userId IS NULL` range of the owner index)."""
    from sqlalchemy import ColumnElement, and_, true

    from datalayers.sqlalchemy.schema import threads

    t = threads.c
    times: list[tuple[ColumnElement[bool], bool]]
    owners: list[ColumnElement[bool]] = [true()] if owner is None else (
        ([t.userId == user_id] if user_id else []) + [and_(t.userId.is_(None), t.userIdentifier == owner)])
    if inactive_before is None:
        times = [(t.updatedAt.is_not(None), True), (t.updatedAt.is_(None), False)]
    else:
        # Rows from before updatedAt existed have only createdAt (revision 0002 filled
        # most of them in).
        times = [(t.updatedAt < inactive_before, True),
                 (and_(t.updatedAt.is_(None), t.createdAt < inactive_before), False)]
    return [(and_(o, when), by_time) for o in owners for when, by_time in times]


async def _sql_user_id(layer: Any, owner: str | None) -> str | None:
    if owner is None:
        return None
    user = await layer.get_user(owner)
    return user.id if user is not None else None


def _sql_select():
    from sqlalchemy import func, select

    from datalayers.sqlalchemy.schema import threads, users

    author = func.coalesce(threads.c.userIdentifier, users.c.identifier).label("owner")
    return select(threads.c.id, author, threads.c.updatedAt, threads.c.createdAt, threads.c.tags).select_from(
        threads.outerjoin(users, users.c.id == threads.c.userId))


def _sql_row(row) -> ThreadRef:
    return ThreadRef(row.id, row.owner, row.updatedAt or row.createdAt, _tags(row.tags))


async def _sql_threads(layer: Any, inactive_before: str | None, owner: str | None) -> AsyncIterator[ThreadRef]:
    from sqlalchemy import and_, or_

    from datalayers.sqlalchemy.schema import threads

    t = threads.c
    user_id = await _sql_user_id(layer, owner)
    for condition, by_time in _sql_passes(layer, inactive_before, owner, user_id):
        last: tuple[str, str] | None = None
        while True:
            query = _sql_select().where(condition)
            if by_time:
                if last is not None:
                    query = query.where(or_(t.updatedAt > last[0], and_(t.updatedAt == last[0], t.id > last[1])))
                query = query.order_by(t.updatedAt, t.id)
            else:
                if last is not None:
                    query = query.where(t.id > last[1])
                query = query.order_by(t.id)

            async def work(conn, query=query):
                return (await conn.execute(query.limit(PAGE))).all()

            rows = await layer._run("list threads", work, inactive_before=inactive_before, owner=owner)
            for row in rows:
                yield _sql_row(row)
            if len(rows) < PAGE:
                break
            last = (rows[-1].updatedAt, rows[-1].id)


async def _sql_count(layer: Any, inactive_before: str | None, owner: str | None) -> int:
    from sqlalchemy import func, or_, select

    from datalayers.sqlalchemy.schema import threads

    user_id = await _sql_user_id(layer, owner)
    conditions = [c for c, _ in _sql_passes(layer, inactive_before, owner, user_id)]
    query = select(func.count()).select_from(threads).where(or_(*conditions))

    async def work(conn):
        return int((await conn.execute(query)).scalar() or 0)

    return await layer._run("count threads", work, inactive_before=inactive_before, owner=owner)


async def _sql_ref(layer: Any, thread_id: str) -> ThreadRef | None:
    from datalayers.sqlalchemy.schema import threads

    async def work(conn):
        return (await conn.execute(_sql_select().where(threads.c.id == thread_id))).first()

    row = await layer._run("read thread", work, thread_id=thread_id)
    return _sql_row(row) if row is not None else None


# ---------------------------------------------------------------------- DynamoDB
_THREAD_ATTRIBUTES = ("PK", "id", "userIdentifier", "UserThreadPK", "updatedAt", "createdAt", "tags")


def _dynamodb_row(item: dict[str, Any]) -> ThreadRef:
    from datalayers.dynamodb.items import remove_prefix

    thread_id = item.get("id") or remove_prefix(item.get("PK"), "THREAD#") or ""
    owner = item.get("userIdentifier") or remove_prefix(item.get("UserThreadPK"), "USER#")
    return ThreadRef(thread_id, owner, item.get("updatedAt") or item.get("createdAt"), _tags(item.get("tags")))


def _dynamodb_owner_query(owner: str, inactive_before: str | None) -> dict[str, Any]:
    from datalayers.dynamodb.items import INDEX_NAME, Expression

    e = Expression()
    condition = f"{e.name('UserThreadPK')} = {e.value(f'USER#{owner}')}"
    if inactive_before is not None:
        # UserThreadSK is TS#{last activity}#{id}: everything before the cutoff sorts below it.
        condition += f" AND {e.name('UserThreadSK')} < {e.value(f'TS#{inactive_before}')}"
    return {"IndexName": INDEX_NAME, "KeyConditionExpression": condition, **e.kwargs()}


async def _dynamodb_threads(layer: Any, inactive_before: str | None, owner: str | None) -> AsyncIterator[ThreadRef]:
    from datalayers.dynamodb.items import Expression, deserialize

    ids = {"inactive_before": inactive_before, "owner": owner}
    if owner is not None:
        async for item in layer.table.query("list threads", ids, **_dynamodb_owner_query(owner, inactive_before),
                                            Limit=PAGE):
            yield _dynamodb_row(item)
        return
    e = Expression()
    condition = f"{e.name('SK')} = {e.value('THREAD')}"
    if inactive_before is not None:
        cutoff = e.value(inactive_before)
        condition += (f" AND ({e.name('updatedAt')} < {cutoff} OR (attribute_not_exists({e.name('updatedAt')})"
                      f" AND {e.name('createdAt')} < {cutoff}))")
    kwargs: dict[str, Any] = {"TableName": layer.table.name, "FilterExpression": condition,
                              "ProjectionExpression": e.names_of(_THREAD_ATTRIBUTES), **e.kwargs()}
    while True:
        page = await layer.table.call("scan", "list threads", ids, **kwargs)
        for raw in page.get("Items", []):
            yield _dynamodb_row(deserialize(raw))
        if "LastEvaluatedKey" not in page:
            return
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def _dynamodb_count(layer: Any, inactive_before: str | None, owner: str) -> int:
    ids = {"inactive_before": inactive_before, "owner": owner}
    kwargs: dict[str, Any] = {"TableName": layer.table.name, "Select": "COUNT",
                              **_dynamodb_owner_query(owner, inactive_before)}
    total = 0
    while True:
        page = await layer.table.call("query", "count threads", ids, **kwargs)
        total += int(page.get("Count", 0))
        if "LastEvaluatedKey" not in page:
            return total
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


async def _dynamodb_ref(layer: Any, thread_id: str) -> ThreadRef | None:
    from datalayers.dynamodb.items import thread_key

    item = await layer.table.get(thread_key(thread_id), "read thread", {"thread_id": thread_id},
                                 attributes=_THREAD_ATTRIBUTES)
    return _dynamodb_row(item) if item else None
