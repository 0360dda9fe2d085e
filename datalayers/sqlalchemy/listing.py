"""Listing users and threads on SQL, for the export (`datalayers/listing.py`): keyset pages
on the primary key / the unique identifier, one SELECT per page; and the import's step
writes of one thread in one transaction. Mixed into `SQLAlchemyDataLayer`."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import NotYours
from ..writes import StepWrite
from .schema import steps, threads, users
from .upserts import step_write


class SQLListing:
    _run: Any
    dialect: str
    statements: Any

    async def _list_users(self, position: Any, limit: int) -> tuple[list[dict[str, Any]], Any]:
        query = select(users.c.id, users.c.identifier, users.c.metadata, users.c.createdAt)
        if position is not None:
            query = query.where(users.c.identifier > position)
        query = query.order_by(users.c.identifier).limit(limit)

        async def work(conn: AsyncConnection):
            return (await conn.execute(query)).all()

        rows = await self._run("list_users", work)
        found = [{"id": r.id, "identifier": r.identifier, "metadata": r.metadata or {}, "createdAt": r.createdAt}
                 for r in rows]
        return found, (found[-1]["identifier"] if len(found) == limit else None)

    async def _list_threads(self, position: Any, limit: int, user_id: str | None,
                            since: str | None) -> tuple[list[dict[str, Any]], Any]:
        query = select(threads.c.id, threads.c.userIdentifier, threads.c.createdAt, threads.c.updatedAt,
                       threads.c.name, threads.c.tags, threads.c.metadata)
        if position is not None:
            query = query.where(threads.c.id > position)
        if user_id is not None:  # through the (userId, updatedAt) index
            query = query.where(threads.c.userId == select(users.c.id).where(users.c.identifier == user_id)
                                .scalar_subquery())
        if since is not None:
            query = query.where(threads.c.updatedAt >= since)
        query = query.order_by(threads.c.id).limit(limit)

        async def work(conn: AsyncConnection):
            return (await conn.execute(query)).all()

        rows = await self._run("list_threads", work, user=user_id)
        found = [{"id": r.id, "userIdentifier": r.userIdentifier, "createdAt": r.createdAt,
                  "updatedAt": r.updatedAt or r.createdAt, "name": r.name, "tags": r.tags, "metadata": r.metadata}
                 for r in rows]
        return found, (found[-1]["id"] if len(found) == limit else None)

    async def _import_steps(self, writes: list[StepWrite], actor: str | None) -> None:
        """The statements each journaled step write runs (thread touch, guarded step
        upsert), for all of a thread's steps in ONE transaction: all or none, a step id of
        another thread refused as always. An import writes a whole thread at a time; one
        commit instead of one per step is most of its time on SQL."""
        async def work(conn: AsyncConnection):
            for write in writes:
                for prepared in step_write(self.dialect, write, actor):
                    result = await conn.execute(*self.statements.statement(prepared))
                if self.dialect in ("postgresql", "sqlite"):
                    stored = result.first() is not None  # RETURNING: no row, the step is another thread's
                else:
                    stored = (await conn.execute(select(steps.c.threadId).where(steps.c.id == write.id))
                              ).scalar() == write.thread_id
                if not stored:
                    raise NotYours(f"step {write.id} is in another thread")

        await self._run("import_steps", work, thread_id=writes[0].thread_id if writes else None)
