"""`SQLAlchemyDataLayer`: the data layer on SQLite, PostgreSQL and MySQL/MariaDB, one code path
(SQLAlchemy Core, async drivers). The shared rules live in `datalayers.base`; this module
is the database work, each method one transaction:

* step and thread writes are single-statement upserts (`upserts.py`) — no locked read;
* `list_threads` filters, orders and pages in the database (keyset on updatedAt, id) and
  touches steps only through an index (search) or an EXISTS probe (feedback);
* `get_thread` costs four queries whatever the thread size;
* bound parameters only; errors are raised as `DataLayerError` naming the operation and
  ids, never logged-and-swallowed; message text stays out of logs and error messages.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from contextlib import asynccontextmanager
from typing import Any, cast

from chainlit.logger import logger as chainlit_logger
from chainlit.types import Feedback, ThreadDict
from chainlit.user import PersistedUser
from sqlalchemy import and_, case, delete, exists, func, or_, select, text, true, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ColumnElement

from .. import migrations
from ..base import PersistentDataLayer
from ..errors import DataLayerError, NotFound, NotYours, RequestError
from ..timestamps import utc_now
from ..writes import StepWrite, ThreadWrite
from . import nul
from .api_tokens import SQLApiTokens
from .failures import TRANSIENT, failure_kind
from .listing import SQLListing
from .messages import SQLMessagePages
from .schema import elements, feedbacks, steps, threads, users
from .sessions import SQLSessionRevocations
from .upserts import (
    StatementCache,
    element_upsert,
    show_input_from_db,
    step_write,
    thread_upsert,
    user_upsert,
)
from .url import build_engine, normalize_database_url, redacted

# The thread's author: the identifier stored on the thread, else its user's (older rows).
AUTHOR = func.coalesce(threads.c.userIdentifier, users.c.identifier)
THREAD_WITH_USER = threads.outerjoin(users, users.c.id == threads.c.userId)
POOL_SIZE = 8
#: Direct (not journaled) operations retry a deadlock or lock timeout this many times.
DIRECT_ATTEMPTS = 3


def _like_pattern(term: str) -> str:
    escaped = term.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def _row_dict(row) -> dict:
    """A step or element row as Chainlit's dict: no Nones, `extra` keys put back."""
    data = {k: v for k, v in row._mapping.items() if k != "extra" and v is not None}
    data.update({k: v for k, v in (row.extra or {}).items() if k not in data})
    return data


def _step_dict(row) -> dict:
    data = _row_dict(row)
    if "showInput" in data:
        data["showInput"] = show_input_from_db(data["showInput"])
    return data


class SQLAlchemyDataLayer(SQLListing, SQLApiTokens, SQLSessionRevocations, SQLMessagePages, PersistentDataLayer):
    """Chainlit data layer on SQLAlchemy. Public constructor: pass a URL, or use `from_url`."""

    logger = chainlit_logger.getChild("SQLAlchemy")
    _step_row = staticmethod(_step_dict)
    _element_row = staticmethod(_row_dict)

    def __init__(
        self,
        url: str,
        *,
        storage=None,
        auto_migrate: bool = True,
        cursor_secret: bytes | None = None,
        journal=None,
        read_wait: float = 5.0,
        engine_options: dict[str, Any] | None = None,
    ):
        options = {"pool_size": POOL_SIZE, "max_overflow": POOL_SIZE, **(engine_options or {})}
        # Journaled writes use at most the pool's steady connections, leaving the overflow
        # to reads.
        super().__init__(storage=storage, cursor_secret=cursor_secret, journal=journal, read_wait=read_wait,
                         write_concurrency=options["pool_size"])
        self.url = normalize_database_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        self.engine = build_engine(self.url, options)
        self.statements = StatementCache(self.dialect)
        # Same pool; for single statements that need no transaction around them.
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._migrated = not auto_migrate
        self._migrate_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, storage=None, auto_migrate: bool = True, **kwargs) -> SQLAlchemyDataLayer:
        return cls(url, storage=storage, auto_migrate=auto_migrate, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redacted(self.url)!r})"

    # ------------------------------------------------------------------ plumbing
    async def migrate(self) -> None:
        """Create or upgrade the schema (Alembic). Runs once, on first use, when auto_migrate."""
        async with self._migrate_lock:
            if not self._migrated:
                await migrations.upgrade(self.engine)
                self._migrated = True

    @asynccontextmanager
    async def _transaction(self, operation: str, autocommit: bool = False, **ids):
        """One transaction; with `autocommit` (a single statement, atomic by itself) no
        BEGIN/COMMIT round trips."""
        if not self._migrated:
            await self.migrate()
        try:
            if autocommit:
                async with self._autocommit.connect() as connection:
                    yield connection
                return
            async with self.engine.begin() as connection:
                yield connection
        except (SQLAlchemyError, ConnectionError, TimeoutError, socket.gaierror, OSError) as exc:
            context = ", ".join(f"{k}={v!r}" for k, v in ids.items())
            raise DataLayerError(f"{operation} failed ({context}): {exc}") from exc

    async def _run(self, operation: str, work, journaled: bool = False, autocommit: bool = False, **ids):
        """`work(connection)` in one transaction. A deadlock, a lock timeout or a connection
        the server dropped (restarted since it was pooled) fails a direct operation only
        after a retry here; journaled writes are retried (and their final outcome reported)
        by the journal, so their failures are only DEBUG here."""
        attempts = 1 if journaled else DIRECT_ATTEMPTS
        for attempt in range(attempts):
            try:
                async with self._transaction(operation, autocommit, **ids) as connection:
                    return await work(connection)
            except DataLayerError as exc:
                cause = type(exc.__cause__).__name__
                if attempt < attempts - 1 and (self._is_lock_conflict(exc) or self._is_stale_connection(exc)):
                    self.logger.debug("%s: retrying after %s", operation, cause)
                    await asyncio.sleep(0.05 * (attempt + 1))
                    continue
                context = ", ".join(f"{k}={v!r}" for k, v in ids.items())
                self.logger.log(logging.DEBUG if journaled else logging.ERROR, "%s failed (%s): %s",
                                operation, context, cause)
                raise

    @staticmethod
    def _is_lock_conflict(exc: BaseException) -> bool:
        text_ = str(exc.__cause__ or exc).lower()
        return failure_kind(exc) == TRANSIENT and ("deadlock" in text_ or "lock" in text_)

    @staticmethod
    def _is_stale_connection(exc: BaseException) -> bool:
        cause = exc.__cause__
        return isinstance(cause, DBAPIError) and cause.connection_invalidated

    def _failure_kind(self, exc: BaseException) -> str | None:
        return failure_kind(exc)

    async def _close(self) -> None:
        await self.engine.dispose()

    # ------------------------------------------------------------------ users
    @staticmethod
    def _persisted_user(row) -> PersistedUser:
        metadata = row.metadata or {}
        return PersistedUser(
            id=row.id, identifier=row.identifier, createdAt=row.createdAt, metadata=metadata,
            display_name=metadata.get("display_name") if isinstance(metadata, dict) else None,
        )

    async def _get_user(self, identifier: str) -> PersistedUser | None:
        async def work(conn: AsyncConnection):
            row = (await conn.execute(select(users).where(users.c.identifier == identifier))).first()
            return self._persisted_user(row) if row else None

        return await self._run("get_user", work, identifier=identifier)

    async def _upsert_user(self, identifier: str, metadata: dict) -> PersistedUser:
        async def work(conn: AsyncConnection):
            await conn.execute(*self.statements.statement(
                user_upsert(self.dialect, str(uuid.uuid4()), identifier, metadata, utc_now())))
            row = (await conn.execute(select(users).where(users.c.identifier == identifier))).first()
            return self._persisted_user(row)

        return await self._run("create_user", work, identifier=identifier)

    # ------------------------------------------------------------------ journaled writes
    async def _write_thread(self, write: ThreadWrite, actor: str | None) -> None:
        async def work(conn: AsyncConnection):
            await conn.execute(*self.statements.statement(thread_upsert(self.dialect, write, write.at)))

        await self._run("update_thread", work, journaled=True, thread_id=write.id)

    async def _write_step(self, write: StepWrite, actor: str | None) -> None:
        async def work(conn: AsyncConnection):
            # The thread first: it must exist (a step may be the thread's first write) and
            # gets an owner here if it has none.
            for prepared in step_write(self.dialect, write, actor):
                result = await conn.execute(*self.statements.statement(prepared))
            if self.dialect in ("postgresql", "sqlite"):
                return result.first() is not None  # RETURNING: no row, the step is another thread's
            stored = select(steps.c.threadId).where(steps.c.id == write.id)
            return (await conn.execute(stored)).scalar() == write.thread_id

        operation = "create_step" if write.created else "update_step"
        # No step of another thread was changed: the guarded upsert left it alone.
        if not await self._run(operation, work, journaled=True, autocommit=self.dialect == "postgresql",
                               step_id=write.id, thread_id=write.thread_id):
            raise NotYours(f"step {write.id} is in another thread")

    async def _delete_rows(self, operation: str, element_filter, statements, journaled: bool = False,
                           **ids) -> list[str]:
        """Delete rows in one transaction; return the blob keys of the elements they held."""

        async def work(conn: AsyncConnection):
            keys = (await conn.execute(
                select(elements.c.objectKey).where(element_filter, elements.c.objectKey.is_not(None))
            )).scalars().all()
            for statement in statements:
                await conn.execute(statement)
            return list(keys)

        return await self._run(operation, work, journaled, **ids)

    async def _remove_step(self, step_id: str, thread_hint: str | None) -> list[str]:
        # Only in the thread the write was checked against (its owner's): a step id sent by
        # a client never reaches into another thread.
        def in_thread(table):
            return table.c.threadId == thread_hint if thread_hint else true()

        return await self._delete_rows(
            "delete_step", and_(elements.c.forId == step_id, in_thread(elements)),
            [delete(feedbacks).where(feedbacks.c.forId == step_id, in_thread(feedbacks)),
             delete(elements).where(elements.c.forId == step_id, in_thread(elements)),
             delete(steps).where(steps.c.id == step_id, in_thread(steps))],
            journaled=True, step_id=step_id)

    async def _write_element(self, row: dict, actor: str | None) -> list[str]:
        async def work(conn: AsyncConnection):
            previous = (await conn.execute(select(elements.c.objectKey).where(elements.c.id == row["id"]))).scalar()
            await conn.execute(*self.statements.statement(element_upsert(self.dialect, row)))
            return [previous] if previous and previous != row.get("objectKey") else []

        return await self._run("create_element", work, journaled=True, element_id=row["id"], thread_id=row.get("threadId"))

    async def _remove_element(self, element_id: str, thread_id: str | None) -> list[str]:
        condition = [elements.c.id == element_id]
        if thread_id is not None:
            condition.append(elements.c.threadId == thread_id)
        return await self._delete_rows("delete_element", and_(*condition), [delete(elements).where(*condition)],
                                       journaled=True, element_id=element_id)

    # ------------------------------------------------------------------ threads
    @staticmethod
    async def _author(conn: AsyncConnection, thread_id: str) -> str | None:
        query = select(AUTHOR).select_from(THREAD_WITH_USER).where(threads.c.id == thread_id)
        return (await conn.execute(query)).scalar()

    async def _thread_author(self, thread_id: str, journaled: bool = False) -> str | None:
        return await self._run("get_thread_author", lambda conn: self._author(conn, thread_id), journaled,
                               thread_id=thread_id)

    async def _remove_thread(self, thread_id: str) -> list[str]:
        return await self._delete_rows(
            "delete_thread", elements.c.threadId == thread_id,
            [delete(feedbacks).where(feedbacks.c.threadId == thread_id),
             delete(elements).where(elements.c.threadId == thread_id),
             delete(steps).where(steps.c.threadId == thread_id),
             delete(threads).where(threads.c.id == thread_id)],
            thread_id=thread_id)

    async def _page_threads(self, user_id: str, position: dict | None, limit: int, search: str | None,
                            feedback: int | None) -> list[tuple[ThreadDict, dict]]:
        query = select(
            threads.c.id, threads.c.createdAt, threads.c.updatedAt, threads.c.name, threads.c.userId,
            threads.c.userIdentifier, threads.c.tags, threads.c.metadata,
        ).where(threads.c.userId == user_id)
        if position is not None:
            updated, last_id = position.get("u"), position.get("i")
            if not isinstance(updated, str) or not isinstance(last_id, str):
                raise RequestError("invalid pagination cursor: start again from the first page")
            query = query.where(or_(threads.c.updatedAt < updated,
                                    and_(threads.c.updatedAt == updated, threads.c.id < last_id)))
        if search:
            # Any step the user sees, as in Chainlit's own layers (tool output too).
            step_match = self._contains(steps.c.output, search)
            in_steps: ColumnElement[bool]
            if self.dialect == "postgresql":
                # Uncorrelated: PostgreSQL answers it once from the trigram index and hashes
                # the thread ids, instead of probing every thread's steps.
                in_steps = threads.c.id.in_(select(steps.c.threadId).where(step_match))
            else:
                in_steps = exists().where(steps.c.threadId == threads.c.id, step_match)
            query = query.where(or_(self._contains(threads.c.name, search), in_steps))
        if feedback is not None:
            query = query.where(exists().where(feedbacks.c.threadId == threads.c.id,
                                               feedbacks.c.value == int(feedback)))
        query = query.order_by(threads.c.updatedAt.desc(), threads.c.id.desc()).limit(limit)

        async def work(conn: AsyncConnection):
            if search and self.dialect == "postgresql":
                # PostgreSQL's cost model ignores lower() over long texts, so on small and
                # mid-sized tables it picks a sequential scan over the trigram index that is
                # ~10x slower; for this one transaction, make the index the plan.
                await conn.execute(text("SET LOCAL enable_seqscan = off"))
            return (await conn.execute(query)).all()

        rows = await self._run("list_threads", work, user_id=user_id)
        return [(ThreadDict(id=r.id, createdAt=r.createdAt, name=r.name, userId=r.userId,
                            userIdentifier=r.userIdentifier, tags=r.tags, metadata=r.metadata or {},
                            steps=[], elements=[]),
                 {"u": r.updatedAt, "i": r.id}) for r in rows]

    def _contains(self, column, term: str) -> ColumnElement[bool]:
        """`column` contains `term`, ignoring case, every character literal (NUL too)."""
        if self.dialect == "sqlite":
            # SQLite's LIKE stops at a NUL, in the pattern and in the text; instr does not.
            return func.instr(func.lower(column), term.lower()) > 0
        if self.dialect == "postgresql":
            term = nul.escape(term)  # as the text is stored; LIKE keeps the trigram indexes
        return func.lower(column).like(_like_pattern(term), escape="!")

    async def _read_thread(self, thread_id: str) -> ThreadDict | None:
        async def work(conn: AsyncConnection):
            thread = (await conn.execute(
                select(threads, AUTHOR.label("author")).select_from(THREAD_WITH_USER).where(threads.c.id == thread_id)
            )).first()
            if thread is None:
                return None
            step_rows = (await conn.execute(
                select(steps).where(steps.c.threadId == thread_id).order_by(
                    case((steps.c.createdAt.is_(None), 1), else_=0), steps.c.createdAt, steps.c.id)
            )).all()
            feedback_rows = (await conn.execute(select(feedbacks).where(feedbacks.c.threadId == thread_id))).all()
            element_rows = (await conn.execute(select(elements).where(elements.c.threadId == thread_id))).all()
            return thread, step_rows, feedback_rows, element_rows

        found = await self._run("get_thread", work, thread_id=thread_id)
        if found is None:
            return None
        thread, step_rows, feedback_rows, element_rows = found
        feedback_by_step = {f.forId: {"id": f.id, "forId": f.forId, "value": f.value, "comment": f.comment}
                            for f in feedback_rows}
        step_dicts = []
        for row in step_rows:
            step = _step_dict(row)
            if row.id in feedback_by_step:
                step["feedback"] = feedback_by_step[row.id]
            step_dicts.append(step)
        return cast(ThreadDict, {
            "id": thread.id, "createdAt": thread.createdAt, "name": thread.name, "userId": thread.userId,
            "userIdentifier": thread.author, "tags": thread.tags, "metadata": thread.metadata or {},
            "steps": step_dicts, "elements": [_row_dict(row) for row in element_rows],
        })

    async def _favorite_steps(self, user_id: str) -> list[dict]:
        query = (
            select(steps)
            .join(threads, threads.c.id == steps.c.threadId)
            .where(threads.c.userId == user_id, steps.c.metadata["favorite"].as_boolean().is_(True))
            .order_by(steps.c.createdAt.desc())
        )

        async def work(conn: AsyncConnection):
            return (await conn.execute(query)).all()

        return [_step_dict(row) for row in await self._run("get_favorite_steps", work, user_id=user_id)]

    async def _read_element(self, thread_id: str, element_id: str) -> dict | None:
        async def work(conn: AsyncConnection):
            query = select(elements).where(elements.c.id == element_id, elements.c.threadId == thread_id)
            return (await conn.execute(query)).first()

        row = await self._run("get_element", work, thread_id=thread_id, element_id=element_id)
        return _row_dict(row) if row is not None else None

    async def _element_thread(self, element_id: str, journaled: bool = False) -> str | None:
        async def work(conn: AsyncConnection):
            return (await conn.execute(select(elements.c.threadId).where(elements.c.id == element_id))).scalar()

        return await self._run("locate element", work, journaled, element_id=element_id)

    # ------------------------------------------------------------------ feedback
    async def _step_thread(self, step_id: str, thread_hint: str | None) -> str | None:
        # The step decides the thread; a client-sent threadId is never trusted here.
        async def work(conn: AsyncConnection):
            return (await conn.execute(select(steps.c.threadId).where(steps.c.id == step_id))).scalar()

        return await self._run("upsert_feedback", work, for_id=step_id)

    async def _set_feedback(self, thread_id: str, feedback: Feedback) -> str:
        async def work(conn: AsyncConnection):
            feedback_id = feedback.id
            if feedback_id is None:  # one rating per message: reuse the existing row
                feedback_id = (await conn.execute(
                    select(feedbacks.c.id).where(feedbacks.c.forId == feedback.forId))).scalar()
            values = {"forId": feedback.forId, "threadId": thread_id, "value": int(feedback.value),
                      "comment": feedback.comment}
            if feedback_id is not None:
                result = await conn.execute(
                    update(feedbacks).where(feedbacks.c.id == feedback_id, feedbacks.c.forId == feedback.forId)
                    .values(**values))
                if result.rowcount:
                    return feedback_id
                if feedback.id is not None:
                    # An id that exists for another message is not the caller's to move.
                    taken = (await conn.execute(select(feedbacks.c.id).where(feedbacks.c.id == feedback_id))).first()
                    if taken is not None:  # another message's rating: not this one's to move
                        raise NotFound("rating not found")
            feedback_id = feedback_id or str(uuid.uuid4())
            await conn.execute(feedbacks.insert().values(id=feedback_id, **values))
            return feedback_id

        return await self._run("upsert_feedback", work, for_id=feedback.forId)

    async def _feedback_thread(self, feedback_id: str) -> str | None:
        async def work(conn: AsyncConnection):
            return (await conn.execute(select(feedbacks.c.threadId).where(feedbacks.c.id == feedback_id))).scalar()

        return await self._run("delete_feedback", work, feedback_id=feedback_id)

    async def _remove_feedback(self, thread_id: str, feedback_id: str) -> bool:
        async def work(conn: AsyncConnection):
            result = await conn.execute(delete(feedbacks).where(feedbacks.c.id == feedback_id))
            return bool(result.rowcount)

        return await self._run("delete_feedback", work, feedback_id=feedback_id)

