"""`SQLAlchemyDataLayer`: Chainlit's data-layer contract on SQLite, PostgreSQL and MySQL/MariaDB,
one code path for all three (SQLAlchemy Core, async drivers).

Design rules (each one fixes a failure of Chainlit's own SQLAlchemy layer, design.md §3):

* every logical operation is one transaction; errors are raised with context, never
  logged-and-swallowed;
* bound parameters only (SQLAlchemy Core expressions everywhere);
* step/element writes are idempotent upserts keyed by id that tolerate Chainlit's
  fire-and-forget ordering: `create_step` only fills what is still empty, `update_step`
  overwrites what it provides, and nothing a call omits is erased;
* `list_threads` filters, orders and pages in the database (keyset on updatedAt, id) and
  never touches steps except in an indexed EXISTS probe for search/feedback;
* `get_thread` costs four queries whatever the thread size;
* blobs are written before their element row, deleted after their rows are gone, and read
  URLs are signed on every read.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from chainlit.data.base import BaseDataLayer
from chainlit.data.utils import queue_until_user_message
from chainlit.types import Feedback, PageInfo, PaginatedResponse, Pagination, ThreadDict, ThreadFilter
from chainlit.user import PersistedUser, User
from sqlalchemy import and_, case, delete, event, exists, func, insert, or_, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import migrations
from .shared import (
    MESSAGE_TYPES,
    STEP_FIELDS_NOT_STORED,
    STEP_TIMESTAMPS,
    DataLayerError,
    CursorCodec,
    check_feedback_owner,
    child_logger,
    current_user_identifier,
    fill_missing,
    is_empty,
    merge_changes,
    normalize_timestamp,
    page_size,
    sign_element_urls,
    upload_element,
    utc_now,
    with_step_defaults,
)
from .sql_schema import elements, feedbacks, steps, threads, users

if TYPE_CHECKING:
    from chainlit.element import Element, ElementDict
    from chainlit.step import StepDict

    from storage.base import BlobStorage

logger = child_logger("SQLAlchemy")

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
           "mysql": "mysql+aiomysql", "mariadb": "mariadb+aiomysql"}
STEP_JSON_MERGED = ("metadata",)
ELEMENT_COLUMNS = frozenset(c.name for c in elements.columns) - {"extra"}
STEP_COLUMNS = frozenset(c.name for c in steps.columns) - {"extra"}
# MySQL/MariaDB deadlock and lock-wait codes: the transaction is safe to run again.
MYSQL_RETRYABLE = {1213, 1205}


def normalize_database_url(url: str) -> str:
    """Accept plain scheme names (`postgresql://`, `sqlite:///`) and add the async driver."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if parsed.drivername == backend and backend in DRIVERS:
        parsed = parsed.set(drivername=DRIVERS[backend])
    if parsed.drivername == "postgres+asyncpg":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})  # emoji and every script
    return parsed.render_as_string(hide_password=False)


def _unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def _like_pattern(term: str) -> str:
    escaped = term.lower().replace("!", "!!").replace("%", "!%").replace("_", "!_")
    return f"%{escaped}%"


def _show_input_to_db(value: Any) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _show_input_from_db(value: Optional[str]) -> Any:
    return {"true": True, "false": False}.get(value, value) if value is not None else None


# The thread's author: the identifier stored on the thread, else its user's (older rows).
AUTHOR = func.coalesce(threads.c.userIdentifier, users.c.identifier)
THREAD_WITH_USER = threads.outerjoin(users, users.c.id == threads.c.userId)


class SQLAlchemyDataLayer(BaseDataLayer):
    """Chainlit data layer on SQLAlchemy. Public constructor: pass a URL, or use `from_url`."""

    def __init__(
        self,
        url: str,
        *,
        storage: Optional["BlobStorage"] = None,
        auto_migrate: bool = True,
        cursor_secret: Optional[bytes] = None,
        engine_options: Optional[Dict[str, Any]] = None,
    ):
        self.url = normalize_database_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        # hide_parameters: statement parameters carry message text and must not reach
        # logs or exception messages (errors still name the operation and ids).
        options = {"pool_pre_ping": True, "hide_parameters": True, **(engine_options or {})}
        self.engine: AsyncEngine = create_async_engine(self.url, **options)
        if self.dialect == "sqlite":
            self._configure_sqlite(self.engine)
        self.storage = storage
        secret = cursor_secret or (os.environ.get("CHAINLIT_AUTH_SECRET") or "").encode() or secrets.token_bytes(32)
        self.cursors = CursorCodec(secret)
        self._migrated = not auto_migrate
        self._migrate_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, *, storage=None, auto_migrate: bool = True, **kwargs) -> "SQLAlchemyDataLayer":
        return cls(url, storage=storage, auto_migrate=auto_migrate, **kwargs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({make_url(self.url).render_as_string(hide_password=True)!r})"

    @staticmethod
    def _configure_sqlite(engine: AsyncEngine) -> None:
        # SQLite: WAL for concurrent readers, a busy timeout instead of instant "locked"
        # errors, foreign keys on (threads.userId cascade), and BEGIN IMMEDIATE so a
        # read-then-write transaction takes the write lock up front instead of failing
        # to upgrade it when another writer got there first.
        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection, _record):
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()
            # SQLite's lower() folds ASCII only; search must be case-insensitive for every
            # script, as it is on PostgreSQL and MySQL.
            dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(connection):
            connection.exec_driver_sql("BEGIN IMMEDIATE")

    # ------------------------------------------------------------------ plumbing
    async def migrate(self) -> None:
        """Create or upgrade the schema (Alembic). Runs once, on first use, when auto_migrate."""
        async with self._migrate_lock:
            if not self._migrated:
                await migrations.upgrade(self.engine)
                self._migrated = True

    @asynccontextmanager
    async def _transaction(self, operation: str, **ids):
        if not self._migrated:
            await self.migrate()
        try:
            async with self.engine.begin() as connection:
                yield connection
        except (SQLAlchemyError, ConnectionError, TimeoutError, socket.gaierror) as exc:  # also: server unreachable
            context = ", ".join(f"{k}={v!r}" for k, v in ids.items())
            logger.error("%s failed (%s): %s", operation, context, type(exc).__name__)
            raise DataLayerError(f"{operation} failed ({context}): {exc}") from exc

    async def _run(self, operation: str, work, **ids):
        """Run `work(connection)` in one transaction, retrying once on an insert race or
        a MySQL deadlock (two first writes of the same id can collide; the retry then
        takes the update path)."""
        for attempt in range(3):
            try:
                async with self._transaction(operation, **ids) as connection:
                    return await work(connection)
            except DataLayerError as exc:
                cause = exc.__cause__
                retryable = isinstance(cause, IntegrityError) or (
                    isinstance(cause, DBAPIError)
                    and getattr(getattr(cause, "orig", None), "args", [None])[0] in MYSQL_RETRYABLE
                )
                if not retryable or attempt == 2:
                    raise
                logger.debug("%s: retrying after %s", operation, type(cause).__name__)

    def _locked(self, query):
        return query.with_for_update() if self.dialect != "sqlite" else query

    async def _delete_blobs(self, keys: List[str], operation: str) -> None:
        if keys and self.storage is not None:
            try:
                await self.storage.delete_files(keys)
            except Exception:
                logger.error("%s: rows deleted but %d blob(s) could not be removed", operation, len(keys))
                raise

    # ------------------------------------------------------------------ users
    @staticmethod
    def _persisted_user(row) -> PersistedUser:
        metadata = row.metadata or {}
        return PersistedUser(
            id=row.id,
            identifier=row.identifier,
            createdAt=row.createdAt,
            metadata=metadata,
            display_name=metadata.get("display_name") if isinstance(metadata, dict) else None,
        )

    async def get_user(self, identifier: str) -> Optional[PersistedUser]:
        async def work(conn: AsyncConnection):
            row = (await conn.execute(select(users).where(users.c.identifier == identifier))).first()
            return self._persisted_user(row) if row else None

        return await self._run("get_user", work, identifier=identifier)

    async def create_user(self, user: User) -> Optional[PersistedUser]:
        metadata = dict(user.metadata or {})
        if user.display_name and "display_name" not in metadata:
            metadata["display_name"] = user.display_name

        async def work(conn: AsyncConnection):
            query = self._locked(select(users).where(users.c.identifier == user.identifier))
            row = (await conn.execute(query)).first()
            if row is None:
                await conn.execute(
                    insert(users).values(id=str(uuid.uuid4()), identifier=user.identifier,
                                         metadata=metadata, createdAt=utc_now())
                )
            else:  # every login comes through here: refresh metadata, keep id and createdAt
                await conn.execute(update(users).where(users.c.id == row.id).values(metadata=metadata))
            row = (await conn.execute(select(users).where(users.c.identifier == user.identifier))).first()
            return self._persisted_user(row)

        return await self._run("create_user", work, identifier=user.identifier)

    # ------------------------------------------------------------------ threads
    async def get_thread_author(self, thread_id: str) -> str:
        async def work(conn: AsyncConnection):
            return await self._author(conn, thread_id) or ""

        return await self._run("get_thread_author", work, thread_id=thread_id)

    async def update_thread(
        self,
        thread_id: str,
        name: Optional[str] = None,
        user_id: Optional[str] = None,
        metadata: Optional[Dict] = None,
        tags: Optional[List[str]] = None,
    ):
        async def work(conn: AsyncConnection):
            values: Dict[str, Any] = {}
            if name is not None:
                values["name"] = name
            if tags is not None:
                values["tags"] = list(tags)
            if user_id is not None:
                identifier = (await conn.execute(select(users.c.identifier).where(users.c.id == user_id))).scalar()
                if identifier is None:
                    raise ValueError(f"update_thread: unknown user id {user_id!r}")
                values.update(userId=user_id, userIdentifier=identifier)
            row = (await conn.execute(self._locked(select(threads.c.metadata).where(threads.c.id == thread_id)))).first()
            if row is None:
                now = utc_now()
                await conn.execute(
                    insert(threads).values(id=thread_id, createdAt=now, updatedAt=now,
                                           metadata=merge_changes({}, metadata), **values)
                )
                return
            if metadata is not None:
                values["metadata"] = merge_changes(row.metadata, metadata)
            if values:
                await conn.execute(update(threads).where(threads.c.id == thread_id).values(**values))

        await self._run("update_thread", work, thread_id=thread_id)

    async def _ensure_thread(self, conn: AsyncConnection, thread_id: str, bump: bool) -> None:
        """Make sure the step's thread exists (steps may arrive before update_thread) and,
        when a step is new, mark the thread as active now."""
        now = utc_now()
        if bump:
            result = await conn.execute(update(threads).where(threads.c.id == thread_id).values(updatedAt=now))
            if result.rowcount:
                return
        elif (await conn.execute(select(threads.c.id).where(threads.c.id == thread_id))).first():
            return
        await conn.execute(insert(threads).values(id=thread_id, createdAt=now, updatedAt=now, metadata={}))

    async def _delete_rows_and_blobs(self, operation: str, element_filter, deletes, **ids) -> None:
        """Delete rows in one transaction, then the blobs of the elements they held (after
        the commit: a failed blob delete leaves an orphan blob, never a dangling row)."""

        async def work(conn: AsyncConnection):
            keys = (await conn.execute(
                select(elements.c.objectKey).where(element_filter, elements.c.objectKey.is_not(None))
            )).scalars().all()
            for statement in deletes:
                await conn.execute(statement)
            return list(keys)

        keys = await self._run(operation, work, **ids)
        await self._delete_blobs(keys, operation)

    async def delete_thread(self, thread_id: str):
        await self._delete_rows_and_blobs(
            "delete_thread",
            elements.c.threadId == thread_id,
            [delete(feedbacks).where(feedbacks.c.threadId == thread_id),
             delete(elements).where(elements.c.threadId == thread_id),
             delete(steps).where(steps.c.threadId == thread_id),
             delete(threads).where(threads.c.id == thread_id)],
            thread_id=thread_id,
        )

    async def list_threads(self, pagination: Pagination, filters: ThreadFilter) -> PaginatedResponse[ThreadDict]:
        first = page_size(pagination.first)
        if not filters.userId:  # Chainlit always sends it; without it we would list everyone's
            raise ValueError("list_threads needs filters.userId")
        owner = filters.userId
        query = select(
            threads.c.id, threads.c.createdAt, threads.c.updatedAt, threads.c.name, threads.c.userId,
            threads.c.userIdentifier, threads.c.tags, threads.c.metadata,
        )
        query = query.where(threads.c.userId == filters.userId)
        if pagination.cursor:
            position = self.cursors.decode(owner, pagination.cursor)
            updated, last_id = position.get("u"), position.get("i")
            if not isinstance(updated, str) or not isinstance(last_id, str):
                raise ValueError("invalid pagination cursor")
            query = query.where(or_(threads.c.updatedAt < updated,
                                    and_(threads.c.updatedAt == updated, threads.c.id < last_id)))
        if filters.search:
            pattern = _like_pattern(filters.search)
            message_match = and_(steps.c.type.in_(MESSAGE_TYPES), func.lower(steps.c.output).like(pattern, escape="!"))
            if self.dialect == "postgresql":
                # Uncorrelated: PostgreSQL answers it once from the trigram index (0003)
                # and hashes the thread ids, instead of probing every thread's messages.
                in_messages = threads.c.id.in_(select(steps.c.threadId).where(message_match))
            else:
                in_messages = exists().where(steps.c.threadId == threads.c.id, message_match)
            query = query.where(or_(func.lower(threads.c.name).like(pattern, escape="!"), in_messages))
        if filters.feedback is not None:
            query = query.where(exists().where(feedbacks.c.threadId == threads.c.id,
                                               feedbacks.c.value == int(filters.feedback)))
        query = query.order_by(threads.c.updatedAt.desc(), threads.c.id.desc()).limit(first + 1)

        async def work(conn: AsyncConnection):
            if filters.search and self.dialect == "postgresql":
                # PostgreSQL's cost model ignores lower() over long texts, so on small and
                # mid-sized tables it picks a sequential scan over the trigram index that is
                # ~10x slower; for this one transaction, make the index the plan.
                await conn.execute(text("SET LOCAL enable_seqscan = off"))
            return (await conn.execute(query)).all()

        rows = await self._run("list_threads", work, user_id=filters.userId)
        has_next = len(rows) > first
        rows = rows[:first]
        data: List[ThreadDict] = [
            ThreadDict(id=r.id, createdAt=r.createdAt, name=r.name, userId=r.userId,
                       userIdentifier=r.userIdentifier, tags=r.tags, metadata=r.metadata or {},
                       steps=[], elements=[])
            for r in rows
        ]
        cursor_of = lambda r: self.cursors.encode(owner, {"u": r.updatedAt, "i": r.id})  # noqa: E731
        page = PageInfo(
            hasNextPage=has_next,
            startCursor=cursor_of(rows[0]) if rows else None,
            endCursor=cursor_of(rows[-1]) if rows else None,
        )
        return PaginatedResponse(pageInfo=page, data=data)

    async def get_thread(self, thread_id: str) -> Optional[ThreadDict]:
        async def work(conn: AsyncConnection):
            thread_query = (
                select(threads, AUTHOR.label("author"))
                .select_from(THREAD_WITH_USER)
                .where(threads.c.id == thread_id)
            )
            thread = (await conn.execute(thread_query)).first()
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
            step = self._step_dict(row)
            if row.id in feedback_by_step:
                step["feedback"] = feedback_by_step[row.id]
            step_dicts.append(step)
        element_dicts = [self._element_dict(row) for row in element_rows]
        await sign_element_urls(self.storage, element_dicts)
        return ThreadDict(
            id=thread.id, createdAt=thread.createdAt, name=thread.name, userId=thread.userId,
            userIdentifier=thread.author, tags=thread.tags, metadata=thread.metadata or {},
            steps=step_dicts, elements=element_dicts,
        )

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _step_values(step_dict: "StepDict") -> tuple[Dict[str, Any], Dict[str, Any]]:
        """Split a step dict into column values and the `extra` keys this schema lacks.
        `None` means "not provided" and is left out."""
        values: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in step_dict.items():
            if value is None or key in STEP_FIELDS_NOT_STORED:
                continue
            if key not in STEP_COLUMNS:
                extra[key] = value
            elif key in STEP_TIMESTAMPS:
                values[key] = normalize_timestamp(value)
            elif key == "showInput":
                values[key] = _show_input_to_db(value)
            else:
                values[key] = value
        return values, extra

    @staticmethod
    def _step_dict(row) -> "StepDict":
        data = {k: v for k, v in row._mapping.items() if k != "extra" and v is not None}
        data.update({k: v for k, v in (row.extra or {}).items() if k not in data})
        if "showInput" in data:
            data["showInput"] = _show_input_from_db(data["showInput"])
        return with_step_defaults(data)  # type: ignore[return-value]

    async def _upsert_step(self, step_dict: "StepDict", overwrite: bool) -> None:
        step_id, thread_id = step_dict.get("id"), step_dict.get("threadId")
        if not step_id or not thread_id:
            raise ValueError("a step needs an 'id' and a 'threadId'")
        values, extra = self._step_values(step_dict)

        async def work(conn: AsyncConnection):
            row = (await conn.execute(self._locked(select(steps).where(steps.c.id == step_id)))).first()
            if row is None:
                await self._ensure_thread(conn, thread_id, bump=True)
                row_values = {"name": "", "type": "undefined", "streaming": False, "disableFeedback": False,
                              "metadata": {}, **values, "extra": extra or None}
                if "metadata" in values:
                    row_values["metadata"] = merge_changes({}, values["metadata"])
                await conn.execute(insert(steps).values(**row_values))
                return
            changes: Dict[str, Any] = {}
            for key, value in values.items():
                if key in ("id", "threadId"):
                    continue
                current = getattr(row, key)
                if key in STEP_JSON_MERGED:
                    merged = merge_changes(current, value) if overwrite else fill_missing(current, value)
                    if merged != current:
                        changes[key] = merged
                elif overwrite or is_empty(current):
                    if value != current:
                        changes[key] = value
            if extra:
                merged_extra = merge_changes(row.extra, extra) if overwrite else fill_missing(row.extra, extra)
                if merged_extra != row.extra:
                    changes["extra"] = merged_extra
            if changes:
                await conn.execute(update(steps).where(steps.c.id == step_id).values(**changes))

        await self._run("update_step" if overwrite else "create_step", work, step_id=step_id, thread_id=thread_id)

    @queue_until_user_message()
    async def create_step(self, step_dict: "StepDict"):
        # Chainlit may deliver update_step first: only fill what is still empty.
        await self._upsert_step(step_dict, overwrite=False)

    @queue_until_user_message()
    async def update_step(self, step_dict: "StepDict"):
        await self._upsert_step(step_dict, overwrite=True)

    @queue_until_user_message()
    async def delete_step(self, step_id: str):
        await self._delete_rows_and_blobs(
            "delete_step",
            elements.c.forId == step_id,
            [delete(feedbacks).where(feedbacks.c.forId == step_id),
             delete(elements).where(elements.c.forId == step_id),
             delete(steps).where(steps.c.id == step_id)],
            step_id=step_id,
        )

    async def get_favorite_steps(self, user_id: str) -> List["StepDict"]:
        async def work(conn: AsyncConnection):
            query = (
                select(steps)
                .join(threads, threads.c.id == steps.c.threadId)
                .where(threads.c.userId == user_id, steps.c.metadata["favorite"].as_boolean().is_(True))
                .order_by(steps.c.createdAt.desc())
            )
            return (await conn.execute(query)).all()

        return [self._step_dict(row) for row in await self._run("get_favorite_steps", work, user_id=user_id)]

    # ------------------------------------------------------------------ feedback
    @staticmethod
    async def _author(conn: AsyncConnection, thread_id: str) -> Optional[str]:
        query = select(AUTHOR).select_from(THREAD_WITH_USER).where(threads.c.id == thread_id)
        return (await conn.execute(query)).scalar()

    async def upsert_feedback(self, feedback: Feedback) -> str:
        if feedback.value not in (0, 1):
            raise ValueError(f"feedback value must be 0 or 1, got {feedback.value!r}")

        async def work(conn: AsyncConnection):
            # The step decides the thread; a client-sent threadId is never trusted.
            thread_id = (await conn.execute(select(steps.c.threadId).where(steps.c.id == feedback.forId))).scalar()
            if thread_id is None:  # a rating needs its message: no orphan feedback rows
                raise ValueError(f"feedback for unknown step {feedback.forId!r}")
            await check_feedback_owner(thread_id, lambda: self._author(conn, thread_id))
            feedback_id = feedback.id
            if feedback_id is None:  # one rating per message: reuse the existing row
                feedback_id = (await conn.execute(
                    self._locked(select(feedbacks.c.id).where(feedbacks.c.forId == feedback.forId))
                )).scalar()
            values = {"forId": feedback.forId, "threadId": thread_id, "value": int(feedback.value),
                      "comment": feedback.comment}
            if feedback_id is not None:
                result = await conn.execute(update(feedbacks).where(feedbacks.c.id == feedback_id).values(**values))
                if result.rowcount:
                    return feedback_id
            feedback_id = feedback_id or str(uuid.uuid4())
            await conn.execute(insert(feedbacks).values(id=feedback_id, **values))
            return feedback_id

        return await self._run("upsert_feedback", work, for_id=feedback.forId)

    async def delete_feedback(self, feedback_id: str) -> bool:
        async def work(conn: AsyncConnection):
            thread_id = (await conn.execute(select(feedbacks.c.threadId).where(feedbacks.c.id == feedback_id))).scalar()
            if thread_id is None:
                return False
            await check_feedback_owner(thread_id, lambda: self._author(conn, thread_id))
            await conn.execute(delete(feedbacks).where(feedbacks.c.id == feedback_id))
            return True

        return await self._run("delete_feedback", work, feedback_id=feedback_id)

    # ------------------------------------------------------------------ elements
    @staticmethod
    def _element_dict(row) -> "ElementDict":
        data = {k: v for k, v in row._mapping.items() if k != "extra" and v is not None}
        data.update({k: v for k, v in (row.extra or {}).items() if k not in data})
        return data  # type: ignore[return-value]

    async def get_element(self, thread_id: str, element_id: str) -> Optional["ElementDict"]:
        async def work(conn: AsyncConnection):
            query = select(elements).where(elements.c.id == element_id, elements.c.threadId == thread_id)
            return (await conn.execute(query)).first()

        row = await self._run("get_element", work, thread_id=thread_id, element_id=element_id)
        if row is None:
            return None
        element = self._element_dict(row)
        await sign_element_urls(self.storage, [element])
        return element

    @queue_until_user_message()
    async def create_element(self, element: "Element"):
        owner = current_user_identifier() or await self.get_thread_author(element.thread_id) or None
        object_key = await upload_element(self.storage, element, owner)
        element_dict = dict(element.to_dict())
        values: Dict[str, Any] = {}
        extra: Dict[str, Any] = {}
        for key, value in element_dict.items():
            if value is None:
                continue
            (values if key in ELEMENT_COLUMNS else extra)[key] = value
        if object_key is not None:
            values["objectKey"] = object_key
            values.pop("url", None)  # read URLs are signed on every read, never stored
        values.setdefault("name", "")
        values["extra"] = extra or None

        async def work(conn: AsyncConnection):
            previous = (await conn.execute(
                self._locked(select(elements.c.objectKey).where(elements.c.id == element.id))
            )).first()
            if previous is None:
                await conn.execute(insert(elements).values(**values))
                return None
            await conn.execute(update(elements).where(elements.c.id == element.id).values(**values))
            return previous.objectKey if previous.objectKey != object_key else None

        try:
            replaced_key = await self._run("create_element", work, element_id=element.id, thread_id=element.thread_id)
        except Exception:
            if object_key is not None:  # no row points at the new blob: do not leave it behind
                await self._delete_blobs([object_key], "create_element (cleanup)")
            raise
        if replaced_key:
            await self._delete_blobs([replaced_key], "create_element")

    @queue_until_user_message()
    async def delete_element(self, element_id: str, thread_id: Optional[str] = None):
        async def work(conn: AsyncConnection):
            condition = [elements.c.id == element_id]
            if thread_id is not None:
                condition.append(elements.c.threadId == thread_id)
            key = (await conn.execute(select(elements.c.objectKey).where(*condition))).scalar()
            await conn.execute(delete(elements).where(*condition))
            return [key] if key else []

        keys = await self._run("delete_element", work, element_id=element_id)
        await self._delete_blobs(keys, "delete_element")

    # ------------------------------------------------------------------ misc
    async def build_debug_url(self) -> str:
        return ""

    async def close(self) -> None:
        await self.engine.dispose()
        if self.storage is not None:
            await self.storage.close()
