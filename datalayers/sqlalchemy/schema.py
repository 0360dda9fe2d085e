"""The SQL schema, as SQLAlchemy Core tables: one definition for SQLite, PostgreSQL and MySQL.

Table and column names are those of Chainlit's documented schema, so a Chainlit database
is upgraded in place (see migrations/versions/0002). What we add and why:

* ids are VARCHAR, not UUID: Chainlit's ids are strings, and a malformed id sent by a
  client must give "not found", not a database type error (a 500).
* timestamps are fixed-width UTC ISO-8601 strings (`2026-01-02T03:04:05.123456Z`): the same
  text Chainlit's frontend parses, and they sort correctly as text on every dialect.
* `threads.updatedAt` orders the sidebar by activity; `steps.extra` / `elements.extra`
  keep keys that newer Chainlit releases send and this schema has no column for.
* `tags` is JSON rather than PostgreSQL's TEXT[] so every dialect stores it the same way.
* one index per access path (sidebar, thread load, element and feedback lookups).
* `session_revocations`: when each user's login sessions were last ended (revision 0004).
* `api_tokens`: personal API tokens, only their SHA-256 hashes (revision 0005).
* `threads(updatedAt, id)`: the retention job's listing across users (revision 0006).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
)
from sqlalchemy.dialects import mysql, postgresql

# Chainlit's documented PostgreSQL DDL, frozen with the migrations (revision 0001 runs it);
# re-exported for the upgrade test and the benchmarks, which seed "a Chainlit database".
from ..migrations.chainlit_reference import CHAINLIT_POSTGRES_DDL  # noqa: F401
from .nul import NulSafeString, NulSafeText

# Text columns escape NUL on PostgreSQL, whose text type cannot hold it (nul.py).
ID = NulSafeString(255)
TIMESTAMP = String(32)
SHORT = NulSafeString(255)
# MySQL's TEXT holds only 64 KB; a long LLM answer must not fail the insert.
LONG_TEXT = NulSafeText().with_variant(mysql.LONGTEXT(), "mysql")
# JSON documents escape NUL on PostgreSQL in the engine's serializer (url.py).
JSON_DOC = JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = MetaData()


def _table(name: str, *items) -> Table:
    # utf8mb4 on MySQL whatever the server default: emoji and every script must fit.
    return Table(name, metadata, *items, mysql_charset="utf8mb4")

users = _table(
    "users",
    Column("id", ID, primary_key=True),
    Column("identifier", SHORT, nullable=False, unique=True),
    Column("metadata", JSON_DOC, nullable=False),
    Column("createdAt", TIMESTAMP),
)

threads = _table(
    "threads",
    Column("id", ID, primary_key=True),
    Column("createdAt", TIMESTAMP),
    Column("updatedAt", TIMESTAMP),
    Column("name", LONG_TEXT),
    Column("userId", ID, ForeignKey("users.id", ondelete="CASCADE", name="threads_userId_fkey")),
    Column("userIdentifier", SHORT),
    Column("tags", JSON_DOC),
    Column("metadata", JSON_DOC),
    # The sidebar: a user's threads, most recently active first, keyset-paged on (updatedAt, id).
    Index("ix_threads_user_updated", "userId", "updatedAt", "id"),
    # Retention: every user's threads inactive since a cutoff, oldest first (revision 0006).
    Index("ix_threads_updated", "updatedAt", "id"),
)

steps = _table(
    "steps",
    Column("id", ID, primary_key=True),
    Column("name", LONG_TEXT, nullable=False),
    Column("type", SHORT, nullable=False),
    Column("threadId", ID, nullable=False),
    Column("parentId", ID),
    Column("disableFeedback", Boolean, nullable=False, default=False),
    Column("streaming", Boolean, nullable=False),
    Column("waitForAnswer", Boolean),
    Column("isError", Boolean),
    Column("metadata", JSON_DOC),
    Column("tags", JSON_DOC),
    Column("input", LONG_TEXT),
    Column("output", LONG_TEXT),
    Column("createdAt", TIMESTAMP),
    Column("start", TIMESTAMP),
    Column("end", TIMESTAMP),
    Column("generation", JSON_DOC),
    Column("showInput", SHORT),
    Column("language", SHORT),
    Column("indent", Integer),
    Column("command", SHORT),
    Column("modes", JSON_DOC),
    Column("defaultOpen", Boolean),
    Column("autoCollapse", Boolean),
    Column("extra", JSON_DOC),
    # Loading a thread in order, and the search's EXISTS probe per thread.
    Index("ix_steps_thread_created", "threadId", "createdAt"),
)

elements = _table(
    "elements",
    Column("id", ID, primary_key=True),
    Column("threadId", ID),
    Column("type", SHORT),
    Column("url", LONG_TEXT),
    Column("chainlitKey", SHORT),
    Column("name", LONG_TEXT, nullable=False),
    Column("display", SHORT),
    Column("objectKey", LONG_TEXT),
    Column("size", SHORT),
    Column("page", Integer),
    Column("language", SHORT),
    Column("forId", ID),
    Column("mime", SHORT),
    Column("props", JSON_DOC),
    Column("extra", JSON_DOC),
    Index("ix_elements_thread", "threadId"),
    Index("ix_elements_for", "forId"),
)

feedbacks = _table(
    "feedbacks",
    Column("id", ID, primary_key=True),
    Column("forId", ID, nullable=False),
    Column("threadId", ID, nullable=False),
    Column("value", Integer, nullable=False),
    Column("comment", LONG_TEXT),
    Index("ix_feedbacks_for", "forId"),
    # The sidebar's feedback filter probes (threadId, value).
    Index("ix_feedbacks_thread_value", "threadId", "value"),
)

# Login sessions of a user issued before `revokedAt` are refused (logout, password change,
# removal). Keyed by identifier, not users.id: a user removed from the users file, or never
# persisted, can still have live tokens. Its own table: a login rewrites the users row.
session_revocations = _table(
    "session_revocations",
    Column("userIdentifier", SHORT, primary_key=True),
    Column("revokedAt", TIMESTAMP, nullable=False),
    Column("reason", SHORT),
)

# Personal API tokens: the plaintext is shown once and never stored, only its SHA-256 hash.
# Looked up by id on every API request; a user's tokens are listed newest first.
api_tokens = _table(
    "api_tokens",
    Column("id", NulSafeString(64), primary_key=True),
    Column("userIdentifier", SHORT, nullable=False),
    Column("name", NulSafeString(100), nullable=False),
    Column("tokenHash", String(64), nullable=False),
    Column("createdAt", TIMESTAMP, nullable=False),
    Column("expiresAt", TIMESTAMP),
    Column("lastUsedAt", TIMESTAMP),
    Index("ix_api_tokens_user_created", "userIdentifier", "createdAt"),
)

TABLES = (users, threads, steps, elements, feedbacks, session_revocations, api_tokens)


# PostgreSQL-only trigram indexes for case-insensitive substring search (migration 0003).
# Kept out of `metadata` because other dialects cannot build them. (Not partial on message
# types: with bound parameters the planner cannot prove a partial predicate and scans.)
POSTGRES_SEARCH_INDEXES = {
    "ix_steps_output_trgm": (
        'CREATE INDEX IF NOT EXISTS ix_steps_output_trgm ON steps USING gin (lower("output") gin_trgm_ops)'
    ),
    "ix_threads_name_trgm": (
        'CREATE INDEX IF NOT EXISTS ix_threads_name_trgm ON threads USING gin (lower("name") gin_trgm_ops)'
    ),
}

DIALECTS = ("sqlite", "postgresql", "mysql")


def ddl(dialect_name: str) -> str:
    """The CREATE statements of this schema for one dialect (what sql/<dialect>.sql holds)."""
    from importlib import import_module

    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = import_module(f"sqlalchemy.dialects.{dialect_name}").dialect()
    statements = []
    for table in TABLES:
        statements.append(str(CreateTable(table).compile(dialect=dialect)).strip())
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            statements.append(str(CreateIndex(index).compile(dialect=dialect)).strip())
    if dialect_name == "postgresql":
        statements.append("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        statements.extend(POSTGRES_SEARCH_INDEXES.values())
    header = (
        f"-- Schema of chainlit-persist for {dialect_name}, generated from datalayers/sqlalchemy/schema.py\n"
        "-- by `make ddl`. The Alembic migrations produce exactly this (tests/datalayers/test_migrations.py).\n"
        "-- Prefer `python -m datalayers.migrations upgrade`: it also records the revision.\n"
    )
    if dialect_name == "mysql":
        header += ("-- Identifiers must compare exactly: revision 0007 converts every table to a binary,\n"
                   "-- no-pad collation (MariaDB utf8mb4_nopad_bin, MySQL 8 utf8mb4_0900_bin); by hand, run\n"
                   "-- ALTER TABLE <t> CONVERT TO CHARACTER SET utf8mb4 COLLATE <that collation> for each.\n")
    header += "\n"
    return header + ";\n\n".join(statements) + ";\n"

