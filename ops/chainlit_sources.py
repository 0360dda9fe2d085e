"""Databases written by Chainlit 2.12's own data layers, as a source of `export` / `copy`.

Name one with `chainlit+` before its URL (the storage URL is the one its storage provider
wrote to, or any store holding the same object keys):

    chainlit+postgresql://user@host/db,s3://bucket?region=…     Chainlit's SQLAlchemyDataLayer
    chainlit+sqlite+aiosqlite:///old.db,file:///srv/files       (its documented schema)
    chainlit+dynamodb://TABLE?region=…,s3://bucket              Chainlit's DynamoDBDataLayer

A source is only read — never migrated or upgraded (this app's migrations would upgrade a
Chainlit SQL database in place and `chainlit-persist upgrade` a Chainlit table; a copy must
leave the original as it was, to fall back to):

* SQL: plain SELECTs on Chainlit's documented tables (`users`, `threads`, `steps`,
  `elements`, `feedbacks`, reflected, so the columns its later releases added come along),
  one thread at a time. Chainlit keeps no last-activity time: a thread's is its newest
  step's `createdAt` (what Chainlit's sidebar orders by). Values are turned into the dicts
  Chainlit's own `get_thread` returns (JSON text parsed on SQLite, UUIDs as text,
  `showInput` back to a boolean).
* DynamoDB: this app's DynamoDB layer already reads the items Chainlit's layer writes; it
  is opened without the table check (which would ask for `upgrade`: Chainlit's index
  projects less than ours) and the listing scans the table, which needs no index.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .exporter import Source
from .records import Bundle, element_record, feedback_record, step_record, thread_record, user_record

if TYPE_CHECKING:
    from settings import Settings

    from .stores import Endpoint

PREFIX = "chainlit+"
TABLES = ("users", "threads", "steps", "elements", "feedbacks")
JSON_COLUMNS = frozenset({"metadata", "generation", "props", "tags", "modes"})
PAGE = 500


def _value(column: str, value: Any) -> Any:
    if isinstance(value, uuid.UUID):
        return str(value)
    if column in JSON_COLUMNS and isinstance(value, str):  # SQLite keeps JSON as text
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _row(row: Any) -> dict[str, Any]:
    return {k: _value(k, v) for k, v in row._mapping.items() if v is not None}


def _step(row: Any) -> dict[str, Any]:
    step = _row(row)
    if isinstance(step.get("showInput"), str):  # Chainlit writes str(showInput).lower()
        step["showInput"] = {"true": True, "false": False}.get(step["showInput"], step["showInput"])
    if step.get("generation") == {}:  # Chainlit writes json.dumps({}) for "no generation"
        step.pop("generation")
    return step


class ChainlitSQLSource(Source):
    """Chainlit's SQLAlchemy schema, read with SELECTs only."""

    def __init__(self, url: str, storage: Any, description: dict[str, Any], concurrency: int = 8):
        from sqlalchemy.ext.asyncio import create_async_engine

        from datalayers.sqlalchemy import normalize_database_url

        super().__init__(None, storage, description, concurrency)
        self.engine = create_async_engine(normalize_database_url(url), pool_size=concurrency, max_overflow=0)
        self.tables: dict[str, Any] = {}

    async def _tables(self) -> dict[str, Any]:
        if not self.tables:
            from sqlalchemy import MetaData

            metadata = MetaData()
            async with self.engine.connect() as conn:
                await conn.run_sync(lambda sync: metadata.reflect(sync, only=list(TABLES)))
            self.tables = {name: metadata.tables[name] for name in TABLES}
        return self.tables

    async def _select(self, query) -> list[Any]:
        from sqlalchemy.exc import SQLAlchemyError

        from datalayers.errors import DataLayerError

        try:
            async with self.engine.connect() as conn:
                return list((await conn.execute(query)).all())
        except SQLAlchemyError as exc:
            raise DataLayerError(f"reading the Chainlit database: {exc}") from exc

    async def users(self, only: str | None = None) -> AsyncIterator[dict[str, Any]]:
        from sqlalchemy import select

        table = (await self._tables())["users"]
        after: str | None = None
        while True:
            query = select(table).order_by(table.c.identifier).limit(PAGE)
            if only is not None:
                query = query.where(table.c.identifier == only)
            elif after is not None:
                query = query.where(table.c.identifier > after)
            rows = [_row(r) for r in await self._select(query)]
            if only is not None and not rows:
                raise ValueError(f"no user {only!r} in the source database")
            for row in rows:
                yield user_record(row)
            if only is not None or len(rows) < PAGE:
                return
            after = rows[-1]["identifier"]

    async def thread_rows(self, only: str | None, since: str | None) -> AsyncIterator[dict[str, Any]]:
        from sqlalchemy import String, cast, func, or_, select

        since = _normalized(since)
        tables = await self._tables()
        threads, steps, users = tables["threads"], tables["steps"], tables["users"]
        activity = (select(func.max(steps.c.createdAt)).where(steps.c.threadId == threads.c.id)
                    .scalar_subquery().label("lastActivity"))
        after: Any = None
        while True:
            query = select(threads, activity).order_by(threads.c.id).limit(PAGE)
            if after is not None:
                query = query.where(threads.c.id > after)
            if only is not None:
                owner = select(users.c.id).where(users.c.identifier == only).scalar_subquery()
                query = query.where(or_(threads.c.userIdentifier == only, cast(threads.c.userId, String) ==
                                        cast(owner, String)))
            rows = await self._select(query)
            for row in rows:
                data = _row(row)
                last = max(filter(None, (data.get("createdAt"), data.pop("lastActivity", None))), default=None)
                data["updatedAt"] = last
                if since is None or (_normalized(last) or "") >= since:
                    yield data
            if len(rows) < PAGE:
                return
            after = rows[-1].id

    async def read_thread(self, row: dict[str, Any]) -> Bundle | None:
        from sqlalchemy import select

        tables = await self._tables()
        thread_id = row["id"]
        steps, elements, feedbacks = tables["steps"], tables["elements"], tables["feedbacks"]
        step_rows = await self._select(select(steps).where(steps.c.threadId == row["id"])
                                       .order_by(steps.c.createdAt, steps.c.id))
        element_rows = await self._select(select(elements).where(elements.c.threadId == row["id"]))
        feedback_rows = await self._select(select(feedbacks).where(feedbacks.c.threadId == row["id"]))
        owner = row.get("userIdentifier")
        if owner is None and row.get("userId"):
            users = tables["users"]
            found = await self._select(select(users.c.identifier).where(users.c.id == row["userId"]))
            owner = found[0].identifier if found else None
        thread = {**row, "userIdentifier": owner}
        for key in ("createdAt", "updatedAt"):
            thread[key] = _normalized(thread.get(key))
        elements_out = []
        for element in map(_row, element_rows):
            if element.get("objectKey"):
                element.pop("url", None)  # a link Chainlit signed once; ours are signed per read
            elements_out.append(element_record(element, thread_id))
        return Bundle(thread_record(thread, thread["updatedAt"]),
                      [step_record(_step(s), thread_id) for s in step_rows], elements_out,
                      [feedback_record(_row(f), thread_id) for f in feedback_rows])

    async def close(self) -> None:
        await self.engine.dispose()


def _normalized(value: Any) -> str | None:
    from datalayers.timestamps import normalize_timestamp

    return normalize_timestamp(value) if value else None


@asynccontextmanager
async def open_chainlit_source(settings: Settings, endpoint: Endpoint, concurrency: int) -> AsyncIterator[Source]:
    url = endpoint.database_url[len(PREFIX):]
    storage = replace(settings, storage_url=endpoint.storage_url).build_storage()
    description = {**endpoint.describe(), "written_by": "chainlit"}
    if url.lower().startswith("dynamodb"):
        from datalayers.dynamodb import DynamoDBDataLayer

        layer = DynamoDBDataLayer.from_url(url, storage=storage, auto_migrate=False, verify_table=False)
        try:
            yield Source(layer, storage, description, concurrency)
        finally:
            await layer.close()  # closes the storage too
        return
    source = ChainlitSQLSource(url, storage, description, concurrency)
    try:
        yield source
    finally:
        await source.close()
        await storage.close()
