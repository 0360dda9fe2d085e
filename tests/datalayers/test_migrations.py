"""Migrations: a fresh database, an upgrade of Chainlit's documented schema with rows in it,
agreement between the migrations, the SQLAlchemy tables and the DDL in sql/, and revisions
that stay frozen whatever later changes are made to the live tables."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from chainlit.types import Pagination, ThreadFilter
from sqlalchemy import inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

from datalayers import migrations
from datalayers.migrations.chainlit_reference import CHAINLIT_POSTGRES_DDL
from datalayers.sqlalchemy import SQLAlchemyDataLayer

# The live schema: what head must equal.
from datalayers.sqlalchemy.schema import DIALECTS, POSTGRES_SEARCH_INDEXES, ddl, metadata
from storage.memory import MemoryStorage
from tests.conftest import SQL_BACKENDS

ROOT = Path(__file__).resolve().parents[2]
SQL_DIR = ROOT / "sql"
VERSIONS_DIR = Path(migrations.SCRIPT_LOCATION) / "versions"
MIGRATIONS_PACKAGE = "datalayers.migrations"
USER_ID = "11111111-1111-4111-8111-111111111111"
THREAD_ID = "22222222-2222-4222-8222-222222222222"
STEP_ID = "33333333-3333-4333-8333-333333333333"
ELEMENT_ID = "44444444-4444-4444-8444-444444444444"
FEEDBACK_ID = "55555555-5555-4555-8555-555555555555"


def _diffs(connection):
    def include_object(obj, name, type_, reflected, compare_to):
        return not (type_ == "index" and name in POSTGRES_SEARCH_INDEXES)

    context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include_object})
    return compare_metadata(context, metadata)


def _search_index_drift(connection) -> list:
    """PostgreSQL trigram indexes whose migrated definition differs from the live statement.

    Revision 0003 carries its own copy of the statements, and `compare_metadata` cannot see
    expression indexes, so each one is rebuilt from the live statement and its definition
    compared. The caller rolls the rebuild back."""
    query = text("SELECT indexdef FROM pg_indexes WHERE indexname = :name")
    drift = []
    for name, statement in POSTGRES_SEARCH_INDEXES.items():
        migrated = connection.execute(query, {"name": name}).scalar()
        connection.execute(text(f'DROP INDEX IF EXISTS "{name}"'))
        connection.exec_driver_sql(statement)
        live = connection.execute(query, {"name": name}).scalar()
        if migrated != live:
            drift.append((name, migrated, live))
    return drift


@pytest.mark.parametrize("backend", SQL_BACKENDS)
async def test_fresh_database_migrates_to_exactly_the_schema(backend, sql_url_factory):
    engine = create_async_engine(sql_url_factory(backend).replace("postgresql://", "postgresql+asyncpg://"))
    try:
        await migrations.upgrade(engine)
        await migrations.upgrade(engine)  # idempotent: a second run is a no-op
        async with engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
            assert await conn.run_sync(migrations.current_revision_sync) == "0007"
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            if backend == "postgresql":
                indexes = {i["name"] for t in ("steps", "threads") for i in await conn.run_sync(
                    lambda c, t=t: inspect(c).get_indexes(t))}
                assert set(POSTGRES_SEARCH_INDEXES) <= indexes
        if backend == "postgresql":
            async with engine.connect() as conn:
                assert await conn.run_sync(_search_index_drift) == []
                await conn.rollback()
        assert {"users", "threads", "steps", "elements", "feedbacks", "session_revocations", "api_tokens"} <= names
    finally:
        await engine.dispose()


def _imported_names(tree: ast.AST):
    """(line, dotted name) of everything a module imports, at any depth (function bodies
    too), including `importlib.import_module("...")` / `__import__("...")` with a literal."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Alembic loads revisions by path, not as package members.
                yield node.lineno, "." * node.level + (node.module or "")
                continue
            # `module.name` covers both a submodule (`from datalayers import sql_schema`)
            # and an attribute (`from datalayers.sql_schema import TABLES`).
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.lineno, node.args[0].value


def _is_live(name: str) -> bool:
    """Anything of this project's data layers outside the frozen migrations package."""
    if name.startswith("."):
        return True
    if name != "datalayers" and not name.startswith("datalayers."):
        return False
    return not (name == MIGRATIONS_PACKAGE or name.startswith(MIGRATIONS_PACKAGE + "."))


def _module_file(name: str) -> Path | None:
    """The source file of `name`, or of its module when `name` ends in an attribute."""
    parts = name.split(".")
    while parts:
        base = ROOT.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
        parts.pop()
    return None


def test_no_revision_imports_the_live_schema():
    """A revision must do the same thing forever, so it may use only its own definitions
    and frozen modules of `datalayers.migrations` (which must be frozen in turn)."""
    revisions = sorted(VERSIONS_DIR.glob("*.py"))
    assert revisions, f"no revision found in {VERSIONS_DIR}"
    offences, seen = [], set()
    pending = list(revisions)
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        for line, name in _imported_names(ast.parse(path.read_text(), filename=str(path))):
            if _is_live(name):
                offences.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            elif name.startswith(MIGRATIONS_PACKAGE + "."):
                module = _module_file(name)
                if module is not None:
                    pending.append(module)
    assert offences == [], "revisions must not use the live schema:\n" + "\n".join(offences)


def test_the_static_check_sees_live_imports():
    """The check above would catch each way of importing the live schema."""
    source = (
        "import datalayers.sql_schema\n"
        "from datalayers.sqlalchemy.schema import TABLES\n"
        "from datalayers import shared\n"
        "from .sibling import x\n"
        "def upgrade():\n"
        "    from datalayers.timestamps import normalize_timestamp\n"
        "    importlib.import_module('datalayers.sqlalchemy')\n"
        "from datalayers.migrations.chainlit_reference import CHAINLIT_POSTGRES_DDL\n"
        "import sqlalchemy as sa\n"
    )
    flagged = {name for _, name in _imported_names(ast.parse(source)) if _is_live(name)}
    assert flagged == {
        "datalayers.sql_schema", "datalayers.sqlalchemy.schema.TABLES", "datalayers.shared", ".sibling",
        "datalayers.timestamps.normalize_timestamp", "datalayers.sqlalchemy",
    }


# Run in a child process: it changes the live tables in place, as a later revision's edit
# of the schema module would, whichever module path a revision might read them through.
FUTURE_REVISION_PROBE = """
import asyncio, json, sys

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy.ext.asyncio import create_async_engine

from datalayers import migrations

from datalayers.sqlalchemy.schema import POSTGRES_SEARCH_INDEXES, TABLES

for table in TABLES:
    table.append_column(sa.Column("futureColumn", sa.String(32)))
steps = next(t for t in TABLES if t.name == "steps")
sa.Index("ix_steps_future", steps.c.futureColumn)
POSTGRES_SEARCH_INDEXES["ix_steps_future_trgm"] = (
    'CREATE INDEX IF NOT EXISTS ix_steps_future_trgm ON steps USING gin (lower("futureColumn") gin_trgm_ops)'
)


def schema_of(connection):
    inspector = sa.inspect(connection)
    return {
        "columns": {t.name: [c["name"] for c in inspector.get_columns(t.name)] for t in TABLES},
        "indexes": sorted(i["name"] for t in TABLES for i in inspector.get_indexes(t.name)),
    }


def apply_future_revision(connection):
    # What the next revision would do; it raises if a column or index already exists.
    ops = Operations(MigrationContext.configure(connection))
    for table in TABLES:
        ops.add_column(table.name, sa.Column("futureColumn", sa.String(32)))
    ops.create_index("ix_steps_future", "steps", ["futureColumn"])


async def main(url):
    engine = create_async_engine(url)
    try:
        await migrations.upgrade(engine)
        async with engine.connect() as connection:
            print(json.dumps(await connection.run_sync(schema_of)), flush=True)
        async with engine.begin() as connection:
            await connection.run_sync(apply_future_revision)
    finally:
        await engine.dispose()


asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize("backend", SQL_BACKENDS)
def test_revisions_ignore_later_changes_to_the_live_schema(backend, sql_url_factory):
    """A column (and indexes) added to the live tables for a future revision must not be
    created by the existing revisions, or that revision's add_column fails on a fresh
    database."""
    url = sql_url_factory(backend)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", FUTURE_REVISION_PROBE, url], cwd=ROOT, env=env, check=False,
                            capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert lines, f"the migrations failed: {result.stderr[-3000:]}"
    found = json.loads(lines[-1])
    assert "ix_steps_thread_created" in found["indexes"]  # the probe did see the migrated schema
    assert {table: "futureColumn" in columns for table, columns in found["columns"].items()} == {
        "users": False, "threads": False, "steps": False, "elements": False, "feedbacks": False,
        "session_revocations": False, "api_tokens": False,
    }
    assert "ix_steps_future" not in found["indexes"]
    assert "ix_steps_future_trgm" not in found["indexes"]
    assert result.returncode == 0, f"the future revision failed: {result.stderr[-3000:]}"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sql_folder_holds_the_generated_ddl(dialect):
    path = SQL_DIR / f"{dialect}.sql"
    assert path.exists(), f"{path} missing: run `make ddl`"
    assert path.read_text() == ddl(dialect), f"{path} is stale: run `make ddl`"


async def test_upgrade_of_a_chainlit_postgres_database_keeps_every_row(postgres_databases):
    url = postgres_databases.create()
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for statement in CHAINLIT_POSTGRES_DDL:
            await conn.execute(text(statement))
        await conn.execute(text('INSERT INTO users VALUES (:id, :identifier, CAST(:metadata AS JSONB), :created)'),
                           {"id": USER_ID, "identifier": "legacy@example.com", "metadata": json.dumps({"role": "admin"}),
                            "created": "2024-03-01T10:00:00.123Z"})
        await conn.execute(text('INSERT INTO threads VALUES (:id, :created, :name, :user, :identifier, :tags, CAST(:metadata AS JSONB))'),
                           {"id": THREAD_ID, "created": "2024-03-01T10:00:01Z", "name": "Legacy thread", "user": USER_ID,
                            "identifier": "legacy@example.com", "tags": ["old", "kept"], "metadata": json.dumps({"k": "v"})})
        await conn.execute(text('INSERT INTO steps ("id","name","type","threadId","streaming","output","createdAt","showInput","tags") '
                                'VALUES (:id, :name, :type, :thread, false, :output, :created, :show, :tags)'),
                           {"id": STEP_ID, "name": "user", "type": "user_message", "thread": THREAD_ID,
                            "output": "an old question about budgets", "created": "2024-03-01T10:00:02.5Z",
                            "show": "json", "tags": ["t"]})
        await conn.execute(text('INSERT INTO elements ("id","threadId","type","name","objectKey","forId","mime") '
                                'VALUES (:id, :thread, :type, :name, :key, :for_id, :mime)'),
                           {"id": ELEMENT_ID, "thread": THREAD_ID, "type": "file", "name": "old.txt",
                            "key": "legacy/old.txt", "for_id": STEP_ID, "mime": "text/plain"})
        await conn.execute(text('INSERT INTO feedbacks VALUES (:id, :for_id, :thread, 1, :comment)'),
                           {"id": FEEDBACK_ID, "for_id": STEP_ID, "thread": THREAD_ID, "comment": "good"})
    await engine.dispose()

    storage = MemoryStorage()
    await storage.upload_file("legacy/old.txt", b"old bytes")
    layer = SQLAlchemyDataLayer(url, storage=storage)
    try:
        await layer.migrate()
        async with layer.engine.connect() as conn:
            assert await conn.run_sync(_diffs) == []
        thread = await layer.get_thread(THREAD_ID)
        assert thread["name"] == "Legacy thread"
        assert thread["userIdentifier"] == "legacy@example.com"
        assert thread["tags"] == ["old", "kept"]
        assert thread["metadata"] == {"k": "v"}
        assert thread["createdAt"] == "2024-03-01T10:00:01.000000Z"
        [legacy_step] = thread["steps"]
        assert legacy_step["output"] == "an old question about budgets"
        assert legacy_step["createdAt"] == "2024-03-01T10:00:02.500000Z"
        assert legacy_step["tags"] == ["t"]
        assert legacy_step["feedback"]["value"] == 1 and legacy_step["feedback"]["comment"] == "good"
        [element] = thread["elements"]
        assert element["url"] == await storage.get_read_url("legacy/old.txt")
        user = await layer.get_user("legacy@example.com")
        assert user.id == USER_ID and user.metadata == {"role": "admin"}
        page = await layer.list_threads(Pagination(first=10), ThreadFilter(userId=USER_ID, search="BUDGET", feedback=1))
        assert [t["id"] for t in page.data] == [THREAD_ID]
        # New writes with keys the old DDL lacked now work, and a malformed id is "not found".
        await layer.create_step({"id": "new-step", "threadId": THREAD_ID, "name": "a", "type": "assistant_message",
                                 "output": "new", "autoCollapse": True, "createdAt": "2024-03-02T00:00:00Z"})
        assert (await layer.get_thread(THREAD_ID))["steps"][-1]["autoCollapse"] is True
        assert await layer.get_thread("not-a-uuid") is None
    finally:
        await layer.close()


async def test_mariadb_tables_become_exact_and_keep_their_rows_and_keys(sql_url_factory):
    """Revision 0007 on a MariaDB database at 0006 with rows: every table compares exactly
    (binary, no pad), the rows and the threads → users key (ON DELETE CASCADE) are kept."""
    url = sql_url_factory("mariadb")
    engine = create_async_engine(url)
    try:
        await migrations.upgrade(engine, "0006")
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO users (id, identifier, metadata, createdAt) "
                                    "VALUES (:id, 'alice', '{}', '2026-01-01T00:00:00.000000Z')"), {"id": USER_ID})
            await conn.execute(text("INSERT INTO threads (id, name, userId, userIdentifier) "
                                    "VALUES (:id, 'kept', :user, 'alice')"), {"id": THREAD_ID, "user": USER_ID})
            assert (await conn.execute(text("SELECT count(*) FROM users WHERE identifier = 'ALICE '"))).scalar() == 1
        await migrations.upgrade(engine)
        async with engine.begin() as conn:
            assert await conn.run_sync(migrations.current_revision_sync) == "0007"
            collations = dict((await conn.execute(text(
                "SELECT table_name, table_collation FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name <> 'alembic_version'"))).all())
            assert len(collations) == 7 and set(collations.values()) == {"utf8mb4_nopad_bin"}, collations
            assert await conn.run_sync(_diffs) == []
            assert (await conn.execute(text("SELECT count(*) FROM users WHERE identifier = 'ALICE '"))).scalar() == 0
            assert (await conn.execute(text("SELECT name FROM threads WHERE userId = :u"), {"u": USER_ID})).scalar() == "kept"
            keys = (await conn.execute(text(
                "SELECT constraint_name, delete_rule FROM information_schema.referential_constraints "
                "WHERE constraint_schema = DATABASE()"))).all()
            assert [tuple(k) for k in keys] == [("threads_userId_fkey", "CASCADE")]
            await conn.execute(text("DELETE FROM users WHERE id = :u"), {"u": USER_ID})
            assert (await conn.execute(text("SELECT count(*) FROM threads"))).scalar() == 0
    finally:
        await engine.dispose()
