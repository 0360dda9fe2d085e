"""Database URLs and engines: plain scheme names get their async driver, MySQL gets
utf8mb4, SQLite gets the settings a concurrent app needs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from . import nul

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
           "mysql": "mysql+aiomysql", "mariadb": "mariadb+aiomysql"}


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


def redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _unicode_lower(value):
    return value.lower() if isinstance(value, str) else value


def build_engine(url: str, options: dict[str, Any] | None = None) -> AsyncEngine:
    # hide_parameters: statement parameters carry message text and must not reach logs or
    # exception messages (errors still name the operation and ids). No pre-ping (a round
    # trip before every transaction): a connection the server dropped fails once, is
    # invalidated with the rest of the pool, and the operation is retried.
    defaults: dict[str, Any] = {"hide_parameters": True}
    backend = make_url(url).get_backend_name()
    if backend == "postgresql":
        # jsonb cannot hold NUL either: documents are escaped like text columns.
        defaults.update(json_serializer=nul.dumps, json_deserializer=nul.loads)
    engine = create_async_engine(url, **{**defaults, **(options or {})})
    if backend == "sqlite":
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    # WAL for concurrent readers; a short busy timeout, because a write that finds the
    # database locked is retried from the journal rather than holding its caller; foreign
    # keys on (threads.userId cascade); BEGIN IMMEDIATE so a transaction takes the write
    # lock up front instead of failing to upgrade it when another writer got there first.
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        # SQLite's lower() folds ASCII only; search must be case-insensitive for every
        # script, as it is on PostgreSQL and MySQL.
        dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
